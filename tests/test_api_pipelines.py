"""``POST /pipelines`` and ``GET /pipelines/{id}`` against a real uvicorn server, real PostGIS
and real noop workers. Oracles: the job and pipeline rows in PostGIS (submitter, dependencies,
counts), and the workers' own completion of the steps in dependency order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api_support import ApiServer, api_server
from tests.support import wait_for

pytestmark = pytest.mark.db


@pytest.fixture(scope="module")
def api(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from api_server(template_db, tmp_path_factory.mktemp("api_pipelines"),
                          users={"alice": False, "bob": False, "ops": True},
                          workers=("noop", "dissolve", "create_view"))


def two_steps(name: str = "two") -> dict[str, Any]:
    return {"name": name, "steps": [
        {"name": "first", "job_type": "noop", "params": {"sleep_seconds": 0.2}},
        {"name": "second", "job_type": "noop", "params": {}, "after": ["first"]}]}


def counts(api: ApiServer) -> tuple[int, int, int]:
    with api.connect() as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM background_jobs),"
                           " (SELECT count(*) FROM pipelines),"
                           " (SELECT count(*) FROM pipeline_steps)").fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_two_step_pipeline_completes_as_the_api_user(api: ApiServer) -> None:
    with api.client("alice") as client:
        response = client.post("/pipelines", json=two_steps())
        assert response.status_code == 201, response.text
        doc = response.json()
        pid = doc["jobID"]
        assert response.headers["location"].endswith(f"/pipelines/{pid}")
        assert doc["status"] in {"accepted", "running"}
        assert [s["step"] for s in doc["steps"]] == ["first", "second"]
        step_links = [link for link in doc["links"] if link["rel"] == "item"]
        job_ids = [link["href"].rsplit("/", 1)[1] for link in step_links]
        assert len(job_ids) == 2
        for jid in job_ids:  # each link is a job the user can read
            assert client.get(f"/jobs/{jid}").status_code == 200

        def done() -> dict[str, Any] | None:
            info = client.get(f"/pipelines/{pid}").json()
            return info if info["status"] in {"successful", "failed"} else None
        final = wait_for(done, timeout=60, interval=0.1)
        assert final["status"] == "successful", final
        assert final["progress"] == 100
        assert final["finished"] is not None
    with api.connect() as conn:
        rows = conn.execute(
            "SELECT id, submitted_by, depends_on, started_at, finished_at FROM background_jobs"
            " WHERE id = ANY(%s::bigint[]) ORDER BY id", (job_ids,)).fetchall()
        owner = conn.execute("SELECT submitted_by FROM pipelines WHERE id = %s",
                             (int(pid),)).fetchone()
    assert owner == ("alice",)
    assert [r[1] for r in rows] == ["alice", "alice"]
    assert rows[0][2] is None and rows[1][2] == [rows[0][0]]
    assert rows[1][3] >= rows[0][4]  # the second started only after the first finished


def test_after_becomes_depends_on_of_job_ids(api: ApiServer) -> None:
    spec = {"steps": [
        {"name": "a", "job_type": "noop", "params": {}},
        {"name": "b", "job_type": "noop", "params": {}, "after": ["a"]}]}
    with api.client("bob") as client:
        doc = client.post("/pipelines", json=spec).json()
    with api.connect() as conn:
        rows = conn.execute("SELECT s.step, j.depends_on, j.submitted_by FROM pipeline_steps s"
                            " JOIN background_jobs j ON j.id = s.job_id WHERE pipeline_id = %s"
                            " ORDER BY position", (int(doc["jobID"]),)).fetchall()
    assert [(r[0], r[2]) for r in rows] == [("a", "bob"), ("b", "bob")]
    assert rows[1][1] == [int(doc["steps"][0]["jobID"])]


def test_users_see_only_their_own_pipelines(api: ApiServer) -> None:
    with api.client("alice") as alice, api.client("bob") as bob, api.client("ops") as ops:
        pid = alice.post("/pipelines", json=two_steps("mine")).json()["jobID"]
        hidden = bob.get(f"/pipelines/{pid}")
        assert hidden.status_code == 404
        assert hidden.headers["content-type"].startswith("application/problem+json")
        assert "pipelineID" in hidden.json()["detail"]
        assert alice.get(f"/pipelines/{pid}").status_code == 200
        assert ops.get(f"/pipelines/{pid}").status_code == 200  # admins see all
        assert bob.get("/pipelines/999999").status_code == 404
        assert api.client().get(f"/pipelines/{pid}").status_code == 401


def _bob_job(api: ApiServer) -> int:
    with api.client("bob") as bob:
        return int(bob.post("/processes/noop/execution", json={"inputs": {}}).json()["jobID"])


BAD: list[tuple[str, Any, str]] = [
    ("param out of range",
     {"steps": [{"name": "a", "job_type": "noop", "params": {"sleep_seconds": -1}}]},
     "sleep_seconds"),
    ("unknown job type",
     {"steps": [{"name": "a", "job_type": "nosuchtype", "params": {}}]}, "steps[0] (a)"),
    ("step name used twice",
     {"steps": [{"name": "a", "job_type": "noop"}, {"name": "a", "job_type": "noop"}]},
     "steps[1].name"),
    ("output_of an unknown step",
     {"steps": [{"name": "a", "job_type": "noop", "params": {}},
                {"name": "b", "job_type": "create_view",
                 "params": {"input_table": {"output_of": "zz"}, "output_table": "results.v"}}]},
     "steps[1] (b).params"),
    ("cycle", {"steps": [{"name": "a", "job_type": "noop", "after": ["b"]},
                         {"name": "b", "job_type": "noop", "after": ["a"]}]}, "steps"),
    ("too many steps",
     {"steps": [{"name": f"s{i}", "job_type": "noop"} for i in range(1001)]}, "steps"),
    ("no steps", {"name": "empty"}, "steps"),
    ("unknown field of a step",
     {"steps": [{"name": "a", "job_type": "noop", "colour": "red"}]}, "steps.0.colour"),
]


@pytest.mark.parametrize(("case", "spec", "field"), BAD, ids=[c[0] for c in BAD])
def test_bad_spec_is_refused_naming_the_field(api: ApiServer, case: str, spec: Any,
                                              field: str) -> None:
    before = counts(api)
    with api.client("alice") as client:
        response = client.post("/pipelines", json=spec)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert field in problem["detail"], problem
    assert counts(api) == before


def test_output_of_another_users_job_is_refused(api: ApiServer) -> None:
    theirs = _bob_job(api)
    spec = {"steps": [{"name": "v", "job_type": "create_view",
                       "params": {"input_table": {"output_of": theirs},
                                  "output_table": "results.stolen"}}]}
    before = counts(api)
    with api.client("alice") as client:
        response = client.post("/pipelines", json=spec)
    assert response.status_code == 400, response.text
    assert "output_of" in response.json()["detail"]
    assert counts(api) == before


def test_dissolve_then_view_of_its_output(api: ApiServer) -> None:
    spec = {"name": "regions", "steps": [
        {"name": "regions", "job_type": "dissolve",
         "params": {"input_table": "public.us_states", "by": ["sub_region"],
                    "output_table": "results.pipe_regions"}},
        {"name": "view", "job_type": "create_view",
         "params": {"input_table": {"output_of": "regions"},
                    "output_table": "results.pipe_regions_view"}}]}
    with api.client("alice") as client:
        response = client.post("/pipelines", json=spec)
        assert response.status_code == 201, response.text
        pid = response.json()["jobID"]

        def done() -> dict[str, Any] | None:
            info = client.get(f"/pipelines/{pid}").json()
            return info if info["status"] in {"successful", "failed"} else None
        final = wait_for(done, timeout=90, interval=0.2)
    assert final["status"] == "successful", final
    with api.connect() as conn:
        regions = conn.execute("SELECT count(DISTINCT sub_region) FROM public.us_states").fetchone()
        assert conn.execute("SELECT count(*) FROM results.pipe_regions_view").fetchone() == regions
        view_params = conn.execute(
            "SELECT j.params FROM pipeline_steps s JOIN background_jobs j ON j.id = s.job_id"
            " WHERE s.pipeline_id = %s AND s.step = 'view'", (int(pid),)).fetchone()
    assert view_params is not None
    assert view_params[0]["input_table"] == {"output_of": int(final["steps"][0]["jobID"])}


def test_overwrite_of_another_users_table_is_forbidden(api: ApiServer) -> None:
    with api.client("bob") as bob:
        jid = bob.post("/processes/dissolve/execution", json={"inputs": {
            "input_table": "public.us_states", "by": ["sub_region"],
            "output_table": "results.pipe_bobs"}}, headers={"Prefer": "wait=60"}).json()["jobID"]
    spec = {"steps": [{"name": "mine", "job_type": "dissolve",
                       "params": {"input_table": "public.us_states", "by": ["region"],
                                  "output_table": "results.pipe_bobs", "overwrite": True}}]}
    before = counts(api)
    with api.client("alice") as alice:
        assert alice.get(f"/jobs/{jid}").status_code == 404
        response = alice.post("/pipelines", json=spec)
    assert response.status_code == 403, response.text
    assert "steps[0] (mine).params.output_table" in response.json()["detail"]
    assert counts(api) == before


def _post_yaml(client: Any, text: str, content_type: str = "application/yaml") -> Any:
    return client.post("/pipelines", content=text.encode(),
                       headers={"Content-Type": content_type})


def test_yaml_spec_is_the_same_pipeline_as_json(api: ApiServer) -> None:
    """The YAML of a spec (both media types) inserts what its JSON inserts."""
    text = ("name: two\n"
            "steps:\n"
            "  - {name: first, job_type: noop, params: {sleep_seconds: 0.2}}\n"
            "  - name: second\n"
            "    job_type: noop\n"
            "    after: [first]\n")
    with api.client("alice") as client:
        docs = [_post_yaml(client, text, media) for media in ("application/yaml", "text/yaml")]
        docs.append(client.post("/pipelines", json=two_steps()))
    assert [d.status_code for d in docs] == [201, 201, 201], [d.text for d in docs]
    with api.connect() as conn:
        shapes = []
        for doc in docs:
            rows = conn.execute(
                "SELECT s.step, j.job_type, j.params, array_length(j.depends_on, 1)"
                " FROM pipeline_steps s JOIN background_jobs j ON j.id = s.job_id"
                " WHERE s.pipeline_id = %s ORDER BY s.position", (int(doc.json()["jobID"]),)).fetchall()
            spec = conn.execute("SELECT spec FROM pipelines WHERE id = %s",
                                (int(doc.json()["jobID"]),)).fetchone()
            shapes.append((rows, spec))
    assert shapes[0] == shapes[1] == shapes[2]
    assert shapes[0][0] == [("first", "noop", {"sleep_seconds": 0.2}, None),
                            ("second", "noop", {}, 1)]


BAD_YAML: list[tuple[str, str, int, str]] = [
    ("not YAML", "steps: [\n  - name: a\n", 400, "body: not valid YAML"),
    ("a list", "- name: a\n", 400, "body: must be a mapping"),
    ("an alias", "x: &a {job_type: noop}\nsteps:\n  - *a\n", 400, "YAML aliases"),
    ("a date", "name: 2026-12-03\nsteps: [{name: a, job_type: noop}]\n", 400, "body.name"),
    ("a number key", "steps: [{name: a, job_type: noop, params: {1: 2}}]\n", 400,
     "body.steps[0].params"),
    (".nan", "steps: [{name: a, job_type: noop, params: {sleep_seconds: .nan}}]\n", 400,
     "sleep_seconds"),
    ("step name used twice", "steps: [{name: a, job_type: noop}, {name: a, job_type: noop}]\n",
     400, "steps[1].name"),
    ("cycle", "steps: [{name: a, job_type: noop, after: [b]}, {name: b, job_type: noop, "
              "after: [a]}]\n", 400, "steps: cycle"),
]


@pytest.mark.parametrize(("case", "text", "status", "field"), BAD_YAML,
                         ids=[c[0] for c in BAD_YAML])
def test_bad_yaml_is_refused_naming_the_field(api: ApiServer, case: str, text: str, status: int,
                                              field: str) -> None:
    before = counts(api)
    with api.client("alice") as client:
        response = _post_yaml(client, text)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in response.json()["detail"], response.json()
    assert counts(api) == before


def test_other_media_types_are_refused_naming_the_header(api: ApiServer) -> None:
    before = counts(api)
    with api.client("alice") as client:
        response = client.post("/pipelines", content=b"steps: []",
                               headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert "Content-Type" in response.json()["detail"] and "yaml" in response.json()["detail"]
    assert counts(api) == before


@pytest.fixture(scope="module")
def capped(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """No workers, so jobs stay queued or waiting; at most 3 per user."""
    yield from api_server(template_db, tmp_path_factory.mktemp("api_capped"),
                          users={"carol": False, "dave": False}, GEOJOBS_API_MAX_QUEUED="3")


def test_max_queued_counts_every_step_of_a_pipeline(capped: ApiServer) -> None:
    """GEOJOBS_API_MAX_QUEUED=3: a 4-step pipeline is refused outright; 2 steps fit, then 2 more
    do not (2 queued or waiting + 2 > 3): 429 with Retry-After, nothing inserted; another user
    is not affected."""
    four = {"steps": [{"name": f"s{i}", "job_type": "noop"} for i in range(4)]}
    with capped.client("carol") as carol:
        refused = carol.post("/pipelines", json=four)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert "GEOJOBS_API_MAX_QUEUED" in refused.json()["detail"]
        assert counts(capped) == (0, 0, 0)
        assert carol.post("/pipelines", json=two_steps()).status_code == 201
        before = counts(capped)
        again = _post_yaml(carol, "steps: [{name: a, job_type: noop}, "
                                  "{name: b, job_type: noop, after: [a]}]\n")
        assert again.status_code == 429 and "retry-after" in again.headers
        assert counts(capped) == before
    with capped.client("dave") as dave:
        assert dave.post("/pipelines", json=two_steps()).status_code == 201

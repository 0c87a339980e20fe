"""The HTTP API against a real uvicorn server, real PostGIS and real workers.

One server per module (fixture ``api``): users alice and bob, admin root; workers for noop and
dissolve. Oracles: PostGIS itself (row counts, catalog), owslib as an independent OGC client,
openapi-spec-validator for the OpenAPI document.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from geojobs import registry
from tests.api_support import ApiServer, api_server
from tests.support import wait_for

pytestmark = pytest.mark.db

CONFORMANCE = {
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/" + name
    for name in ("core", "ogc-process-description", "json", "oas30", "job-list", "dismiss",
                 "callback")
}


@pytest.fixture(scope="module")
def api(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from api_server(template_db, tmp_path_factory.mktemp("api"),
                          users={"alice": False, "bob": False, "ops": True},
                          workers=("noop", "dissolve"), GEOJOBS_CORS_ORIGINS="http://maps.example",
                          GEOJOBS_API_CALLBACK_BACKOFF="0.3")


def submit(client: httpx.Client, process: str, inputs: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post(f"/processes/{process}/execution", json={"inputs": inputs}, headers=headers)


def wait_status(client: httpx.Client, job_id: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        info = client.get(f"/jobs/{job_id}").json()
        return info if info["status"] in statuses else None
    return wait_for(check, timeout=timeout, interval=0.1)  # type: ignore[no-any-return]


def test_landing_conformance_and_openapi(api: ApiServer) -> None:
    with api.client() as http:
        landing = http.get("/").json()
        rels = {link["rel"]: link for link in landing["links"]}
        assert {"self", "service-desc", "conformance", "http://www.opengis.net/def/rel/ogc/1.0/processes",
                "http://www.opengis.net/def/rel/ogc/1.0/job-list"} <= set(rels)
        assert rels["service-desc"]["type"] == "application/vnd.oai.openapi+json;version=3.0"
        conforms = set(http.get("/conformance").json()["conformsTo"])
        assert {c for c in conforms if "ogcapi-processes" in c} == CONFORMANCE
        # the result layers (tipg) beside them: Features, Tiles, and no HTML class
        assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in conforms
        assert "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt" in conforms
        assert not [c for c in conforms if c.endswith("/conf/html")]
        assert rels["data"]["href"].endswith("/collections")
        response = http.get("/api")
        assert response.headers["content-type"].startswith("application/vnd.oai.openapi+json")
        document = response.json()
        assert document["openapi"].startswith("3.0")
        validate(document)  # raises if the document is not valid OpenAPI 3.0
        assert "/processes/{processID}/execution" in document["paths"]


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def test_processes_are_generated_from_params_schemas(api: ApiServer) -> None:
    with api.client() as http:
        listed = http.get("/processes").json()["processes"]
        assert [p["id"] for p in listed] == registry.names()
        for name in registry.names():
            description = http.get(f"/processes/{name}").json()
            assert description["jobControlOptions"] == ["async-execute", "dismiss"]
            params = registry.load(name).Params.model_json_schema()
            assert set(description["inputs"]) == set(params["properties"])
            for key, item in description["inputs"].items():
                assert item["minOccurs"] == (1 if key in params.get("required", []) else 0)
            keys = {k for k, _ in _walk(description["inputs"])}
            assert not keys & {"$ref", "$defs", "const", "examples", "prefixItems"}, name
            assert not any(k == "type" and isinstance(v, list) for k, v in _walk(description["inputs"]))
            assert description["example"]["inputs"] == registry.load(name).EXAMPLE
        dissolve = http.get("/processes/dissolve").json()["inputs"]
        assert dissolve["output_table"]["schema"]["nullable"] is True
        assert dissolve["output_table"]["schema"]["type"] == "string"
        assert dissolve["by"]["schema"]["type"] == "array"


def test_owslib_drives_the_api(api: ApiServer) -> None:
    """owslib's OGC API - Processes client (not our code) lists, describes and executes."""
    from owslib.ogcapi.processes import Processes
    from owslib.util import Authentication

    client = Processes(api.url, auth=Authentication("alice", api.keys["alice"]))
    assert "noop" in [p["id"] for p in client.processes()]
    assert "sleep_seconds" in client.process("noop")["inputs"]
    info = client.execute("noop", {"sleep_seconds": 0.1}, async_=True)
    assert info["processID"] == "noop" and info["status"] in ("accepted", "running", "successful")
    job = client._request(path=f"jobs/{info['jobID']}")
    assert job["jobID"] == info["jobID"]
    with api.client("alice") as http:
        assert wait_status(http, info["jobID"], "successful")["progress"] == 100


def test_dissolve_life_results_and_dismiss(api: ApiServer) -> None:
    with api.client("alice") as http, api.connect() as conn:
        started = time.monotonic()
        response = submit(http, "dissolve", {"input_table": "public.us_states", "by": ["sub_region"],
                                             "output_table": "results.api_regions"},
                          Prefer="wait=30")
        assert response.status_code == 201
        assert response.headers["Preference-Applied"] == "wait=30"
        assert response.headers["Cache-Control"] == "no-store"
        info = response.json()
        assert response.headers["Location"].endswith(f"/jobs/{info['jobID']}")
        assert info["status"] == "successful" and info["progress"] == 100
        assert time.monotonic() - started < 30
        row = conn.execute("SELECT submitted_by, status FROM background_jobs WHERE id = %s",
                           (int(info["jobID"]),)).fetchone()
        assert row == ("alice", "completed")
        results = http.get(f"/jobs/{info['jobID']}/results").json()
        regions = conn.execute("SELECT count(DISTINCT sub_region) FROM public.us_states").fetchone()
        assert results["result"]["rows"] == regions[0]  # type: ignore[index]
        assert conn.execute("SELECT count(*) FROM results.api_regions").fetchone() == regions
        assert results["result"]["timings"]["run_seconds"] > 0
        assert results["layer"]["href"].endswith("/collections/results.api_regions")
        dismissed = http.delete(f"/jobs/{info['jobID']}")
        assert dismissed.status_code == 200 and dismissed.json()["status"] == "dismissed"
        assert conn.execute("SELECT to_regclass('results.api_regions')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM background_jobs WHERE id = %s",
                            (int(info["jobID"]),)).fetchone() == (0,)
        assert http.get(f"/jobs/{info['jobID']}").status_code == 404


def test_status_mapping_through_a_job_life(api: ApiServer) -> None:
    with api.client("alice") as http, api.connect() as conn:
        # Held back by available_at: accepted, and its results are not ready.
        conn.execute("SELECT 1")
        info = submit(http, "noop", {"sleep_seconds": 3, "steps": 30}).json()
        running = wait_status(http, info["jobID"], "running")
        assert 0 <= running["progress"] < 100 and running["started"]
        not_ready = http.get(f"/jobs/{info['jobID']}/results")
        assert not_ready.status_code == 404
        assert not_ready.json()["type"].endswith("/result-not-ready")
        later = wait_status(http, info["jobID"], "successful")
        assert later["finished"] and later["progress"] == 100
        failing = submit(http, "noop", {"raise_error": "boom on purpose"}).json()
        failed = wait_status(http, failing["jobID"], "failed")
        assert "boom on purpose" in failed["message"]
        problem = http.get(f"/jobs/{failing['jobID']}/results")
        assert problem.headers["content-type"] == "application/problem+json"
        assert "boom on purpose" in problem.json()["detail"]
        cancel = submit(http, "noop", {"sleep_seconds": 20, "steps": 200}).json()
        wait_status(http, cancel["jobID"], "running")
        answer = http.delete(f"/jobs/{cancel['jobID']}")
        assert answer.json()["status"] == "dismissed"
        assert conn.execute("SELECT status FROM background_jobs WHERE id = %s",
                            (int(cancel["jobID"]),)).fetchone() == ("cancelled",)
        assert http.get(f"/jobs/{cancel['jobID']}").json()["status"] == "dismissed"


def test_users_see_only_their_own_jobs(api: ApiServer) -> None:
    with api.client("alice") as alice, api.client("bob") as bob, api.client("ops") as root:
        mine = submit(alice, "noop", {}).json()["jobID"]
        theirs = submit(bob, "noop", {}).json()["jobID"]
        missing = bob.get("/jobs/999999999")
        for path in (f"/jobs/{mine}", f"/jobs/{mine}/results", f"/jobs/{mine}/events"):
            hidden = bob.get(path)
            assert hidden.status_code == 404 == missing.status_code
            assert hidden.json()["type"] == missing.json()["type"]
        assert bob.delete(f"/jobs/{mine}").status_code == 404
        assert mine not in {j["jobID"] for j in bob.get("/jobs?limit=1000").json()["jobs"]}
        assert theirs not in {j["jobID"] for j in alice.get("/jobs?limit=1000").json()["jobs"]}
        everyone = {j["jobID"] for j in root.get("/jobs?limit=1000").json()["jobs"]}
        assert {mine, theirs} <= everyone
        assert root.get(f"/jobs/{mine}").status_code == 200


def test_overwrite_of_another_users_table_is_forbidden(api: ApiServer) -> None:
    with api.client("alice") as alice, api.client("bob") as bob, api.connect() as conn:
        first = submit(alice, "dissolve", {"input_table": "public.us_states",
                                           "output_table": "results.alices"}, Prefer="wait=30")
        assert first.json()["status"] == "successful"
        before = conn.execute("SELECT count(*) FROM background_jobs").fetchone()
        refused = submit(bob, "dissolve", {"input_table": "public.us_states", "overwrite": True,
                                           "output_table": "results.alices"})
        assert refused.status_code == 403
        assert "output_table" in refused.json()["detail"]
        assert conn.execute("SELECT count(*) FROM background_jobs").fetchone() == before
        again = submit(alice, "dissolve", {"input_table": "public.us_states", "overwrite": True,
                                           "output_table": "results.alices"}, Prefer="wait=30")
        assert again.status_code == 201 and again.json()["status"] == "successful"


def test_idempotency_key(api: ApiServer) -> None:
    with api.client("alice") as alice, api.client("bob") as bob, api.connect() as conn:
        first = submit(alice, "noop", {}, **{"Idempotency-Key": "order-42"})
        second = submit(alice, "noop", {}, **{"Idempotency-Key": "order-42"})
        other_user = submit(bob, "noop", {}, **{"Idempotency-Key": "order-42"})
        assert (first.status_code, second.status_code, other_user.status_code) == (201, 200, 201)
        assert first.json()["jobID"] == second.json()["jobID"] != other_user.json()["jobID"]
        assert conn.execute("SELECT count(*) FROM background_jobs WHERE idempotency_key = 'order-42'"
                            ).fetchone() == (2,)


def test_paging_is_keyset_and_survives_inserts(api: ApiServer) -> None:
    with api.client("bob") as bob, api.connect() as conn:
        for _ in range(5):
            submit(bob, "noop", {})
        expected = [str(r[0]) for r in conn.execute(
            "SELECT id FROM background_jobs WHERE submitted_by = 'bob' ORDER BY id DESC")]
        seen: list[str] = []
        page = bob.get("/jobs", params={"limit": 2}).json()
        while True:
            seen += [j["jobID"] for j in page["jobs"]]
            submit(bob, "noop", {})  # new jobs arrive while paging: they are newer, not in later pages
            nxt = [link["href"] for link in page["links"] if link["rel"] == "next"]
            if not nxt:
                break
            page = bob.get(nxt[0]).json()
        assert seen == expected
        assert bob.get("/jobs", params={"limit": 1000}).json()["jobs"][0]["jobID"] not in expected


def test_job_list_filters(api: ApiServer) -> None:
    with api.client("alice") as http, api.connect() as conn:
        failing = submit(http, "noop", {"raise_error": "for the filter"}).json()["jobID"]
        wait_status(http, failing, "failed")
        failed = http.get("/jobs", params={"status": "failed", "limit": 1000}).json()["jobs"]
        oracle = {str(r[0]) for r in conn.execute(
            "SELECT id FROM background_jobs WHERE submitted_by = 'alice' AND status = 'failed'")}
        assert {j["jobID"] for j in failed} == oracle and failing in oracle
        dissolves = http.get("/jobs", params={"processID": "dissolve", "limit": 1000}).json()["jobs"]
        assert dissolves and {j["processID"] for j in dissolves} == {"dissolve"}
        created = conn.execute("SELECT created_at FROM background_jobs WHERE id = %s",
                               (int(failing),)).fetchone()[0]  # type: ignore[index]
        stamp = created.isoformat()
        around = http.get("/jobs", params={"datetime": f"{stamp}/..", "limit": 1000}).json()["jobs"]
        oracle = {str(r[0]) for r in conn.execute(
            "SELECT id FROM background_jobs WHERE submitted_by = 'alice' AND created_at >= %s",
            (created,))}
        assert {j["jobID"] for j in around} == oracle
        long_ones = http.get("/jobs", params={"minDuration": 2, "limit": 1000}).json()["jobs"]
        oracle = {str(r[0]) for r in conn.execute(
            "SELECT id FROM background_jobs WHERE submitted_by = 'alice' AND "
            "extract(epoch FROM coalesce(finished_at, now()) - started_at) >= 2")}
        assert {j["jobID"] for j in long_ones} == oracle


def test_server_sent_events_in_order_until_final(api: ApiServer) -> None:
    with api.client("alice") as http:
        job = submit(http, "noop", {"sleep_seconds": 3, "steps": 10}).json()["jobID"]
        events = []
        with http.stream("GET", f"/jobs/{job}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert events[-1]["status"] == "successful" and events[-1]["progress"] == 100
        assert all(e["status"] in ("accepted", "running") for e in events[:-1])
        progress = [e["progress"] for e in events]
        assert progress == sorted(progress) and len(set(progress)) >= 3


def test_prefer_wait_times_out_with_the_current_status(api: ApiServer) -> None:
    with api.client("alice") as http:
        started = time.monotonic()
        response = submit(http, "noop", {"sleep_seconds": 4, "steps": 4}, Prefer="wait=1")
        assert 1 <= time.monotonic() - started < 3
        assert response.status_code == 201
        assert response.json()["status"] in ("accepted", "running")
        async_ = submit(http, "noop", {}, Prefer="respond-async")
        assert async_.headers["Preference-Applied"] == "respond-async"


def test_keys_cli_basic_auth_and_revocation(api: ApiServer) -> None:
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    env = dict(os.environ, DATABASE_URL=api.db_url, PYTHONPATH=str(ROOT))
    made = subprocess.run([sys.executable, "-m", "geojobs.cli", "keys", "create", "dave"], env=env,
                          capture_output=True, text=True, check=True)
    key = made.stdout.strip()
    with api.connect() as conn:
        stored = conn.execute("SELECT key_hash FROM api_keys WHERE name = 'dave'").fetchone()
        assert stored and key.encode() not in bytes(stored[0])
    listed = subprocess.run([sys.executable, "-m", "geojobs.cli", "keys", "list"], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert "dave" in listed and key not in listed
    with httpx.Client(base_url=api.url, auth=("dave", key), trust_env=False) as basic:
        assert basic.get("/jobs").status_code == 200
    with httpx.Client(base_url=api.url, auth=("dave", key + "x"), trust_env=False) as wrong:
        assert wrong.get("/jobs").status_code == 401
    subprocess.run([sys.executable, "-m", "geojobs.cli", "keys", "revoke", "dave"], env=env,
                   check=True, capture_output=True)
    revoked = httpx.get(f"{api.url}/jobs", headers={"Authorization": f"Bearer {key}"}, trust_env=False)
    assert revoked.status_code == 401 and "WWW-Authenticate" in revoked.headers


def test_cors_preflight(api: ApiServer) -> None:
    response = httpx.options(f"{api.url}/processes/noop/execution", trust_env=False, headers={
        "Origin": "http://maps.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, prefer, idempotency-key"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://maps.example"
    allowed = response.headers["access-control-allow-headers"].lower()
    assert {"authorization", "prefer", "idempotency-key"} <= {h.strip() for h in allowed.split(",")}
    other = httpx.options(f"{api.url}/jobs", trust_env=False, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "DELETE"})
    assert "access-control-allow-origin" not in other.headers


def test_output_dir_untouched_by_vector_jobs(api: ApiServer) -> None:
    assert not any(Path(api.output_dir).iterdir())


class Receiver:
    """An HTTP server on 127.0.0.1 recording the callbacks POSTed to it."""

    def __init__(self, port: int = 0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []  # type: list[tuple[str, dict[str, Any]]]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                length = int(self.headers["Content-Length"])
                received.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _delivered(api: ApiServer, job_id: str) -> list[tuple[Any, ...]]:
    with api.connect() as conn:
        return conn.execute("SELECT state, uri, attempts, delivered_at IS NOT NULL FROM api_deliveries "
                            "WHERE job_id = %s ORDER BY id", (int(job_id),)).fetchall()


def test_callbacks_delivered_once_each(api: ApiServer) -> None:
    receiver = Receiver()
    try:
        with api.client("alice") as http:
            body = {"inputs": {"sleep_seconds": 0.3}, "subscriber": {
                "successUri": f"{receiver.url}/success", "inProgressUri": f"{receiver.url}/progress",
                "failedUri": f"{receiver.url}/failed"}}
            job = http.post("/processes/noop/execution", json=body).json()["jobID"]
            failing = http.post("/processes/noop/execution", json={
                "inputs": {"raise_error": "callback failure"},
                "subscriber": {"failedUri": f"{receiver.url}/failed"}}).json()["jobID"]
            wait_for(lambda: all(row[3] for row in _delivered(api, job)) and len(_delivered(api, job)) == 2)
            wait_for(lambda: any(row[3] for row in _delivered(api, failing)))
            time.sleep(1)  # any duplicate would arrive now
        paths = sorted(path for path, _ in receiver.received)
        # the failing job ran up to 4 attempts: "running" each time, but no inProgressUri was set
        assert paths == ["/failed", "/progress", "/success"]
        by_path = dict(receiver.received)
        assert by_path["/progress"]["status"] == "running" and by_path["/progress"]["jobID"] == job
        assert by_path["/success"]["status"] == "successful"
        assert by_path["/success"]["results"]["result"]["slept"] == 0.3
        assert by_path["/failed"]["status"] == "failed" and by_path["/failed"]["jobID"] == failing
    finally:
        receiver.close()


def test_callbacks_retried_after_the_receiver_was_down(api: ApiServer) -> None:
    from tests.api_support import free_port

    port = free_port()
    with api.client("bob") as http:
        job = http.post("/processes/noop/execution", json={
            "inputs": {}, "subscriber": {"successUri": f"http://127.0.0.1:{port}/done"}}).json()["jobID"]
        wait_for(lambda: any(row[2] >= 2 for row in _delivered(api, job)), timeout=30)
        assert not any(row[3] for row in _delivered(api, job))
        receiver = Receiver(port)
        try:
            wait_for(lambda: all(row[3] for row in _delivered(api, job)), timeout=30)
            time.sleep(1)
            assert [path for path, _ in receiver.received] == ["/done"]
            assert receiver.received[0][1]["jobID"] == job
        finally:
            receiver.close()


def test_revocation_reaches_a_key_verified_a_moment_ago(api: ApiServer) -> None:
    """Verified keys are cached for KEY_CACHE_SECONDS; the revocation's NOTIFY (migration 0012)
    must empty the cache at once, for Bearer and Basic alike."""
    from geojobs.api.keys import create_key, revoke_key
    from geojobs.api.store import KEY_CACHE_SECONDS

    with api.connect() as conn:
        key = create_key(conn, "erin")
    bearer = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api.url, trust_env=False) as http:
        for _ in range(3):  # verified, then served from the cache
            assert http.get("/jobs", headers=bearer).status_code == 200
            assert http.get("/jobs", auth=("erin", key)).status_code == 200
        with api.connect() as conn:
            assert revoke_key(conn, "erin")
        revoked = time.monotonic()
        refused = {}
        while time.monotonic() - revoked < KEY_CACHE_SECONDS and len(refused) < 2:
            if "bearer" not in refused and http.get("/jobs", headers=bearer).status_code == 401:
                refused["bearer"] = time.monotonic() - revoked
            if "basic" not in refused and http.get("/jobs", auth=("erin", key)).status_code == 401:
                refused["basic"] = time.monotonic() - revoked
            time.sleep(0.02)
    assert set(refused) == {"bearer", "basic"}
    assert max(refused.values()) < 1.0, refused  # by NOTIFY, not by the cache expiring


def test_server_sent_events_match_the_job_document(api: ApiServer) -> None:
    """Events after the first are built from the NOTIFY payload, not from the row: the final
    one must equal GET /jobs/{id}, field by field (timestamps included)."""
    with api.client("bob") as http:
        job = submit(http, "noop", {"sleep_seconds": 0.5, "steps": 2}).json()["jobID"]
        events = []
        with http.stream("GET", f"/jobs/{job}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert len(events) >= 2 and events[-1]["status"] == "successful"
        assert events[-1] == http.get(f"/jobs/{job}").json()
        with api.connect() as conn:
            finished = conn.execute("SELECT finished_at FROM background_jobs WHERE id = %s",
                                    (int(job),)).fetchone()[0]  # type: ignore[index]
        assert datetime.fromisoformat(events[-1]["finished"].replace("Z", "+00:00")) == finished


def _same_answer(response: httpx.Response, base: str) -> tuple[Any, ...]:
    """A response with what differs between two servers on one database taken out: the base
    URL, the job id, timestamps, and the headers every response carries."""
    text = response.text.replace(base, "BASE")
    body = json.loads(text) if text else None
    if isinstance(body, dict) and "jobID" in body:
        text = text.replace(f"/jobs/{body['jobID']}", "/jobs/ID")
        body = json.loads(text)
        body["jobID"] = "ID"
        for name in ("created", "started", "finished", "updated"):
            body[name] = body[name] is not None
    skip = {"date", "server", "content-length"}
    headers = sorted((k, v.replace(base, "BASE").rsplit("/jobs/", 1)[0] if k == "location" else v)
                     for k, v in response.headers.items() if k not in skip)
    return response.status_code, headers, body


def test_fast_routes_answer_as_fastapi_does(api: ApiServer) -> None:
    """Submit and GET /jobs/{id} answer exactly as FastAPI's routes do: a second server on the
    same database with GEOJOBS_API_FAST_ROUTES=false (FastAPI's routing, dependencies and
    JSON encoder) is the oracle, request by request: statuses, headers, problem documents and
    statusInfo bodies, the order of the checks included (no key and an unknown process: 401;
    a non-numeric job id without a key: 404)."""
    from tests.api_support import start_server, stop

    slow = start_server(api.db_url, api.output_dir, GEOJOBS_CORS_ORIGINS="http://maps.example",
                        GEOJOBS_API_FAST_ROUTES="false")
    try:
        servers = {"fast": api.url, "fastapi": f"http://127.0.0.1:{slow.port}"}  # type: ignore[attr-defined]
        alice = {"Authorization": f"Bearer {api.keys['alice']}", "Origin": "http://maps.example"}
        bob = {"Authorization": f"Bearer {api.keys['bob']}"}
        json_type = {"Content-Type": "application/json"}
        with api.client("alice") as client:
            job = submit(client, "noop", {}).json()["jobID"]
        post = "POST", "/processes/noop/execution"
        cases: list[tuple[str, str, dict[str, str], bytes]] = [
            (*post, {**alice, **json_type}, b'{"inputs": {}}'),
            (*post, {**alice, **json_type, "Prefer": "respond-async"}, b'{"inputs": {"steps": 2}}'),
            (*post, {**alice, **json_type, "Prefer": "wait=30"}, b'{"inputs": {}}'),
            (*post, {**json_type}, b'{"inputs": {}}'),
            (*post, {"Authorization": "Bearer wrong", **json_type}, b'{"inputs": {}}'),
            ("POST", "/processes/nope/execution", {**json_type}, b'{"inputs": {}}'),
            ("POST", "/processes/nope/execution", {**alice, **json_type}, b'{"inputs": {}}'),
            (*post, {**alice, "Content-Type": "text/plain"}, b'{"inputs": {}}'),
            (*post, {**alice, **json_type}, b'{"inputs": '),
            (*post, {**alice, **json_type}, b'{"inputs": {"sleep_seconds": "x"}}'),
            (*post, {**alice, **json_type}, b'{"inputs": {"nope": 1}}'),
            (*post, {**alice, **json_type}, b'{"inputs": {}, "extra": 1}'),
            (*post, {**alice, **json_type, "Prefer": "wait=10000"}, b'{"inputs": {}}'),
            (*post, {**alice, **json_type, "Idempotency-Key": "a b"}, b'{"inputs": {}}'),
            (*post, {**alice, **json_type},
             b'{"inputs": {}, "subscriber": {"successUri": "http://10.1.2.3/x"}}'),
            ("GET", f"/jobs/{job}", alice, b""),
            ("GET", f"/jobs/{job}", bob, b""),
            ("GET", f"/jobs/{job}", {}, b""),
            ("GET", "/jobs/abc", {}, b""),
            ("GET", "/jobs/0", alice, b""),
            ("GET", "/jobs/99999999999", alice, b""),
        ]
        answers: dict[str, list[tuple[Any, ...]]] = {}
        for name, url in servers.items():
            with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
                answers[name] = [_same_answer(http.request(method, path, headers=headers,
                                                           content=body), url)
                                 for method, path, headers, body in cases]
                key = {**alice, **json_type, "Idempotency-Key": f"same-{name}"}
                answers[name] += [_same_answer(http.post(post[1], headers=key,
                                                         content=b'{"inputs": {}}'), url)
                                  for _ in range(2)]
        for case, fast, oracle in zip(cases, answers["fast"][:-2], answers["fastapi"][:-2],
                                      strict=True):
            assert fast == oracle, case
        # the same Idempotency-Key twice: the job may have run meanwhile (a worker is up)
        for fast, oracle in zip(answers["fast"][-2:], answers["fastapi"][-2:], strict=True):
            assert fast[:2] == oracle[:2] and fast[2]["processID"] == oracle[2]["processID"]
        statuses = [answer[0] for answer in answers["fast"]]
        assert statuses == [201, 201, 201, 401, 401, 401, 404, 415, 400, 400, 400, 400, 400, 400,
                            400, 200, 404, 401, 404, 404, 404, 201, 200]
    finally:
        stop(slow)

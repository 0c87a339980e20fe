"""Bad input over HTTP: each case gets the right status and an RFC 7807 problem naming the
field or header at fault, and changes nothing (job rows, catalog, table contents, output files).

One server for the module (no workers: nothing must run). Users: alice, bob (who owns a job and
a result table), full (already at GEOJOBS_API_MAX_QUEUED = 2 queued jobs), gone (revoked).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from geojobs.api.keys import revoke_key
from tests.api_support import ApiServer, api_server
from tests.snapshot import diff, snapshot

pytestmark = pytest.mark.db

JOBS = ("SELECT count(*), coalesce(max(id), 0), coalesce(max(xmin::text::bigint), 0) "
        "FROM background_jobs")


@pytest.fixture(scope="module")
def api(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    for server in api_server(template_db, tmp_path_factory.mktemp("api_bad"),
                             users={"alice": False, "bob": False, "full": False, "gone": False},
                             GEOJOBS_API_MAX_QUEUED="2"):
        with server.connect() as conn:
            conn.execute("INSERT INTO background_jobs (job_type, params, submitted_by) VALUES "
                         "('noop', '{}', 'bob'), ('noop', '{}', 'full'), ('noop', '{}', 'full')")
            conn.execute("CREATE TABLE results.bobs AS SELECT 1 AS fid")
            conn.execute("INSERT INTO background_jobs (job_type, params, submitted_by, status, result) "
                         "VALUES ('dissolve', '{}', 'bob', 'completed', "
                         "'{\"output_table\": \"results.bobs\", \"rows\": 1}')")
            revoke_key(conn, "gone")
        yield server


@dataclass
class Case:
    """One bad request and what must come back."""

    name: str
    method: str
    path: str
    status: int
    names: str
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    user: str | None = "alice"


def _execute(process: str, inputs: Any, status: int, names: str, name: str, **kw: Any) -> Case:
    return Case(name, "POST", f"/processes/{process}/execution", status, names,
                body={"inputs": inputs}, **kw)


DISSOLVE = {"input_table": "public.us_states"}
NESTED = {"inputs": {"sleep_seconds": 0}}
for _ in range(40):
    NESTED = {"inputs": NESTED}

CASES = [
    _execute("nope", {}, 404, "processID", "unknown process"),
    Case("unknown process description", "GET", "/processes/nope", 404, "processID"),
    _execute("dissolve", {}, 400, "inputs.input_table", "missing input"),
    _execute("noop", {"bogus": 1}, 400, "inputs.bogus", "unknown input"),
    _execute("noop", {"sleep_seconds": "abc"}, 400, "inputs.sleep_seconds", "string for a number"),
    _execute("dissolve", {**DISSOLVE, "by": "sub_region"}, 400, "inputs.by", "string for a list"),
    _execute("noop", {"sleep_seconds": -1}, 400, "inputs.sleep_seconds", "below the minimum"),
    _execute("noop", {"steps": 1.5}, 400, "inputs.steps", "fraction for an integer"),
    _execute("dissolve", {**DISSOLVE, "output_table": "Results.X"}, 400, "inputs.output_table",
             "output table not an identifier"),
    _execute("dissolve", {**DISSOLVE, "output_table": "public.mine"}, 400, "inputs.output_table",
             "output table outside the output schemas"),
    _execute("dissolve", {**DISSOLVE, "output_table": 'results.x"; DROP TABLE public.us_states; --'},
             400, "inputs.output_table", "SQL in the output table"),
    _execute("dissolve", {**DISSOLVE, "by": ["a\u0000b"]}, 400, "inputs.by", "NUL in a column name"),
    _execute("dissolve", {"input_table": "a.b.c"}, 400, "inputs.input_table", "three-part input table"),
    _execute("dissolve", {**DISSOLVE, "aggregates": {"area": "sum; DROP TABLE x"}}, 400,
             "inputs.aggregates", "SQL as an aggregate"),
    _execute("dissolve", {**DISSOLVE, "overwrite": True, "output_table": "results.bobs"}, 403,
             "output_table", "overwrite another user's table"),
    Case("NaN", "POST", "/processes/noop/execution", 400, "body",
         raw=b'{"inputs": {"sleep_seconds": NaN}}'),
    Case("Infinity", "POST", "/processes/noop/execution", 400, "body",
         raw=b'{"inputs": {"sleep_seconds": Infinity}}'),
    Case("-Infinity", "POST", "/processes/noop/execution", 400, "body",
         raw=b'{"inputs": {"sleep_seconds": -Infinity}}'),
    Case("2 MiB body", "POST", "/processes/noop/execution", 413, "body",
         raw=b'{"inputs": {"raise_error": "' + b"x" * (2 << 20) + b'"}}'),
    Case("text/plain", "POST", "/processes/noop/execution", 415, "Content-Type",
         raw=b'{"inputs": {}}', headers={"Content-Type": "text/plain"}),
    Case("form content type", "POST", "/processes/noop/execution", 415, "Content-Type",
         raw=b"inputs=1", headers={"Content-Type": "application/x-www-form-urlencoded"}),
    Case("malformed JSON", "POST", "/processes/noop/execution", 400, "body", raw=b'{"inputs": {'),
    Case("JSON nested 41 deep", "POST", "/processes/noop/execution", 400, "body", body=NESTED),
    Case("JSON nested 100000 deep", "POST", "/processes/noop/execution", 400, "body",
         raw=b"[" * 100_000 + b"]" * 100_000),
    Case("body is an array", "POST", "/processes/noop/execution", 400, "body", body=[1, 2]),
    Case("unknown member", "POST", "/processes/noop/execution", 400, "input", body={"input": {}}),
    Case("inputs not an object", "POST", "/processes/noop/execution", 400, "inputs",
         body={"inputs": [1]}),
    Case("bad response mode", "POST", "/processes/noop/execution", 400, "response",
         body={"inputs": {}, "response": "stream"}),
    Case("unknown job", "GET", "/jobs/999999999", 404, "jobID"),
    Case("non-numeric job id", "GET", "/jobs/abc", 404, "jobID"),
    Case("negative job id", "GET", "/jobs/-1", 404, "jobID"),
    Case("huge job id", "GET", "/jobs/99999999999999999999999", 404, "jobID"),
    Case("another user's job", "GET", "/jobs/{bob}", 404, "jobID"),
    Case("another user's results", "GET", "/jobs/{bob}/results", 404, "jobID"),
    Case("another user's events", "GET", "/jobs/{bob}/events", 404, "jobID"),
    Case("dismiss another user's job", "DELETE", "/jobs/{bob}", 404, "jobID"),
    Case("dismiss another user's finished job", "DELETE", "/jobs/{bob_done}", 404, "jobID"),
    Case("limit 0", "GET", "/jobs?limit=0", 400, "limit"),
    Case("negative limit", "GET", "/jobs?limit=-5", 400, "limit"),
    Case("huge limit", "GET", "/jobs?limit=100000000", 400, "limit"),
    Case("limit not a number", "GET", "/jobs?limit=ten", 400, "limit"),
    Case("datetime not a date", "GET", "/jobs?datetime=yesterday", 400, "datetime"),
    Case("datetime backwards", "GET",
         "/jobs?datetime=2026-01-02T00:00:00Z/2026-01-01T00:00:00Z", 400, "datetime"),
    Case("datetime without time zone", "GET", "/jobs?datetime=2026-01-01T00:00:00", 400, "datetime"),
    Case("datetime open both ends", "GET", "/jobs?datetime=../..", 400, "datetime"),
    Case("unknown status", "GET", "/jobs?status=done", 400, "status"),
    Case("negative minDuration", "GET", "/jobs?minDuration=-1", 400, "minDuration"),
    _execute("noop", {}, 401, "Authorization", "no key", user=None),
    Case("no key on /jobs", "GET", "/jobs", 401, "Authorization", user=None),
    _execute("noop", {}, 401, "Authorization", "wrong key", user=None,
             headers={"Authorization": "Bearer gj_not-a-real-key"}),
    _execute("noop", {}, 401, "Authorization", "revoked key", user="gone"),
    _execute("noop", {}, 401, "Authorization", "Basic without a colon", user=None,
             headers={"Authorization": "Basic " + base64.b64encode(b"alice").decode()}),
    _execute("noop", {}, 401, "Authorization", "Basic not base64", user=None,
             headers={"Authorization": "Basic %%%"}),
    _execute("noop", {}, 401, "Authorization", "unknown scheme", user=None,
             headers={"Authorization": "Token abc"}),
    Case("callback to a host not allowed", "POST", "/processes/noop/execution", 400,
         "subscriber.successUri",
         body={"inputs": {}, "subscriber": {"successUri": "http://10.1.2.3/hook"}}),
    Case("callback by ftp", "POST", "/processes/noop/execution", 400, "subscriber.failedUri",
         body={"inputs": {}, "subscriber": {"failedUri": "ftp://127.0.0.1/hook"}}),
    Case("callback with credentials", "POST", "/processes/noop/execution", 400,
         "subscriber.inProgressUri",
         body={"inputs": {}, "subscriber": {"inProgressUri": "http://u:p@127.0.0.1/hook"}}),
    Case("callback to metadata address", "POST", "/processes/noop/execution", 400,
         "subscriber.successUri",
         body={"inputs": {}, "subscriber": {"successUri": "http://169.254.169.254/latest"}}),
    Case("unknown subscriber member", "POST", "/processes/noop/execution", 400, "subscriber.url",
         body={"inputs": {}, "subscriber": {"url": "http://127.0.0.1/"}}),
    _execute("noop", {}, 400, "Prefer", "Prefer: wait=10000", headers={"Prefer": "wait=10000"}),
    _execute("noop", {}, 400, "Prefer", "Prefer: wait=soon", headers={"Prefer": "wait=soon"}),
    _execute("noop", {}, 400, "Idempotency-Key", "Idempotency-Key with spaces",
             headers={"Idempotency-Key": "two words"}),
    _execute("noop", {}, 400, "Idempotency-Key", "Idempotency-Key too long",
             headers={"Idempotency-Key": "k" * 256}),
    _execute("noop", {}, 429, "GEOJOBS_API_MAX_QUEUED", "too many queued jobs", user="full"),
]


@pytest.fixture(scope="module")
def ids(api: ApiServer) -> dict[str, str]:
    with api.connect() as conn:
        queued = conn.execute("SELECT id FROM background_jobs WHERE submitted_by = 'bob' "
                              "AND status = 'queued'").fetchone()
        done = conn.execute("SELECT id FROM background_jobs WHERE submitted_by = 'bob' "
                            "AND status = 'completed'").fetchone()
    assert queued and done
    return {"bob": str(queued[0]), "bob_done": str(done[0])}


def test_at_least_forty_cases() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request(api: ApiServer, ids: dict[str, str], case: Case) -> None:
    headers = dict(case.headers)
    if case.user:
        headers.setdefault("Authorization", f"Bearer {api.keys[case.user]}")
    content = case.raw
    if content is None and case.body is not None:
        content = json.dumps(case.body).encode()
    if content is not None:
        headers.setdefault("Content-Type", "application/json")
    with api.connect() as conn:
        before = snapshot(conn, [api.output_dir])
        jobs_before = conn.execute(JOBS).fetchone()
        with httpx.Client(base_url=api.url, trust_env=False, timeout=30) as http:
            response = http.request(case.method, case.path.format(**ids), content=content,
                                    headers=headers)
        assert response.status_code == case.status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == case.status
        assert case.names in problem["detail"], problem
        if case.status == 401:
            assert "Bearer" in response.headers["WWW-Authenticate"]
        if case.status == 429:
            assert int(response.headers["Retry-After"]) > 0
        assert conn.execute(JOBS).fetchone() == jobs_before
        assert diff(before, snapshot(conn, [api.output_dir])) == {}

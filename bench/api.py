"""``python -m bench.api``: the HTTP API against direct SQL, side by side in one run, on loopback.

- Submit latency: jobs submitted one at a time, alternating ``POST /processes/noop/execution``
  (one keep-alive HTTP connection) and ``INSERT INTO background_jobs`` (one psycopg
  connection, autocommit); p50/p95 of each, the API's added time at p50, and the API server's
  CPU time per submit (its process and children, from /proc).
- Submits per second with 1 and 16 concurrent clients: asyncio with N keep-alive HTTP
  connections (API) against asyncio with N psycopg async connections (SQL), both in this one
  client process; the client process's CPU per request on each side (``client_cpu_ms_*``).
- ``GET /jobs/{id}`` per second with 16 clients.
- Completion to SSE event: a noop worker runs each job; a client follows ``/jobs/{id}/events``;
  the time from the job's ``finished_at`` (set in the worker's completion transaction, just
  before its commit) to the arrival of the ``successful`` event, p50/p95.

The question is what the API adds, so the load generator should cost little on both sides
(it shares the cores with the server and PostgreSQL). ``--client raw`` (the default) sends
prebuilt HTTP/1.1 requests over plain sockets (:mod:`bench.rawhttp`) and runs the concurrent
cases on uvloop, the SQL side included; ``--client httpx`` is the method of the first figures
(httpx on asyncio's default loop), kept to compare. Submits are spread round-robin over
``--users`` API users (default 64) and the table is emptied before each case, so no user
holds more queued jobs than a deployment's quota allows (GEOJOBS_API_MAX_QUEUED, default 100,
which then stays in force); with fewer users the quota is lifted (100,000,000, as in the first
figures) and the quota check counts every queued job of the one user.

No worker runs during the submit measurements (jobs stay queued). The uvicorn worker count is
``--uvicorn-workers`` (default 1) and is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from bench.database import bench_database
from bench.measure import percentiles
from bench.rawhttp import AsyncClient, BlockingClient, request_bytes
from bench.report import machine, print_table, write_json
from geojobs.api.keys import create_key

__all__ = ["run", "main"]

ROOT = Path(__file__).resolve().parents[1]
INSERT = "INSERT INTO background_jobs (job_type, params) VALUES (%s, %s) RETURNING id"
SUBMIT_PATH = "/processes/noop/execution"
SUBMIT_BODY = b'{"inputs": {}}'
DEFAULT_QUOTA = 100
"""GEOJOBS_API_MAX_QUEUED's default."""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(cmd: list[str], env: dict[str, str], log: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, text=True, stdout=log, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _cpu(pid: int) -> float:
    """CPU seconds used so far by a process and its children."""
    proc = psutil.Process(pid)
    times = [proc.cpu_times(), *(c.cpu_times() for c in proc.children(recursive=True))]
    return sum(t.user + t.system for t in times)


class Target:
    """The API under test: where it listens and the users' keys."""

    def __init__(self, host: str, port: int, keys: list[str]) -> None:
        self.host, self.port, self.keys = host, port, keys
        self.url = f"http://{host}:{port}"

    def submit_request(self, user: int) -> bytes:
        """The prebuilt submit request of one user."""
        return request_bytes("POST", SUBMIT_PATH, f"{self.host}:{self.port}",
                             {"Authorization": f"Bearer {self.keys[user]}",
                              "Content-Type": "application/json"}, SUBMIT_BODY)

    def get_request(self, user: int, job: str) -> bytes:
        """The prebuilt ``GET /jobs/{id}`` request of one user's job."""
        return request_bytes("GET", f"/jobs/{job}", f"{self.host}:{self.port}",
                             {"Authorization": f"Bearer {self.keys[user]}"})


def submit_latency(target: Target, client: str, sql: psycopg.Connection[Any], n: int,
                   server_pid: int) -> list[dict[str, Any]]:
    """Sequential submits, API and SQL alternating; milliseconds, and the API server's CPU
    milliseconds per submit (what the load of the machine does not change)."""
    api_t, sql_t, api_cpu = [], [], 0.0
    users = len(target.keys)
    raw = BlockingClient(target.host, target.port) if client == "raw" else None
    http = httpx.Client(base_url=target.url, trust_env=False, timeout=60)
    requests = [target.submit_request(u) for u in range(users)]
    headers = [{"Authorization": f"Bearer {key}"} for key in target.keys]

    def post(i: int) -> int:
        if raw is not None:
            return raw.send(requests[i % users]).status
        return http.post(SUBMIT_PATH, json={"inputs": {}}, headers=headers[i % users]).status_code

    try:
        for i in range(20):  # warm both paths
            post(i)
            sql.execute(INSERT, ("noop", Jsonb({})))
        for i in range(n):
            c0 = _cpu(server_pid)
            t0 = time.perf_counter()
            status = post(i)
            api_t.append(time.perf_counter() - t0)
            api_cpu += _cpu(server_pid) - c0
            assert status == 201, status
            t0 = time.perf_counter()
            sql.execute(INSERT, ("noop", Jsonb({}))).fetchone()
            sql_t.append(time.perf_counter() - t0)
    finally:
        http.close()
        if raw is not None:
            raw.close()
    a50, a95 = percentiles([_ms(t) for t in api_t])
    s50, s95 = percentiles([_ms(t) for t in sql_t])
    return [{"path": "HTTP API", "client": client, "n": n, "p50_ms": a50, "p95_ms": a95,
             "added_p50_ms": a50 - s50, "server_cpu_ms": _ms(api_cpu / n)},
            {"path": "SQL INSERT", "client": "psycopg", "n": n, "p50_ms": s50, "p95_ms": s95,
             "added_p50_ms": 0.0, "server_cpu_ms": float("nan")}]


async def _spread(total: int, clients: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run ``total`` calls over ``clients`` concurrent tasks; calls per second."""
    counter = iter(range(total))

    async def client(index: int) -> None:
        for _ in counter:
            await one(index)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return total / (time.perf_counter() - t0)


async def _api_rates_raw(target: Target, total: int, clients: int) -> tuple[float, float]:
    """Submits and GET /jobs/{id} per second over ``clients`` raw keep-alive connections."""
    conns = [await AsyncClient.connect(target.host, target.port) for _ in range(clients)]
    users = len(target.keys)
    requests = [target.submit_request(u) for u in range(users)]
    jobs: list[tuple[int, str]] = []
    turn = iter(range(total * 2))
    try:
        async def post(i: int) -> None:
            user = next(turn) % users
            response = await conns[i].send(requests[user])
            assert response.status == 201, response
            jobs.append((user, json.loads(response.body)["jobID"]))

        api_rate = await _spread(total, clients, post)
        gets = [target.get_request(user, job) for user, job in jobs]

        async def get(i: int) -> None:
            response = await conns[i].send(gets[next(turn) % len(gets)])
            assert response.status == 200, response

        get_rate = await _spread(total, clients, get)
    finally:
        for conn in conns:
            await conn.close()
    return api_rate, get_rate


async def _api_rates_httpx(target: Target, total: int, clients: int) -> tuple[float, float]:
    """As :func:`_api_rates_raw`, with httpx (the first figures' method)."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    users = len(target.keys)
    headers = [{"Authorization": f"Bearer {key}"} for key in target.keys]
    turn = iter(range(total * 2))
    async with httpx.AsyncClient(base_url=target.url, limits=limits, trust_env=False,
                                 timeout=60) as http:
        jobs: list[tuple[int, str]] = []

        async def post(_: int) -> None:
            user = next(turn) % users
            response = await http.post(SUBMIT_PATH, json={"inputs": {}}, headers=headers[user])
            assert response.status_code == 201, response.text
            jobs.append((user, response.json()["jobID"]))

        api_rate = await _spread(total, clients, post)

        async def get(_: int) -> None:
            user, job = jobs[next(turn) % len(jobs)]
            response = await http.get(f"/jobs/{job}", headers=headers[user])
            assert response.status_code == 200

        get_rate = await _spread(total, clients, get)
    return api_rate, get_rate


async def throughput(target: Target, client: str, db_url: str, total: int,
                     clients: int) -> dict[str, Any]:
    """Submits per second through the API and by SQL, and GET /jobs/{id} per second; the
    table is emptied first, and again between the API and the SQL case."""
    load = os.getloadavg()[0]
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("DELETE FROM background_jobs")
    rates = _api_rates_raw if client == "raw" else _api_rates_httpx
    cpu = time.process_time()
    api_rate, get_rate = await rates(target, total, clients)
    api_client_cpu = (time.process_time() - cpu) / (2 * total)  # submits and GETs
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("DELETE FROM background_jobs")
    conns = [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(clients)]
    try:
        async def insert(i: int) -> None:
            await (await conns[i].execute(INSERT, ("noop", Jsonb({})))).fetchone()

        cpu = time.process_time()
        sql_rate = await _spread(total, clients, insert)
        sql_client_cpu = (time.process_time() - cpu) / total
    finally:
        for conn in conns:
            await conn.close()
    return {"clients": clients, "http_client": client, "submits": total,
            "api_submits_per_s": api_rate, "sql_inserts_per_s": sql_rate,
            "api_vs_sql": api_rate / sql_rate, "api_get_job_per_s": get_rate,
            "client_cpu_ms_api": _ms(api_client_cpu), "client_cpu_ms_sql": _ms(sql_client_cpu),
            "load_1m": f"{load:.2f}-{os.getloadavg()[0]:.2f}"}


def _run_async(client: str, coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run ``coro`` on uvloop for the raw client (its event loop costs less per message, on
    both the HTTP and the psycopg side), on asyncio's default loop for httpx."""
    if client == "raw":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


def sse_latency(url: str, key: str, sql: psycopg.Connection[Any], n: int) -> dict[str, Any]:
    """From finished_at (the worker's completion) to the successful SSE event; milliseconds."""
    lags = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, trust_env=False, timeout=60) as http:
        for _ in range(n):
            job = http.post("/processes/noop/execution",
                            json={"inputs": {"sleep_seconds": 0.2}}).json()["jobID"]
            arrived = None
            with http.stream("GET", f"/jobs/{job}/events") as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: ") and json.loads(line[6:])["status"] == "successful":
                        arrived = time.time()
                        break
            assert arrived is not None
            finished = sql.execute("SELECT extract(epoch FROM finished_at) FROM background_jobs "
                                   "WHERE id = %s", (int(job),)).fetchone()[0]  # type: ignore[index]
            lags.append(_ms(arrived - float(finished)))
    p50, p95 = percentiles(lags)
    return {"jobs": n, "completion_to_sse_p50_ms": p50, "completion_to_sse_p95_ms": p95}


def run(*, n_latency: int, n_throughput: int, n_sse: int, uvicorn_workers: int, client: str = "raw",
        users: int = 64, fast_routes: bool = True) -> dict[str, Any]:
    """The whole comparison in one fresh database; returns the tables."""
    out: dict[str, Any] = {}
    with bench_database(prefix="geojobs_bench_api") as db_url, tempfile.TemporaryDirectory() as tmp:
        with psycopg.connect(db_url, autocommit=True) as conn:
            keys = [create_key(conn, f"bench{u}") for u in range(users)]
            key = keys[0]
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        target = Target("127.0.0.1", port, keys)
        most_queued = -(-max(n_latency + 20, n_throughput) // users)
        quota = DEFAULT_QUOTA if most_queued < DEFAULT_QUOTA else 100_000_000
        print(f"API users: {users}, at most {most_queued} queued jobs each; "
              f"GEOJOBS_API_MAX_QUEUED={quota}; HTTP client: {client}; "
              f"fast routes: {fast_routes}", flush=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT), GEOJOBS_OUTPUT_DIR=tmp,
                   DATABASE_URL=make_conninfo(db_url, user="geojobs_api"),
                   GEOJOBS_API_MAX_QUEUED=str(quota), GEOJOBS_API_POOL_SIZE="20",
                   GEOJOBS_API_FAST_ROUTES=str(fast_routes).lower())
        log = open(Path(tmp) / "api.log", "w")  # noqa: SIM115 - closed below
        server = _start([sys.executable, "-m", "geojobs.cli", "serve", "--port", str(port),
                         "--workers", str(uvicorn_workers), "--log-level", "warning"], env, log)
        worker = None
        try:
            deadline = time.monotonic() + 180  # imports take long on a loaded machine
            while True:
                try:
                    if httpx.get(f"{url}/conformance", trust_env=False, timeout=1).is_success:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError((Path(tmp) / "api.log").read_text())
                time.sleep(0.2)
            with psycopg.connect(db_url, autocommit=True) as sql:
                load = os.getloadavg()[0]
                out["latency"] = submit_latency(target, client, sql, n_latency, server.pid)
                print_table(f"Submit latency, sequential (uvicorn workers: {uvicorn_workers}; "
                            f"load {load:.2f}-{os.getloadavg()[0]:.2f})", out["latency"])
                out["throughput"] = [_run_async(client, throughput(target, client, db_url,
                                                                   n_throughput, c))
                                     for c in (1, 16)]
                print_table(f"Submits and GET /jobs/{{id}} per second (uvicorn workers: "
                            f"{uvicorn_workers})", out["throughput"])
                sql.execute("DELETE FROM background_jobs")
                worker = _start([sys.executable, "-m", "workers.noop"],
                                dict(env, DATABASE_URL=make_conninfo(db_url, user="geojobs_worker")),
                                log)
                time.sleep(2)
                out["sse"] = [sse_latency(url, key, sql, n_sse)]
                print_table("Completion to SSE event", out["sse"])
        finally:
            if worker is not None:
                _stop(worker)
            _stop(server)
            log.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: check, not measure")
    parser.add_argument("--uvicorn-workers", type=int, default=1)
    parser.add_argument("--latency-jobs", type=int, help="sequential submits (default 400)")
    parser.add_argument("--submits", type=int, help="submits per throughput case (default 2000)")
    parser.add_argument("--sse-jobs", type=int, help="jobs followed over SSE (default 40)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="HTTP load generator: raw sockets on uvloop (default), or httpx "
                             "(the first figures' method)")
    parser.add_argument("--users", type=int, default=64,
                        help="API users the submits are spread over (default 64; 1 as in the "
                             "first figures, with the quota lifted)")
    parser.add_argument("--no-fast-routes", action="store_true",
                        help="serve submit and status through FastAPI (GEOJOBS_API_FAST_ROUTES="
                             "false), to compare")
    parser.add_argument("--json", type=Path, help="also save the figures here")
    args = parser.parse_args(argv)
    sizes = (30, 200, 5) if args.quick else (400, 2000, 40)
    sizes = (args.latency_jobs or sizes[0], args.submits or sizes[1], args.sse_jobs or sizes[2])
    print(f"machine: {machine()}", flush=True)
    print(f"command: python -m bench.api {' '.join(argv or sys.argv[1:])}", flush=True)
    out = run(n_latency=sizes[0], n_throughput=sizes[1], n_sse=sizes[2],
              uvicorn_workers=args.uvicorn_workers, client=args.client, users=args.users,
              fast_routes=not args.no_fast_routes)
    if args.json:
        write_json(args.json, [row for rows in out.values() for row in rows],
                   uvicorn_workers=args.uvicorn_workers, client=args.client, users=args.users,
                   fast_routes=not args.no_fast_routes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

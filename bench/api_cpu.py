"""``python -m bench.api_cpu``: the API server's CPU per submit and per ``GET /jobs/{id}``,
requests sent back to back on one raw keep-alive connection (:mod:`bench.rawhttp`).

The server's user + system CPU (its process, from /proc) over ``--requests`` submits, then as
many status reads, divided by the count. One API user, quota lifted; no worker runs. Set
``GEOJOBS_API_FAST_ROUTES=false`` in the environment to measure FastAPI's routes; run it in
another checkout's directory, with ``PYTHONPATH`` set to it, to measure that code's server.
Optionally records a py-spy profile of each phase (``--py-spy DIR``; py-spy is in the
``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from bench.api import ROOT, _cpu, _free_port, _stop
from bench.database import bench_database
from bench.rawhttp import BlockingClient, request_bytes
from geojobs.api.keys import create_key

__all__ = ["main"]


def _connect(port: int, server: subprocess.Popen[str]) -> BlockingClient:
    deadline = time.monotonic() + 180
    while True:
        try:
            return BlockingClient("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise
            time.sleep(0.2)


def _spy(pid: int, out: Path | None) -> subprocess.Popen[bytes] | None:
    if out is None:
        return None
    spy = subprocess.Popen(["py-spy", "record", "--format", "raw", "--rate", "1000", "--nonblocking",
                            "-o", str(out), "--pid", str(pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    return spy


def _stop_spy(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait()


def measure(n: int, profile_dir: Path | None = None, log_level: str = "warning") -> dict[str, float]:
    """Server CPU milliseconds per submit and per GET /jobs/{id}."""
    with bench_database(prefix="geojobs_bench_api_cpu") as db_url, \
            tempfile.TemporaryDirectory() as tmp:
        with psycopg.connect(db_url, autocommit=True) as conn:
            key = create_key(conn, "bench")
        port = _free_port()
        env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT)),
                   GEOJOBS_OUTPUT_DIR=tmp, DATABASE_URL=make_conninfo(db_url, user="geojobs_api"),
                   GEOJOBS_API_MAX_QUEUED="100000000")
        with open(Path(tmp) / "api.log", "w") as log:
            # cwd and PYTHONPATH as given: run from another checkout to measure its code
            server = subprocess.Popen([sys.executable, "-m", "geojobs.cli", "serve", "--port",
                                       str(port), "--log-level", log_level], env=env, text=True,
                                      stdout=log, stderr=subprocess.STDOUT)
            try:
                client = _connect(port, server)
                host = f"127.0.0.1:{port}"
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                post = request_bytes("POST", "/processes/noop/execution", host, headers,
                                     b'{"inputs": {}}')
                ids = []
                for _ in range(50):  # warm up
                    response = client.send(post)
                    assert response.status == 201, response
                    ids.append(json.loads(response.body)["jobID"])
                spy = _spy(server.pid, profile_dir and profile_dir / "submit.txt")
                cpu = _cpu(server.pid)
                for _ in range(n):
                    assert client.send(post).status == 201
                submit = (_cpu(server.pid) - cpu) / n
                _stop_spy(spy)
                gets = [request_bytes("GET", f"/jobs/{i}", host, headers) for i in ids]
                spy = _spy(server.pid, profile_dir and profile_dir / "get.txt")
                cpu = _cpu(server.pid)
                for i in range(n):
                    assert client.send(gets[i % len(gets)]).status == 200
                get = (_cpu(server.pid) - cpu) / n
                _stop_spy(spy)
                client.close()
            finally:
                _stop(server)
    return {"server_cpu_ms_submit": submit * 1000, "server_cpu_ms_get_job": get * 1000}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_cpu", description=__doc__)
    parser.add_argument("--requests", type=int, default=400, help="submits, then GETs (400)")
    parser.add_argument("--py-spy", type=Path, help="write py-spy raw profiles to this directory")
    parser.add_argument("--log-level", default="warning",
                        help="the server's (warning: no access log; info: one line per request, "
                             "as the systemd unit runs it)")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    out = measure(args.requests, args.py_spy, args.log_level)
    fast = os.environ.get("GEOJOBS_API_FAST_ROUTES", "true")
    print(f"GEOJOBS_API_FAST_ROUTES={fast} --log-level {args.log_level} "
          f"load {load:.2f}-{os.getloadavg()[0]:.2f}: "
          + ", ".join(f"{k} {v:.3f}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

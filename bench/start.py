"""``python -m bench.start``: seconds from a worker's start to its ``READY=1``, per job type.

Each job type's worker (``python -m workers.<type>``) is started as systemd would start it:
with ``$NOTIFY_SOCKET`` pointing at a datagram socket this process listens on. The time from
``Popen`` to the ``READY=1`` datagram is what a unit with ``Type=notify`` waits before it is
up: interpreter start, imports, the job type's warm-up (numba kernels for hotspot and
outlier), the database connection. The worker is then stopped with SIGTERM. Each type is
started ``--repeat`` times, interleaved, and the fastest and slowest starts are reported.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.database import bench_database
from bench.report import report
from geojobs import registry

__all__ = ["COLUMNS", "start_to_ready", "run", "main"]

COLUMNS = ["job_type", "starts", "best_s", "worst_s", "note"]
ROOT = Path(__file__).resolve().parents[1]


def start_to_ready(database_url: str, job_type: str, timeout: float = 300.0) -> float:
    """Seconds from starting ``python -m workers.<job_type>`` to its ``READY=1``."""
    with tempfile.TemporaryDirectory() as folder:
        address = os.path.join(folder, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(address)
            sock.settimeout(timeout)
            env = dict(os.environ, DATABASE_URL=database_url, NOTIFY_SOCKET=address,
                       PYTHONPATH=str(ROOT))
            started = time.perf_counter()
            worker = subprocess.Popen([sys.executable, "-m", f"workers.{job_type}"], env=env,
                                      cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            try:
                while True:
                    message = sock.recv(4096).decode()
                    if "READY=1" in message.split("\n"):
                        return time.perf_counter() - started
            finally:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()


def run(job_types: Sequence[str], database_url: str, repeat: int = 2) -> list[dict[str, Any]]:
    """One row per job type: best and worst of ``repeat`` interleaved starts."""
    times: dict[str, list[float]] = {t: [] for t in job_types}
    for _ in range(repeat):
        for job_type in job_types:
            times[job_type].append(start_to_ready(database_url, job_type))
    return [{"job_type": t, "starts": len(s), "best_s": min(s), "worst_s": max(s),
             "note": "Popen to READY=1 on $NOTIFY_SOCKET"} for t, s in times.items()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.start", description=__doc__)
    parser.add_argument("job_types", nargs="*", help="job types (default: all)")
    parser.add_argument("--repeat", type=int, default=2, help="starts per job type")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    job_types = args.job_types or registry.names()
    with bench_database() as url:
        rows = run(job_types, url, repeat=args.repeat)
    return report("worker start to READY", rows, COLUMNS, args.json)


if __name__ == "__main__":
    raise SystemExit(main())

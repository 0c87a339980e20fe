"""``make demo``: sample data in, one job of each demo kind queued, workers run, table out.

Each job type may declare ``DEMO`` (see :mod:`geojobs.jobtype`): parameter sets on the sample
tables (geojobs.samples). The demo (re)loads the samples, queues every DEMO job, runs each job
type's worker in its own process until the queue is empty, and prints the jobs.
"""

from __future__ import annotations

import subprocess
import sys

from geojobs import db, queue, registry
from geojobs.report import print_jobs
from geojobs.samples import SAMPLES, load_sample

__all__ = ["run_demo"]


def run_demo() -> int:
    """Run the demo; returns 0 when every demo job completed."""
    db.ensure_database()
    with db.connect() as conn:
        db.upgrade(conn)
        for name in SAMPLES:
            print(f"loaded sample {name} into {load_sample(conn, name)}")
        job_ids = []
        for job_type in registry.names():
            for params in registry.load(job_type).DEMO:
                job_ids.append(queue.enqueue(conn, job_type, params))
        types = sorted({queue.get(conn, i)["job_type"] for i in job_ids})  # type: ignore[index]
    for job_type in types:
        print(f"running {job_type} worker until its queue is empty...", flush=True)
        subprocess.run([sys.executable, "-m", f"workers.{job_type}", "--drain"], check=True)
    with db.connect() as conn:
        jobs = [queue.get(conn, i) for i in job_ids]
    print()
    print_jobs([j for j in jobs if j is not None])
    return 0 if all(j and j["status"] == "completed" for j in jobs) else 1

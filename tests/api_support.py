"""A real API server for the tests: uvicorn on a free 127.0.0.1 port, logged in as geojobs_api,
over a throwaway database of its own (one per test module), with real workers beside it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from geojobs.api.keys import create_key
from tests.conftest import _create, _drop
from tests.support import ROOT, WORKER_ROLE, as_role, worker_env

API_ROLE = "geojobs_api"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ApiServer:
    """A running ``geojobs serve`` and what the tests need to talk to it."""

    url: str
    db_url: str
    output_dir: Path
    process: subprocess.Popen[str]
    keys: dict[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen[str]] = field(default_factory=list)

    def client(self, user: str | None = None, **kwargs: Any) -> httpx.Client:
        """An HTTP client for ``user`` (Bearer key), or anonymous."""
        headers = {"Authorization": f"Bearer {self.keys[user]}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, trust_env=False,
                            **kwargs)

    def connect(self) -> psycopg.Connection[Any]:
        """A superuser connection to the server's database (the oracle's view)."""
        return psycopg.connect(self.db_url, autocommit=True)


def start_server(db_url: str, output_dir: Path, **settings: str) -> subprocess.Popen[str]:
    """``geojobs serve`` on a free port; returns once it answers."""
    port = free_port()
    env = dict(os.environ, DATABASE_URL=as_role(db_url, API_ROLE), PYTHONPATH=str(ROOT),
               GEOJOBS_OUTPUT_DIR=str(output_dir), GEOJOBS_API_PUBLIC_URL=f"http://127.0.0.1:{port}")
    env.update(settings)
    log = open(output_dir.parent / f"api-{port}.log", "w")  # noqa: SIM115 - kept for the process
    process = subprocess.Popen([sys.executable, "-m", "geojobs.cli", "serve", "--port", str(port),
                                "--log-level", "warning"], env=env, cwd=ROOT, text=True,
                               stdout=log, stderr=subprocess.STDOUT)
    process.port = port  # type: ignore[attr-defined]
    deadline = time.monotonic() + 90  # imports alone take 20 s on a loaded 2-core machine
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_text = (output_dir.parent / f"api-{port}.log").read_text()
            raise RuntimeError(f"the API server exited: {log_text}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/conformance", timeout=1, trust_env=False).is_success:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("the API server did not start within 90 s")


def stop(process: subprocess.Popen[str]) -> None:
    """Stop a process started here and wait for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def api_server(template_db: str, tmp: Path, *, users: dict[str, bool],
               workers: tuple[str, ...] = (), **settings: str) -> Iterator[ApiServer]:
    """A database copied from the template, API users (name -> admin), the server and workers."""
    name = f"geojobs_test_api_{uuid.uuid4().hex[:10]}"
    db_url = _create(name, template=template_db)
    output_dir = tmp / "outputs"
    output_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            keys = {user: create_key(conn, user, admin=admin) for user, admin in users.items()}
        process = start_server(db_url, output_dir, **settings)
        procs.append(process)
        server = ApiServer(f"http://127.0.0.1:{process.port}", db_url,  # type: ignore[attr-defined]
                           output_dir, process, keys)
        for job_type in workers:
            log = open(tmp / f"worker-{job_type}.log", "w")  # noqa: SIM115 - kept for the process
            worker = subprocess.Popen(
                [sys.executable, "-m", f"workers.{job_type}"], cwd=ROOT, text=True, stdout=log,
                stderr=subprocess.STDOUT, env=worker_env(as_role(db_url, WORKER_ROLE),
                                                          GEOJOBS_OUTPUT_DIR=str(output_dir),
                                                          GEOJOBS_RETRY_DELAYS="0.1",
                                                          # progress is written at most every
                                                          # 0.5 s and a bare heartbeat resets
                                                          # that clock: beat less often than that
                                                          GEOJOBS_HEARTBEAT_SECONDS="2"))
            procs.append(worker)
            server.workers.append(worker)
        yield server
    finally:
        for proc in procs:
            stop(proc)
        _drop(name)

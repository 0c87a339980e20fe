"""A real PgBouncer (Debian's ``pgbouncer``, installed by ``make tools``) for the tests and the
soak through PgBouncer (``python -m bench.soak --pgbouncer``).

Each :class:`PgBouncer` is a process of its own on a free 127.0.0.1 port, in transaction pooling
mode, in front of the test PostgreSQL on 127.0.0.1:5432, with a generated ini and auth file in a
directory of its own: never the system service. PgBouncer refuses to run as root, so the
process switches to the ``postgres`` user (``-u``) and its directory belongs to that user.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
# Login roles the tests use (trust auth in front of the local trust-auth PostgreSQL).
USERS = ("root", "postgres", "geojobs_worker", "geojobs_frontend", "geojobs_api", "geojobs_admin")


def _ini(folder: Path, port: int, pool_size: int) -> str:
    return f"""\
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/userlist.txt
admin_users = root
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 400
server_reset_query =
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
"""


@dataclass
class PgBouncer:
    """One PgBouncer process; :meth:`url` turns a direct test URL into one through it."""

    port: int = field(default_factory=free_port)
    pool_size: int = 20
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="geojobs-pgb-")))
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        (self.folder / "pgbouncer.ini").write_text(_ini(self.folder, self.port, self.pool_size))
        (self.folder / "userlist.txt").write_text("".join(f'"{u}" ""\n' for u in USERS))
        self.folder.chmod(0o755)
        for path in (self.folder, *self.folder.iterdir()):
            shutil.chown(path, "postgres")

    def start(self, timeout: float = 10.0) -> None:
        """Start the process and wait until it accepts connections."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.process = subprocess.Popen([PGBOUNCER, "-u", "postgres",
                                         str(self.folder / "pgbouncer.ini")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.log()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen within {timeout} s: {self.log()[-2000:]}")

    def stop(self) -> None:
        """Stop at once (SIGTERM: immediate shutdown, every client connection dropped)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        """Stop and remove the directory."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def url(self, db_url: str) -> str:
        """The same database and user as ``db_url``, through this PgBouncer."""
        return make_conninfo(db_url, host="127.0.0.1", port=str(self.port))

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run a command on PgBouncer's admin console (``SHOW POOLS``, ``PAUSE``, ``RESUME``)."""
        with psycopg.connect(f"host=127.0.0.1 port={self.port} dbname=pgbouncer user=root",
                             autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            cur = conn.execute(command)  # the console speaks the simple query protocol only
            return cur.fetchall() if cur.description else []


def running_as_root() -> bool:
    """PgBouncer is started as root and switches to ``postgres`` (which needs root)."""
    return os.geteuid() == 0

"""Worker logging: journald's native protocol under systemd, plain lines elsewhere, per-worker files.

Every record carries the worker's identity and, while a job runs, the job's: the runner sets
them with :func:`set_worker` and :func:`job_fields`. Process-wide rather than per thread,
because one worker process runs one job at a time and its heartbeat and signal threads log
about that same job.

Under systemd (``JOURNAL_STREAM`` set) or with ``GEOJOBS_LOG=journal``, records go to journald
as structured entries (``GEOJOBS_JOB_ID``, ``GEOJOBS_JOB_TYPE``, ``GEOJOBS_ATTEMPT``,
``GEOJOBS_WORKER_ID``, ``PRIORITY``, ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``); a traceback
stays inside its entry's ``MESSAGE``. The protocol is spoken by ``logging-journald`` (pure
Python; see docs/operations.md). ``GEOJOBS_LOG=stderr`` forces plain lines.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from logging_journald import JournaldTransport

__all__ = ["setup_logging", "set_worker", "job_fields", "current_fields", "JournalHandler",
           "log_file_path", "JOURNAL_SOCKET"]

JOURNAL_SOCKET = "/run/systemd/journal/socket"
"""Where journald listens for native-protocol datagrams (``GEOJOBS_JOURNAL_SOCKET`` overrides)."""

PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
            logging.CRITICAL: 2}
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s%(geojobs_job)s: %(message)s"

_lock = threading.Lock()
_worker: dict[str, str] = {}
_job: dict[str, str] = {}


def set_worker(worker_id: str, job_type: str) -> None:
    """Name the worker this process is, for every record from now on."""
    with _lock:
        _worker.clear()
        _worker.update(GEOJOBS_WORKER_ID=worker_id, GEOJOBS_JOB_TYPE=job_type)


@contextmanager
def job_fields(job_id: int, job_type: str, attempt: int, worker_id: str) -> Iterator[None]:
    """Tag every record logged inside the block (from any thread) with this job's fields."""
    with _lock:
        _job.clear()
        _job.update(GEOJOBS_JOB_ID=str(job_id), GEOJOBS_JOB_TYPE=job_type,
                    GEOJOBS_ATTEMPT=str(attempt), GEOJOBS_WORKER_ID=worker_id)
    try:
        yield
    finally:
        with _lock:
            _job.clear()


def current_fields() -> dict[str, str]:
    """The worker's and the current job's fields, as journald field names."""
    with _lock:
        return {**_worker, **_job}


class _JobFilter(logging.Filter):
    """Puts the current fields on each record (``geojobs_fields``, ``geojobs_job`` for text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "geojobs_fields"):
            fields = current_fields()
            record.geojobs_fields = fields
            job_id = fields.get("GEOJOBS_JOB_ID")
            record.geojobs_job = (f" [job {job_id} attempt {fields['GEOJOBS_ATTEMPT']}]"
                                  if job_id else "")
        return True


class JournalHandler(logging.Handler):
    """Sends each record to journald as one entry of the native protocol.

    Unconnected: every datagram is addressed to the socket path, the way libsystemd's
    ``sd_journal_sendv`` does, so a restarted journald (a new socket file) is found again.
    Payloads too large for one datagram travel as a sealed memfd (done by the transport).
    """

    def __init__(self, socket_path: str | None = None, identifier: str = "geojobs") -> None:
        super().__init__()
        self.socket_path = socket_path or os.environ.get("GEOJOBS_JOURNAL_SOCKET") or JOURNAL_SOCKET
        self.identifier = identifier
        self.transport = JournaldTransport(socket_path=self.socket_path, connected=False)
        self.addFilter(_JobFilter())

    def fields(self, record: logging.LogRecord) -> list[tuple[str, Any]]:
        """The entry's fields: message (traceback included), priority, code location, job."""
        pairs: list[tuple[str, Any]] = [
            ("MESSAGE", self.format(record)),
            ("PRIORITY", PRIORITY.get(record.levelno, 6)),
            ("SYSLOG_IDENTIFIER", self.identifier),
            ("CODE_FILE", record.pathname),
            ("CODE_LINE", record.lineno),
            ("CODE_FUNC", record.funcName),
            ("LOGGER", record.name),
            ("THREAD_NAME", record.threadName),
        ]
        if record.exc_info and record.exc_info[0] is not None:
            pairs.append(("EXCEPTION_TYPE", record.exc_info[0].__name__))
        pairs.extend(getattr(record, "geojobs_fields", {}).items())
        return pairs

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.transport.send(self.fields(record))
        except Exception:  # noqa: BLE001 - logging must never stop a worker
            self.handleError(record)

    def close(self) -> None:
        self.transport.socket.close()
        super().close()


def _use_journal() -> bool:
    """journald when asked or started by systemd, and only if its socket is there."""
    choice = os.environ.get("GEOJOBS_LOG", "").strip().lower()
    if choice in ("stderr", "plain"):
        return False
    if choice != "journal" and not os.environ.get("JOURNAL_STREAM"):
        return False
    return os.path.exists(os.environ.get("GEOJOBS_JOURNAL_SOCKET") or JOURNAL_SOCKET)


def log_file_path(job_type: str, log_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<dir>/worker_<type>.log``: the directory given, else ``GEOJOBS_LOG_DIR``, else ``logs``."""
    base = log_dir or os.environ.get("GEOJOBS_LOG_DIR") or "logs"
    return Path(base) / f"worker_{job_type}.log"


def setup_logging(job_type: str, *, log_file: bool = False, level: int = logging.INFO) -> Path | None:
    """Route the root logger: journald or stderr, plus ``worker_<type>.log`` when asked.

    The file is written when ``log_file`` is true or ``GEOJOBS_LOG_DIR`` is set, through a
    :class:`~logging.handlers.WatchedFileHandler`, which reopens the file after logrotate has
    moved it. Returns the log file's path, if any.
    """
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    plain = logging.Formatter(PLAIN_FORMAT)
    main: logging.Handler
    if _use_journal():
        main = JournalHandler(identifier=f"geojobs-{job_type}")
        main.setFormatter(logging.Formatter("%(message)s"))
    else:
        main = logging.StreamHandler(sys.stderr)
        main.addFilter(_JobFilter())
        main.setFormatter(plain)
    root.addHandler(main)
    path = None
    if log_file or os.environ.get("GEOJOBS_LOG_DIR"):
        path = log_file_path(job_type)
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.WatchedFileHandler(path)
        file_handler.addFilter(_JobFilter())
        file_handler.setFormatter(plain)
        root.addHandler(file_handler)
    return path

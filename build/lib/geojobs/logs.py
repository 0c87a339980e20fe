"""Worker logging: one line per job event, with journald priority prefixes under systemd."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["setup_logging"]

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _JournaldFormatter(logging.Formatter):
    """Prefixes each line with ``<N>`` so journald records the syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in text.splitlines())


def setup_logging(job_type: str, *, log_file: bool = False, level: int = logging.INFO) -> None:
    """Log to stderr (journald-style when run by systemd) and optionally to logs/worker_<type>.log."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        stream.setFormatter(_JournaldFormatter("%(name)s: %(message)s"))
    else:
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(stream)
    if log_file:
        path = Path("logs") / f"worker_{job_type}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)

"""systemd's notify protocol (sd_notify(3)) in a few lines, without a dependency.

A unit with ``Type=notify`` waits for ``READY=1``; with ``WatchdogSec=`` it kills and restarts a
service that stops sending ``WATCHDOG=1``. Outside systemd (no ``$NOTIFY_SOCKET``) every call is
a no-op, so the worker runs the same under supervisord, in a terminal or in the tests.
"""

from __future__ import annotations

import os
import socket
import threading
import time

__all__ = ["notify", "watchdog"]

_lock = threading.Lock()
_last_watchdog = 0.0


def _address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return None
    return "\0" + address[1:] if address[0] == "@" else address  # '@': abstract namespace


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``, ``"STATUS=idle"``) to systemd; True if sent."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError:
        return False  # systemd gone or the socket not ours: never fail a worker for this
    return True


def watchdog(*states: str, min_interval: float = 1.0) -> bool:
    """Pet the watchdog (at most once per ``min_interval`` seconds) with optional states."""
    global _last_watchdog
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return False  # the watchdog is meant for another process
    with _lock:
        now = time.monotonic()
        if now - _last_watchdog < min_interval and not states:
            return False
        _last_watchdog = now
    return notify("WATCHDOG=1", *states)

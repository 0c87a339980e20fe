"""A compiled busy loop: the diagnostic of a job stuck in native code that never returns to
Python (the ``noop`` job type's ``spin_seconds``). Nothing cooperative can stop it."""

from __future__ import annotations

import time

import numba

__all__ = ["spin"]


@numba.njit(cache=True, nogil=False)
def _count_until(deadline_ns: int) -> int:  # pragma: no cover - compiled
    """Spin in machine code until the monotonic clock passes ``deadline_ns``."""
    n = 0
    x = 1.0
    while True:
        for _ in range(1_000_000):
            x = x * 1.0000001 + 1e-9
            n += 1
        with numba.objmode(now="int64"):
            now = time.monotonic_ns()
        if now >= deadline_ns:
            return n + int(x > 0)


def spin(seconds: float) -> int:
    """Burn one core in numba-compiled code for ``seconds``; returns the iterations."""
    return int(_count_until(time.monotonic_ns() + int(seconds * 1e9)))

"""uvicorn's HTTP protocol writing a response's head together with its body.

uvicorn writes the status line and headers (``http.response.start``) and then the body as two
socket writes: the client wakes up twice per response, and on a loaded machine each wake-up
waits for a core. :class:`CoalescingHttpProtocol` holds a response head until the next write
(the body, usually in the same step of the event loop) and sends both at once; a head with no
write after it in that step is sent at the loop's next step, so nothing waits longer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpProtocol"]

_HEAD = b"HTTP/1."


class _CoalescingTransport:
    """A transport that holds a response head (a write starting with ``HTTP/1.``) until the
    next write, close, or the event loop's next step; everything else is the real transport's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held + bytes(data))
        elif bytes(data[:len(_HEAD)]) == _HEAD:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now."""
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`_CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]

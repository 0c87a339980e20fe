"""A minimal HTTP/1.1 keep-alive client for load generation: prebuilt request bytes, one
socket per client, responses framed by ``Content-Length``.

The API benchmark asks what the API adds over direct SQL, so its client should cost as little
as the SQL side's. httpx spends about as much CPU per request in the client as the server
spends answering it, on the same two cores; this client spends a few tens of microseconds.
It understands only what the geojobs API sends back to these requests (a status line,
headers, a body with ``Content-Length``), and raises on anything else.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

__all__ = ["Response", "request_bytes", "BlockingClient", "AsyncClient"]


@dataclass(frozen=True)
class Response:
    """A response: status code, headers (names in lower case) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


def request_bytes(method: str, path: str, host: str, headers: dict[str, str] | None = None,
                  body: bytes = b"") -> bytes:
    """One HTTP/1.1 request, ready to send."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _head(raw: bytes) -> tuple[int, dict[str, str], int]:
    """(status, headers, content length) of a response head (without the blank line)."""
    status_line, *header_lines = raw.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is None:
        raise ValueError(f"response without Content-Length: {status_line}")
    return status, headers, int(length)


class BlockingClient:
    """One keep-alive connection, one request at a time (for sequential latency)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def send(self, request: bytes) -> Response:
        """Send a prebuilt request and read its response."""
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self._buf:
            self._fill()
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        status, headers, length = _head(head)
        while len(self._buf) < length:
            self._fill()
        body, self._buf = self._buf[:length], self._buf[length:]
        return Response(status, headers, body)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buf += chunk

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


class AsyncClient:
    """One keep-alive connection on asyncio streams, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int) -> AsyncClient:
        """Open a connection (TCP_NODELAY, as uvicorn and libpq set on theirs)."""
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def send(self, request: bytes) -> Response:
        """Send a prebuilt request and read its response."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, headers, length = _head(head[:-4])
        body = await self.reader.readexactly(length) if length else b""
        return Response(status, headers, body)

    async def close(self) -> None:
        """Close the connection."""
        self.writer.close()
        await self.writer.wait_closed()

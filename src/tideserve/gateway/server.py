"""The HTTP/1.1 server of `tideserve gateway`: asyncio protocols with httptools parsing requests.

It exists for one reason: the engine's streamed chunks can go to the client's socket from inside the
upstream protocol's callback (`write_nowait`), with no ASGI message, task switch or framework layer per
chunk. Requests on one connection are answered in order (HTTP/1.1 pipelining); `Expect: 100-continue`
is honoured; a body over the limit is refused with 413 before it is read whole."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httptools

from tideserve.gateway.downstream import Downstream, Headers

log = logging.getLogger(__name__)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None  # None: larger than the server's limit
    keep_alive: bool


App = Callable[[Request, Downstream], Awaitable[None]]


@functools.cache
def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


def _head(status: int, headers: Headers, framing: bytes) -> bytes:
    parts = [_status_line(status)]
    parts += [name + b": " + value + b"\r\n" for name, value in headers]
    parts.append(framing)
    return b"".join(parts)


class ClientConnection(asyncio.Protocol, Downstream):
    def __init__(self, app: App, max_body: int, connections: set[ClientConnection]) -> None:
        self.app, self.max_body, self.connections = app, max_body, connections
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[Request] = deque()
        self.busy = False
        self.closing = False
        self.disconnected = asyncio.get_running_loop().create_future()
        self.write_nowait = self._write_chunk
        self._out: list[bytes] = []
        self._drained: asyncio.Event | None = None
        # The relay pauses the engine's connection while this client cannot keep up.
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, b"protocol upgrades are not supported")
        except httptools.HttpParserError:
            self._reject(400, b"malformed HTTP request")

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.closing = True
        if not self.disconnected.done():
            self.disconnected.set_result(None)
        if self._drained is not None:
            self._drained.set()

    def pause_writing(self) -> None:
        self._drained = asyncio.Event()
        if self.on_pause is not None:
            self.on_pause()

    def resume_writing(self) -> None:
        if self._drained is not None:
            self._drained.set()
            self._drained = None
        if self.on_resume is not None:
            self.on_resume()

    # --- httptools callbacks ------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            length = self._headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body:
                return  # the 413 goes out instead of 100; the body is skipped as it comes
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= self.max_body:
            self._body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        body = b"".join(self._body) if self._size <= self.max_body else None
        self.pending.append(Request(method, path, self._headers, body, self.parser.should_keep_alive()))
        self._reset_message()
        if not self.busy:
            self._next()

    # --- serving ------------------------------------------------------------------------------------

    def _next(self) -> None:
        if self.closing or not self.pending:
            self.busy = False
            return
        self.busy = True
        request = self.pending.popleft()
        self._keep_alive = request.keep_alive
        task = asyncio.get_running_loop().create_task(self._serve(request))
        task.add_done_callback(_log_crash)

    async def _serve(self, request: Request) -> None:
        self._started = False
        try:
            await self.app(request, self)
        except Exception:
            log.exception("gateway request failed")
            if not self._started:
                await self.respond(500, [(b"content-type", b"text/plain")], b"internal error")
            else:
                self._close()
            return
        if not self._started and not self.closing:
            await self.respond(500, [(b"content-type", b"text/plain")], b"no response")

    def _reject(self, status: int, message: bytes) -> None:
        if self.transport is not None and not self.closing:
            self._keep_alive = False
            self.transport.write(
                _head(
                    status, [(b"content-type", b"text/plain")], b"content-length: %d\r\n\r\n" % len(message)
                )
                + message
            )
            self._close()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _finish(self) -> None:
        if not self._keep_alive:
            self._close()
        else:
            self._next()

    # --- Downstream ---------------------------------------------------------------------------------

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        self._started = True
        if self.transport is None or self.closing:
            return
        close = b"" if self._keep_alive else b"connection: close\r\n"
        framing = b"content-length: %d\r\n%b\r\n" % (len(body), close)
        self.transport.write(_head(status, headers, framing) + body)
        self._finish()

    async def start(self, status: int, headers: Headers) -> None:
        # The head waits for the first chunk so that both leave in one write (one system call less).
        self._started = True
        close = b"" if self._keep_alive else b"connection: close\r\n"
        self._out = [_head(status, headers, b"transfer-encoding: chunked\r\n" + close + b"\r\n")]

    def _write_chunk(self, data: bytes) -> None:
        if data:
            self._out.append(b"%x\r\n%b\r\n" % (len(data), data))

    def flush(self) -> None:
        """Everything written since the last flush goes out in one write: what one read from the
        engine produced (often several events), or the head with the first chunk."""
        if self._out:
            if self.transport is not None and not self.closing:
                self.transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
            self._out = []

    async def write(self, data: bytes) -> None:
        self._write_chunk(data)
        self.flush()
        if self._drained is not None:
            await self._drained.wait()

    async def end(self) -> None:
        self._out.append(b"0\r\n\r\n")
        self.flush()
        if not self.closing:
            self._finish()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("connection task crashed", exc_info=task.exception())


async def serve(
    app: App, host: str, port: int, max_body: int, connections: set[ClientConnection]
) -> asyncio.Server:
    def connection() -> ClientConnection:
        conn = ClientConnection(app, max_body, connections)
        connections.add(conn)
        return conn

    loop = asyncio.get_running_loop()
    return await loop.create_server(connection, host, port, backlog=2048)


async def run(app: App, host: str, port: int, max_body: int, drain_s: float = 30.0) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting and give open requests `drain_s` to finish."""
    connections: set[ClientConnection] = set()
    server = await serve(app, host, port, max_body, connections)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    deadline = loop.time() + drain_s
    while any(c.busy for c in connections) and loop.time() < deadline:
        await asyncio.sleep(0.1)

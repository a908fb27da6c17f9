"""The client side of a gateway request, whichever server carries it.

`tideserve gateway` serves clients with its own httptools-based server (`server.py`), whose
`write_nowait` lets the engine's chunks go from socket to socket inside one callback. Inside
`tideserve up` the gateway shares uvicorn with the control plane and speaks ASGI (`AsgiDownstream`):
the same logic, one task switch more per chunk."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Headers = list[tuple[bytes, bytes]]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected: stop, answer nobody."""


class Downstream:
    """One response to one client. `disconnected` resolves when the client leaves."""

    disconnected: asyncio.Future[None]
    # Set by servers that can take body chunks synchronously (no task switch per chunk); what
    # `write_nowait` took goes out at the next `flush`.
    write_nowait: Callable[[bytes], None] | None = None

    def flush(self) -> None:
        pass

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        raise NotImplementedError

    async def start(self, status: int, headers: Headers) -> None:
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def end(self) -> None:
        raise NotImplementedError


class AsgiDownstream(Downstream):
    def __init__(self, receive: Receive, send: Send) -> None:
        self.receive, self.send = receive, send
        self.disconnected = asyncio.get_running_loop().create_future()
        self._watcher: asyncio.Task[None] | None = None

    async def read_body(self, limit: int) -> bytes | None:
        """The request body, or None when it exceeds `limit` bytes."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        # The body is in: from here on `receive` only reports the client leaving.
        self._watcher = asyncio.create_task(self._watch())
        return b"".join(chunks)

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        if not self.disconnected.done():
            self.disconnected.set_result(None)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def start(self, status: int, headers: Headers) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

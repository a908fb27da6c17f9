"""Runs `EngineCore` on its own thread and hands results to asyncio request handlers.

The model step holds no lock the event loop needs (torch releases the GIL in its kernels), so
HTTP parsing and streaming proceed while a step runs. Commands reach the engine thread through
a queue and run between steps; results come back in one batch per step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable

from tideserve.engine.core import EngineCore, RequestOutput
from tideserve.engine.sequence import SamplingParams

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


class AsyncEngine:
    def __init__(self, core: EngineCore, loop: asyncio.AbstractEventLoop) -> None:
        self.core = core
        self._loop = loop
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._stopping = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self.error is None and self._thread.is_alive()

    def _submit(self, command: Callable[[], None]) -> None:
        self._inbox.put(command)
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, priority: int = 0
    ) -> AsyncIterator[RequestOutput]:
        if not self.alive:
            raise EngineDeadError("the engine has stopped") from self.error
        stream: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._streams[request_id] = stream
        finished = False

        def add() -> None:
            try:
                self.core.add_request(request_id, prompt_token_ids, params, priority)
            except ValueError as e:  # checked by the server first; a race is still an answer
                self._loop.call_soon_threadsafe(stream.put_nowait, e)

        self._submit(add)
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:  # client went away or the handler failed: free the slot now
                self._submit(lambda: self.core.abort(request_id))

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put_nowait(out)

    def _fail_all(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.put_nowait(EngineDeadError(f"the engine failed: {error}"))

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._wake.clear()
                while True:
                    try:
                        self._inbox.get_nowait()()
                    except queue.Empty:
                        break
                if not self.core.has_work():
                    self._wake.wait()
                    continue
                outputs = self.core.step()
                if outputs:
                    self._loop.call_soon_threadsafe(self._dispatch, outputs)
        except BaseException as e:  # the engine is unusable now; say so to every waiter
            log.exception("engine loop failed")
            self.error = e
            self._loop.call_soon_threadsafe(self._fail_all, e)

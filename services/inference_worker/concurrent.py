"""Running a subscription's messages concurrently, boundedly, and stopping them cleanly.

nats-py awaits a subscription's callback before it delivers the next message, so a
handler awaited there serves one request at a time: concurrent callers' requests would
never meet in Triton's dynamic batcher or the engine's embedding batch. `Concurrent`
runs each message's handler as a task of its own instead, at most `limit` at once (the
next message waits in NATS for a place), logs what a handler fails with — nobody else
would see it: the requester only times out — and at shutdown waits, then cancels.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg

log = logging.getLogger("llmos.worker")

Handler = Callable[[Msg], Coroutine[Any, Any, None]]


class Concurrent:
    """Handlers as tasks, at most `limit` at once."""

    def __init__(self, limit: int) -> None:
        self._places = asyncio.Semaphore(limit)
        self._running: set[asyncio.Task[None]] = set()

    def __call__(self, handler: Handler) -> Handler:
        """A subscription callback running `handler` as a task per message."""

        async def on_message(msg: Msg) -> None:
            await self._places.acquire()
            task = asyncio.create_task(handler(msg))
            self._running.add(task)
            task.add_done_callback(self._finished)

        return on_message

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._places.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("a request's handler failed", exc_info=task.exception())

    @property
    def running(self) -> list[asyncio.Task[None]]:
        return list(self._running)

    async def close(self, grace_s: float) -> None:
        """Wait up to `grace_s` for the running handlers; cancel those still running."""
        if self._running:
            await asyncio.wait(self.running, timeout=grace_s)
        left = self.running
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)

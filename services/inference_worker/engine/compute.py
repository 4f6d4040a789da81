"""The compute thread: the one thread per process that runs torch.

Why one: PyTorch's CPU kernels parallelise with OpenMP (libgomp), which keeps a thread
pool per calling thread. As soon as a second thread has a pool, the pools together
outnumber the cores and libgomp stops spinning between parallel regions; every small
op then pays a futex wake-up. Measured here (2 cores): a KV-cache index_put took 19 us
with one torch thread and 159 us once another thread had used torch, and a decode step
at batch 32 went from ~150 ms to ~220 ms. So every engine step, model load, embedding
and classification forward runs on this thread, and callers wait on futures.

Even alone, a non-main thread ran a decode step ~25% slower than the process's main
thread (130 vs 165 ms), so the inference worker runs this loop on its main thread
(`run()`) and its asyncio service beside it; tests and tools may use `start()`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

import torch

log = logging.getLogger("llmos.compute")

T = TypeVar("T")


class Steppable(Protocol):
    """Something with iterations to run (an Engine)."""

    def has_work(self) -> bool:
        """Whether step() would do anything."""
        ...

    def step(self) -> None:
        """Run one iteration."""
        ...


class ComputeLoop:
    """Runs submitted jobs and the steps of attached engines on a single thread."""

    def __init__(self, name: str = "llmos-compute") -> None:
        self._name = name
        self._jobs: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._engines: list[Steppable] = []
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        """Run the loop in a new thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish queued jobs, then end the loop (and join its thread if start() made one)."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None

    def wake(self) -> None:
        """Look for work now (engines call this when a request arrives)."""
        with self._ready:
            self._ready.notify()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the compute thread; its result or exception lands in the future."""
        future: Future[T] = Future()
        with self._ready:
            if self._stopping:
                raise RuntimeError("the compute loop is stopped")
            self._jobs.append((fn, future))
            self._ready.notify()
        return future

    def attach(self, engine: Steppable) -> None:
        """Step `engine` whenever it has work."""
        with self._ready:
            self._engines.append(engine)
            self._ready.notify()

    def detach(self, engine: Steppable) -> None:
        """Stop stepping `engine`."""
        with self._ready:
            if engine in self._engines:
                self._engines.remove(engine)

    def _has_work(self) -> bool:
        return bool(self._jobs) or any(e.has_work() for e in self._engines)

    def run(self) -> None:
        """The loop itself, on the calling thread, until stop()."""
        torch.set_grad_enabled(False)
        while True:
            with self._ready:
                while not self._stopping and not self._has_work():
                    self._ready.wait()
                if self._stopping and not self._jobs:
                    return
                jobs = list(self._jobs)
                self._jobs.clear()
                engines = list(self._engines)
            for fn, future in jobs:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:
                        future.set_exception(exc)
            for engine in engines:
                if engine.has_work():
                    try:
                        engine.step()
                    except Exception:  # the engine reports to its requests; keep serving
                        log.exception("engine step failed")

"""What an inference worker counts for Prometheus: its slots in use, for each LLM it
serves how full the engine is (running and waiting sequences, KV cache usage), asked of
the engine inside Triton every few seconds (the `stats` task) rather than at scrape
time, so a scrape never waits on Triton; and for each task model (entities,
translation) the requests Triton's dynamic batcher gathered into how many batches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import Gauge

from llmos.errors import LLMOSError
from services.inference_worker.client import TritonLLMClient

log = logging.getLogger("llmos.worker.metrics")

STATS_TIMEOUT_S = 2.0

SLOTS_IN_USE = Gauge("llmos_worker_slots_in_use", "Generations this worker runs now.")
KV_CACHE_USAGE = Gauge(
    "llmos_kv_cache_usage_ratio",
    "Share of the engine's KV cache positions running sequences hold, 0 to 1.",
    ["model"],
)
TASK_REQUESTS = Gauge(
    "llmos_task_requests",
    "Requests a task model answered since it loaded (Triton's inference count).",
    ["model"],
)
TASK_BATCHES = Gauge(
    "llmos_task_batches",
    "Batches a task model ran them in (Triton's execution count): requests / batches is "
    "the mean batch size dynamic batching achieves.",
    ["model"],
)
ENGINE_SEQUENCES = Gauge(
    "llmos_engine_sequences",
    "Sequences in the engine's batch (running) or queued for it (waiting).",
    ["model", "state"],
)


async def watch_engines(
    client: TritonLLMClient,
    models: Callable[[], list[str]],
    tasks: Callable[[], list[str]],
    busy: Callable[[], int],
    every_s: float,
) -> None:
    """Refresh the gauges every `every_s` until cancelled. A model whose engine does not
    answer (in time) leaves the metrics rather than show old numbers, as does one that
    no longer serves."""
    shown: set[str] = set()
    counted: set[str] = set()
    while True:
        SLOTS_IN_USE.set(busy())
        counted = await _count_batches(client, tasks(), counted)
        answered: set[str] = set()
        for model in models():
            try:
                load = await asyncio.wait_for(client.stats(model), STATS_TIMEOUT_S)
            except (LLMOSError, TimeoutError) as exc:
                log.debug("engine stats unavailable", extra={"model": model, "error": str(exc)})
                continue
            KV_CACHE_USAGE.labels(model).set(load.kv_cache_usage_ratio)
            ENGINE_SEQUENCES.labels(model, "running").set(load.running)
            ENGINE_SEQUENCES.labels(model, "waiting").set(load.waiting)
            answered.add(model)
        for model in shown - answered:
            KV_CACHE_USAGE.remove(model)
            ENGINE_SEQUENCES.remove(model, "running")
            ENGINE_SEQUENCES.remove(model, "waiting")
        shown = answered
        await asyncio.sleep(every_s)


async def _count_batches(client: TritonLLMClient, models: list[str], shown: set[str]) -> set[str]:
    """Set the task models' batch gauges; the models that have them now."""
    answered: set[str] = set()
    for model in models:
        try:
            requests, batches = await asyncio.wait_for(client.batch_counts(model), STATS_TIMEOUT_S)
        except (LLMOSError, TimeoutError, IndexError) as exc:
            log.debug("batch statistics unavailable", extra={"model": model, "error": str(exc)})
            continue
        TASK_REQUESTS.labels(model).set(requests)
        TASK_BATCHES.labels(model).set(batches)
        answered.add(model)
    for model in shown - answered:
        TASK_REQUESTS.remove(model)
        TASK_BATCHES.remove(model)
    return answered

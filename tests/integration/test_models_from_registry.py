"""The default model lives in the registry and workers load it from there: published once
(as the first worker does after importing the shipped GGUF), a worker with an empty models
directory downloads it from storage, byte for byte, and serves it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis

from llmos.cli.transfer import file_digest
from llmos.health import SERVING, check_health
from llmos.model.names import DEFAULT_MODEL
from llmos.modelstore import ModelStore
from llmos.ports import free_port
from llmos.registry import ServiceRegistry
from llmos.v1 import storage_pb2
from tests.conftest import ROOT
from tests.integration.test_storage import start_storage
from tools.devstack.infra import RedisServer


async def test_a_worker_with_no_models_loads_the_default_model_from_the_registry(
    service_env: dict[str, str], redis_server: RedisServer, model_folder: Path, tmp_path: Path
) -> None:
    storage = await asyncio.to_thread(start_storage, service_env, tmp_path / "store")
    worker = None
    try:
        registry = ServiceRegistry(aioredis.Redis.from_url(redis_server.url), ttl_s=5)
        store = ModelStore(registry)
        version = await store.publish(DEFAULT_MODEL, model_folder, {"source": "test"})
        assert version == 1
        assert await store.publish(DEFAULT_MODEL, model_folder, {}) == 0  # there already
        registered = storage.stub().GetModelVersion(
            storage_pb2.GetModelVersionRequest(tenant="system", model=DEFAULT_MODEL)
        )
        assert registered.aliases == ["production"]
        assert registered.metadata["architecture"] == "LlamaForCausalLM"
        # a tenant sees the shared model too
        seen = storage.stub().GetModelVersion(
            storage_pb2.GetModelVersionRequest(
                tenant="lab-a", model=DEFAULT_MODEL, alias="production"
            )
        )
        assert seen.version == 1

        empty = tmp_path / "worker-models"
        address = f"127.0.0.1:{free_port()}"
        worker = subprocess.Popen(  # noqa: ASYNC220 - starting a child does not block the loop
            [sys.executable, "-m", "services.inference_worker"],
            cwd=ROOT,
            env={**service_env, "LLMOS_MODELS_DIR": str(empty), "LLMOS_LISTEN_ADDR": address},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 240
        while (await check_health(address, timeout_s=1))[0] != SERVING:
            assert worker.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the worker did not start"
            await asyncio.sleep(0.5)
        fetched = empty / DEFAULT_MODEL
        assert json.loads((fetched / "registry.json").read_text()) == {
            "model": DEFAULT_MODEL, "version": 1
        }  # fmt: skip
        for name, sha256 in registered.files.items():
            assert file_digest(fetched / name) == sha256 == file_digest(model_folder / name)
        assert not list(empty.glob(".partial-*"))
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(60)
        storage.stop()

"""The default model lives in the registry and workers load it from there: published once
(as the first worker does after importing the shipped GGUF), a worker with an empty models
directory downloads it from storage, byte for byte, and serves it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import redis.asyncio as aioredis

from llmos.cli.transfer import file_digest
from llmos.links import Links
from llmos.model.names import DEFAULT_MODEL
from llmos.modelstore import ModelStore, content_digest
from llmos.registry import ServiceRegistry
from llmos.v1 import storage_pb2
from tests.integration.storage_client import start_storage
from tools.devstack.infra import RedisServer
from tools.harness import start_service
from tools.standin import identity_for


async def test_a_worker_with_no_models_loads_the_default_model_from_the_registry(
    service_env: dict[str, str], redis_server: RedisServer, model_folder: Path, tmp_path: Path
) -> None:
    # storage's registration outlives a second or two of starvation on a busy machine
    # (3 heartbeats of 0.5 s expired once while the other test worker ran a browser):
    # this test is about the registry's contents, not about noticing a lost service
    steady = {**service_env, "LLMOS_HEARTBEAT_S": "2"}
    storage = await asyncio.to_thread(start_storage, steady, tmp_path / "store")
    with contextlib.ExitStack() as stack:
        stack.callback(storage.stop)
        registry = ServiceRegistry(aioredis.Redis.from_url(redis_server.url), ttl_s=5)
        # publishing as the first worker does: in its own name
        as_worker = identity_for(redis_server.secrets_dir, "inference-worker")
        store = ModelStore(Links(registry, as_worker))
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
        worker = await asyncio.to_thread(
            start_service,
            "services.inference_worker",
            {**service_env, "LLMOS_MODELS_DIR": str(empty)},
            tmp_path / "logs",
            timeout=240,
        )
        stack.callback(worker.stop)
        fetched = empty / DEFAULT_MODEL
        assert json.loads((fetched / "registry.json").read_text()) == {
            "tenant": "system", "model": DEFAULT_MODEL, "version": 1,
            "digest": content_digest(registered),
        }  # fmt: skip
        for name, sha256 in registered.files.items():
            assert file_digest(fetched / name) == sha256 == file_digest(model_folder / name)
        assert not list(empty.glob(".partial-*"))

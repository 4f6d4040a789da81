"""What a job reads and what it leaves: its dataset and base model, fetched from the
tenant's storage before it runs, and its trained weights, registered afterwards as a new
model version with its lineage.

A base model is looked up as the job's tenant sees the registry (its own, then the
`system` tenant's) and cached per owner, version and content (`cache_folder`): another
tenant's private model of the same name is, to this job, a model that does not exist,
and no job can read or overwrite what another tenant's job fetched."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from llmos.errors import DataLoss, NotFound, Unavailable
from llmos.model.names import has_model
from llmos.modelstore import ModelStore, cache_folder
from llmos.v1 import scheduler_pb2, storage_pb2
from services.trainer.outcome import model_name

#: how long a job waits for a registry that is unreachable for a moment (a storage
#: restart, a missed heartbeat) before its attempt fails
REGISTRY_WAIT_S = 30.0


async def registered(store: ModelStore, model: str) -> storage_pb2.ModelVersion:
    """The version of `model` to start from: NotFound if the tenant sees no such model
    (the same answer whether it is absent or another tenant's); an unreachable registry
    is asked again for a while, and then said to be unreachable, never "not there"."""
    deadline = time.monotonic() + REGISTRY_WAIT_S
    wait = 0.25
    while True:
        try:
            version = await store.version(model)
        except Unavailable:
            if time.monotonic() + wait > deadline:
                raise
            await asyncio.sleep(wait)
            wait = min(wait * 2, 4.0)
            continue
        if version is None:
            raise NotFound(f"model {model!r} is not in the registry")
        return version


@dataclass(frozen=True)
class Inputs:
    """Where the program finds what the job reads ("" for what it does not use)."""

    text_file: str = ""
    base_model_dir: str = ""


async def fetch_inputs(
    job: scheduler_pb2.Job, store: ModelStore, directory: Path, models_dir: Path
) -> Inputs:
    """Fetch the job's dataset (into its directory) and base model (into the models
    directory's cache, if not there yet)."""
    config = MessageToDict(job.spec.config)
    text_file = ""
    if config.get("dataset"):
        dataset = await store.dataset(str(config["dataset"]))
        target = directory / "dataset.txt"
        if await store.download(job.tenant, dataset.sha256, target) != dataset.sha256:
            raise DataLoss(f"dataset {dataset.name!r} did not match its digest")
        text_file = str(target)
    base = str(config.get("base_model", ""))
    if not base:
        return Inputs(text_file)
    version = await registered(store, base)
    folder = models_dir / cache_folder(version)
    if not has_model(folder):
        await store.fetch_version(version, folder)
    return Inputs(text_file, str(folder))


async def register_result(job: scheduler_pb2.Job, store: ModelStore, output: Path) -> str:
    """The trained model as a new version in the job's tenant, with its lineage;
    returns `name@version`."""
    config = MessageToDict(job.spec.config)
    name = str(config.get("output_model") or model_name(job.spec.name))
    lineage: dict[str, Any] = {
        "job": job.job_id,
        "config": {k: v for k, v in config.items() if k != "text"},
    }
    base = str(config.get("base_model", ""))
    if base:
        parent = await store.version(base)
        lineage["parent"] = f"{base}@{parent.version}" if parent else base
    if config.get("dataset"):
        dataset = await store.dataset(str(config["dataset"]))
        lineage["dataset"] = {"name": dataset.name, "sha256": dataset.sha256}
    method = "full" if base else "from scratch"
    if config.get("method") == "lora":
        method = f"LoRA rank {int(config.get('lora_rank', 8))}, merged into the weights"
    metadata = {
        "method": method,
        "tokenizer": "tokenizer.json" if base else "bytes (no tokenizer file)",
    }
    version = await store.register(name, output, lineage, metadata)
    return f"{name}@{version}"

"""The model registry: numbered, immutable versions of a tenant's models, and aliases
(`prod`, `staging`) that move between them.

A version names its files by blob digest and carries metadata; a Hugging Face
`config.json` among the files is read to describe the model (architecture, context length,
parameter count), and what the caller sent wins over what was read. Lookups try the
caller's own models first, then the `system` tenant's, which every tenant may read (the
shipped default model lives there); changes touch the caller's own only.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmos.errors import FailedPrecondition, InvalidArgument, NotFound
from llmos.model.limits import MAX_CONFIG_BYTES, parse_config, too_large
from llmos.model.tasks import TASK_FILE, parse_task
from llmos.training import parameter_count
from services.storage.checks import (
    check_document,
    check_file_path,
    check_name,
    check_sha256,
    check_tenant,
)
from services.storage.metadata import VersionRow
from services.storage.store import SYSTEM_TENANT, Store

CONFIG_FIELD = "files[config.json]"


class Registry:
    """Model versions and aliases of each tenant, with read access to the system's."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(
        self,
        tenant: str,
        model: str,
        files: dict[str, str],
        metadata: dict[str, Any],
        lineage: dict[str, Any],
    ) -> VersionRow:
        """The next version of `model`, over files already uploaded."""
        tenant = check_tenant(tenant)
        model = check_name(model, "model")
        if not files:
            raise InvalidArgument("files", "a model version needs at least one file")
        for path, sha256 in files.items():
            check_file_path(path, "files")
            check_sha256(sha256, f"files[{path}]")
            if self._store.meta.blob(tenant, sha256) is None:
                raise NotFound(f"files[{path}]: blob {sha256} does not exist; upload it first")
        metadata = check_document(metadata, "metadata")
        lineage = check_document(lineage, "lineage")
        if TASK_FILE in files:  # a task model: its engine's config.json is not an LLM's
            derived = await asyncio.to_thread(self._describe_task, tenant, files[TASK_FILE])
            metadata = {**metadata, **derived}  # what the task is, no caller may say otherwise
        elif "config.json" in files:
            derived = await asyncio.to_thread(self._describe, tenant, files["config.json"])
            metadata = {**derived, **metadata}
        async with self._store.lock:
            version = self._store.meta.add_version(tenant, model, files, metadata, lineage)
        self._store.record(tenant, "storage.model.create", f"model/{model}/{version}")
        return self._version(tenant, model, version)

    def _describe(self, tenant: str, config_sha256: str) -> dict[str, Any]:
        """Read the config blob no further than MAX_CONFIG_BYTES: its size is the
        tenant's to choose, this service's memory is everyone's."""
        blob = self._store.meta.blob(tenant, config_sha256)
        if blob is not None and blob.size > MAX_CONFIG_BYTES:
            raise InvalidArgument(CONFIG_FIELD, too_large(blob.size))
        raw = bytearray()
        for chunk in self._store.data(tenant, config_sha256):
            raw += chunk
            if len(raw) > MAX_CONFIG_BYTES:
                raise InvalidArgument(CONFIG_FIELD, too_large(len(raw)))
        return describe(bytes(raw))

    def _describe_task(self, tenant: str, sha256: str) -> dict[str, Any]:
        """A task model's metadata from its llmos-task.json (refused if it is not one)."""
        blob = self._store.meta.blob(tenant, sha256)
        if blob is not None and blob.size > MAX_CONFIG_BYTES:
            raise InvalidArgument(f"files[{TASK_FILE}]", too_large(blob.size))
        raw = b"".join(self._store.data(tenant, sha256))
        try:
            spec = parse_task(raw.decode("utf-8", errors="replace"))
        except ValueError as exc:
            raise InvalidArgument(f"files[{TASK_FILE}]", str(exc)) from None
        return {"task": spec.kind, "engine": spec.engine, "pairs": spec.pair_names()}

    def _version(self, tenant: str, model: str, version: int) -> VersionRow:
        row = self._store.meta.version(tenant, model, version)
        assert row is not None
        return row

    def find(self, tenant: str, model: str, version: int, alias: str) -> VersionRow:
        """The version asked for, by number, alias or latest (neither given); the
        caller's own models first, then the shared (system) ones."""
        tenant = check_tenant(tenant)
        model = check_name(model, "model")
        if version < 0:
            raise InvalidArgument("version", "must be positive")
        if alias:
            check_name(alias, "alias")
        meta = self._store.meta
        for owner in dict.fromkeys((tenant, SYSTEM_TENANT)):
            number = version
            if alias:
                number = meta.alias(owner, model, alias) or 0
                if not number:
                    continue
            elif not number:
                live = meta.versions(owner, model)
                if not live:
                    continue
                number = live[-1].version
            row = meta.version(owner, model, number)
            if row is None:
                continue
            if row.deleted:
                raise NotFound(f"version {number} of model {model!r} was deleted")
            return row
        what = f"alias {alias!r}" if alias else f"version {version}"
        if not alias and not version:
            what = "any version"
        raise NotFound(f"model {model!r} has no {what}")

    def list(self, tenant: str, model: str) -> list[VersionRow]:
        """Every version of `model` (the caller's, else the system's), or with no model
        named the latest version of each model the caller can read."""
        tenant = check_tenant(tenant)
        meta = self._store.meta
        if model:
            model = check_name(model, "model")
            return meta.versions(tenant, model) or meta.versions(SYSTEM_TENANT, model)
        rows: list[VersionRow] = []
        for owner in dict.fromkeys((tenant, SYSTEM_TENANT)):
            rows += [meta.versions(owner, m)[-1] for m in meta.models(owner)]
        return rows

    async def set_alias(self, tenant: str, model: str, alias: str, version: int) -> VersionRow:
        """Point `alias` at a live version of the tenant's own model."""
        tenant = check_tenant(tenant)
        model = check_name(model, "model")
        alias = check_name(alias, "alias")
        async with self._store.lock:
            row = self._store.meta.version(tenant, model, version)
            if row is None:
                raise NotFound(f"model {model!r} has no version {version}")
            if row.deleted:
                raise FailedPrecondition(
                    f"version {version} of model {model!r} was deleted; an alias cannot point at it"
                )
            previous = self._store.meta.set_alias(tenant, model, alias, version)
        self._store.record(
            tenant, "storage.model.alias", f"model/{model}@{alias}",
            f"moved from version {previous or 'none'} to {version}",
        )  # fmt: skip
        return self._version(tenant, model, version)

    async def delete(self, tenant: str, model: str, version: int, alias: str) -> VersionRow:
        """Delete one of the tenant's own versions, and the blobs only it used."""
        tenant = check_tenant(tenant)
        async with self._store.lock:
            row = self.find(tenant, model, version, alias)
            if row.tenant != tenant:
                raise NotFound(f"model {row.model!r} has no version of tenant {tenant!r}")
            self._store.meta.delete_version(tenant, row.model, row.version)
            for sha256 in set(row.files.values()):
                self._store.release(tenant, sha256)
        self._store.record(tenant, "storage.model.delete", f"model/{row.model}/{row.version}")
        return row


def describe(raw: bytes) -> dict[str, Any]:
    """Metadata read from a Hugging Face config.json, whose sizes are checked first
    (`llmos.model.limits`): a version no worker could load is refused now."""
    config = parse_config(raw, CONFIG_FIELD)
    hidden = config.get("hidden_size")
    layers = config.get("num_hidden_layers")
    vocab = config.get("vocab_size")
    described: dict[str, Any] = {
        "architecture": (config.get("architectures") or [config.get("model_type", "")])[0],
        "context_length": config.get("max_position_embeddings"),
        "quantization": (config.get("quantization_config") or {}).get("quant_method", "none"),
        "tokenizer": "tokenizer.json",
    }
    if isinstance(hidden, int) and isinstance(layers, int) and isinstance(vocab, int):
        inter = int(config.get("intermediate_size", 4 * hidden))
        described["parameters"] = parameter_count(vocab, hidden, inter, layers)
        described.update(hidden_size=hidden, num_hidden_layers=layers, vocab_size=vocab)
    return {k: v for k, v in described.items() if v is not None}

"""The inference worker's own configuration (LLMOS_* variables beyond the common ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmos.config import MODELS_DIR_DOC, EnvReader, Secret
from llmos.model.names import DEFAULT_MODEL, MODEL_NAME


@dataclass(frozen=True)
class WorkerOptions:
    """Which models to serve, how, and where Triton is."""

    triton_url: str  # empty: embed Triton through PyTriton
    triton_token: Secret[str]  # an external Triton's model-control access token, if any
    models: tuple[str, ...]
    models_dir: Path | None  # None: <data dir>/models
    max_batch: int
    max_context: int
    max_inflight: int

    def models_root(self, data_dir: Path) -> Path:
        """Where model folders live: LLMOS_MODELS_DIR, else <data dir>/models."""
        return self.models_dir or data_dir / "models"


def read_worker_options(env: EnvReader) -> WorkerOptions:
    """Read and check the worker's variables (errors are collected in `env`)."""
    models = tuple(
        m.strip()
        for m in env.text(
            "MODELS", DEFAULT_MODEL, doc="comma-separated models to serve from the start"
        ).split(",")
        if m.strip()
    )
    for name in models:
        if not MODEL_NAME.match(name):
            env.errors.append(
                f"LLMOS_MODELS: {name!r} is not a model name (lowercase letters, digits, - and _)"
            )
    models_dir = env.text("MODELS_DIR", "", doc=MODELS_DIR_DOC, default_shown="`<data dir>/models`")
    max_batch = env.integer(
        "MAX_BATCH", 32, minimum=1, maximum=256, doc="sequences the engine decodes together"
    )
    return WorkerOptions(
        triton_url=env.text(
            "TRITON_URL",
            "",
            doc="an external Triton's gRPC address (`host:8001`)",
            default_shown="none: Triton embedded",
        ),
        triton_token=Secret(
            env.text("TRITON_ACCESS_TOKEN", "", doc="an external Triton's model-control token")
        ),
        models=models,
        models_dir=Path(models_dir).resolve() if models_dir else None,
        max_batch=max_batch,
        max_context=env.integer(
            "MAX_CONTEXT", 2048, minimum=64, maximum=131072, doc="context window, tokens"
        ),
        max_inflight=env.integer(
            "MAX_INFLIGHT",
            4 * max_batch,
            minimum=1,
            maximum=100_000,
            doc="generations accepted before RESOURCE_EXHAUSTED",
            default_shown="`4 x MAX_BATCH`",
        ),
    )

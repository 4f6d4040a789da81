"""The inference worker's own configuration (LLMOS_* variables beyond the common ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmos.config import MODELS_DIR_DOC, EnvReader, Secret
from llmos.model.names import DEFAULT_MODEL, MODEL_NAME
from llmos.model.tasks import DEFAULT_ENTITIES_MODEL
from services.inference_worker.repository import EntryOptions

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
DEVICES = ("cpu", "gpu")


@dataclass(frozen=True)
class WorkerOptions:
    """Which models to serve, how, and where Triton is."""

    triton_url: str  # empty: run Triton as the worker's own process
    triton_token: Secret[str]  # an external Triton's access token, if any
    triton_repository: Path | None  # an external Triton's model repository (shared volume)
    models: tuple[str, ...]
    models_dir: Path | None  # None: <data dir>/models
    max_batch: int
    max_context: int
    max_inflight: int
    device: str
    precision: str
    prefix_cache_tokens: int
    coalesce_tokens: int

    def entry_options(self) -> EntryOptions:
        """How Triton should run each model this worker serves."""
        return EntryOptions(
            device=self.device,
            precision=self.precision,
            max_batch=self.max_batch,
            max_context=self.max_context,
            prefix_cache_tokens=self.prefix_cache_tokens,
            coalesce_tokens=self.coalesce_tokens,
        )

    def models_root(self, data_dir: Path) -> Path:
        """Where model folders live: LLMOS_MODELS_DIR, else <data dir>/models."""
        return self.models_dir or data_dir / "models"


def read_worker_options(env: EnvReader) -> WorkerOptions:
    """Read and check the worker's variables (errors are collected in `env`)."""
    models = tuple(
        m.strip()
        for m in env.text(
            "MODELS",
            f"{DEFAULT_MODEL},{DEFAULT_ENTITIES_MODEL}",
            doc="comma-separated models to serve from the start (LLMs and task models)",
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
    triton_url = env.text(
        "TRITON_URL",
        "",
        doc="an external Triton's gRPC address (`host:8001`)",
        default_shown="none: the worker runs its own",
    )
    repository = env.text(
        "TRITON_REPOSITORY",
        "",
        doc="the model repository an external Triton loads from (a volume it shares)",
        default_shown="none: the worker's own Triton's, in its temporary directory",
    )
    if triton_url and not repository:
        env.errors.append(
            "LLMOS_TRITON_REPOSITORY: an external Triton (LLMOS_TRITON_URL) needs the path "
            "of the model repository it shares with this worker"
        )
    device = env.text("DEVICE", "cpu", doc="where models run: cpu or gpu (KIND_GPU)")
    if device not in DEVICES:
        env.errors.append(f"LLMOS_DEVICE: {device!r} is not one of {', '.join(DEVICES)}")
    precision = env.text(
        "PRECISION",
        "auto",
        doc="weights: auto (measured at load), fp32, bf16, fp16 or int8",
    )
    if precision not in PRECISIONS:
        env.errors.append(f"LLMOS_PRECISION: {precision!r} is not one of {', '.join(PRECISIONS)}")
    return WorkerOptions(
        triton_url=triton_url,
        triton_token=_access_token(env),
        triton_repository=Path(repository).resolve() if repository else None,
        device=device,
        precision=precision,
        prefix_cache_tokens=env.integer(
            "PREFIX_CACHE_TOKENS",
            8192,
            minimum=0,
            maximum=10_000_000,
            doc="prompt tokens whose KV is kept per model for reuse, per tenant (0: off)",
        ),
        coalesce_tokens=env.integer(
            "STREAM_COALESCE_TOKENS",
            2,
            minimum=1,
            maximum=64,
            doc="tokens per streamed message while half the batch or more decodes (1: off)",
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


def _access_token(env: EnvReader) -> Secret[str]:
    """An external Triton's access token: the contents of LLMOS_TRITON_ACCESS_TOKEN_FILE
    (never the token itself in the environment, where other processes may read it)."""
    path = env.text(
        "TRITON_ACCESS_TOKEN_FILE",
        "",
        doc="file holding an external Triton's access token",
        default_shown="none",
    )
    if not path:
        return Secret("")
    try:
        return Secret(Path(path).read_text().strip())
    except OSError as exc:
        env.errors.append(f"LLMOS_TRITON_ACCESS_TOKEN_FILE: cannot read {path}: {exc.strerror}")
        return Secret("")

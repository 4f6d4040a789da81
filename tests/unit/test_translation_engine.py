"""The translation engine on a real (tiny, random) Marian model converted to CTranslate2.

No translation model can be downloaded here, so the module builds one (tools/tiny_marian)
and converts it exactly as a real one is converted. Its translations are nonsense, but
they depend on the input, so comparing them proves what batching does and does not do.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from llmos.errors import InvalidArgument
from llmos.languages import LANGUAGES, check_language, language_name
from llmos.model.tasks import TRANSLATION, read_task
from llmos.model.translation import convert_marian
from llmos.v1 import inference_pb2
from services.inference_worker.tasks.translation import Translation, parse_device
from tools.tiny_marian import build_tiny_marian

TEXTS = [
    "Four score and seven years ago.",
    "It is a truth universally acknowledged.",
    "We hold these truths to be self-evident, that all men are created equal.",
    "Hi",
    "Mr. Bennet made no answer.",
]


@pytest.fixture(scope="module")
def marian(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Hugging Face Marian en->de folder."""
    return build_tiny_marian(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture(scope="module")
def model_folder(marian: Path) -> Path:
    """The tiny Marian converted into a task model."""
    out = marian.parent / "task"
    convert_marian(marian, out)
    return out


@pytest.fixture(scope="module")
def engine(model_folder: Path) -> Translation:
    spec = read_task(model_folder)
    assert spec is not None
    return Translation(model_folder, spec)


def work(*texts: str, source: str = "en", target: str = "de") -> inference_pb2.TranslateWork:
    return inference_pb2.TranslateWork(
        request_id="r", model="tiny", texts=list(texts), source=source, target=target
    )


def test_conversion_writes_a_translation_task_with_the_tokenizers_pair(model_folder: Path) -> None:
    spec = read_task(model_folder)
    assert spec is not None
    assert (spec.kind, spec.engine, spec.pairs) == (TRANSLATION, "ctranslate2", (("en", "de"),))
    assert {"model.bin", "source.spm", "target.spm"} <= {p.name for p in model_folder.iterdir()}
    assert not list(model_folder.parent.glob(".*converting*")), "the staging folder is gone"


def test_every_text_gets_one_translation_in_order(engine: Translation) -> None:
    [result] = engine.run([work(*TEXTS)])
    assert not result.HasField("error")
    assert len(result.translations) == len(TEXTS)
    assert all(result.translations), "the random model still says something"
    assert len(set(result.translations)) > 1, "translations depend on the input"
    singles = [engine.run([work(text)])[0].translations[0] for text in TEXTS]
    assert list(result.translations) == singles
    assert result.source_tokens > len(TEXTS) and result.target_tokens > 0


def test_batching_works_together_gives_the_answers_each_gets_alone(engine: Translation) -> None:
    works = [work(*TEXTS[:2]), work(TEXTS[2]), work(*TEXTS[3:])]
    alone = [engine.run([w])[0] for w in works]
    together = engine.run(works)
    assert together == alone


def test_bad_works_get_their_own_errors_and_the_rest_of_the_batch_succeeds(
    engine: Translation,
) -> None:
    results = engine.run(
        [work(TEXTS[0]), work(TEXTS[1], target="fr"), work(TEXTS[2], ""), work(TEXTS[3])]
    )
    good = engine.run([work(TEXTS[0]), work(TEXTS[3])])
    assert [results[0], results[3]] == good
    assert results[1].error.code == "INVALID_ARGUMENT"
    assert results[1].error.field == "target"
    assert "en>de" in results[1].error.message
    assert results[2].error.field == "texts[1]"
    assert not results[1].translations and not results[2].translations


def test_a_language_no_pair_starts_with_is_blamed_on_the_source(engine: Translation) -> None:
    [result] = engine.run([work("Bonjour", source="fr")])
    assert result.error.field == "source"


def test_an_over_long_text_is_truncated_to_what_the_model_can_read(engine: Translation) -> None:
    [result] = engine.run([work(" ".join(TEXTS * 20))])
    assert not result.HasField("error")
    assert result.source_tokens <= 64  # the tiny model's position table


def test_conversion_refuses_an_unknown_language_code(marian: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="'xx' is not an ISO 639-1"):
        convert_marian(marian, tmp_path / "out", pairs=[("en", "xx")])
    assert not (tmp_path / "out").exists()


def test_conversion_without_pairs_anywhere_asks_for_them(marian: Path, tmp_path: Path) -> None:
    config = json.loads((marian / "tokenizer_config.json").read_text())
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in marian.iterdir():
        (bare / path.name).write_bytes(path.read_bytes())
    del config["source_lang"], config["target_lang"]
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="pass pairs"):
        convert_marian(bare, tmp_path / "out")


def test_conversion_refuses_a_folder_that_is_not_empty(marian: Path, tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        convert_marian(marian, tmp_path)
    assert (tmp_path / "kept.txt").read_text() == "mine"


def test_language_codes_are_checked_case_blind() -> None:
    assert check_language("EN", "source") == "en"
    with pytest.raises(InvalidArgument, match="'xx' is not an ISO 639-1") as refused:
        check_language("xx", "target")
    assert refused.value.field == "target"
    with pytest.raises(InvalidArgument):
        check_language("", "source")
    assert len(LANGUAGES) == 184 and language_name("de") == "German"


def test_worker_device_names_map_to_ctranslate2_devices() -> None:
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("cuda:1") == ("cuda", 1)
    with pytest.raises(ValueError):
        parse_device("tpu")


def test_prefix_tokens_steer_a_multilingual_model_without_changing_batching(
    model_folder: Path, engine: Translation
) -> None:
    # NLLB-style options on the tiny model: a source language token, a forced target token
    spec = replace(
        engine.spec,
        pairs=(("en", "de"), ("en", "fr")),
        options={**engine.spec.options, "source_prefix.en": "▁the", "target_prefix.de": "▁to"},
    )
    multilingual = Translation(model_folder, spec)
    works = [work(*TEXTS[:2]), work(*TEXTS[2:], target="fr")]
    together = multilingual.run(works)
    assert together == [multilingual.run([w])[0] for w in works]
    plain = engine.run([work(*TEXTS[:2])])[0]
    assert together[0].source_tokens == plain.source_tokens + 2, "one prefix token per text"
    assert all(not t.startswith("to") for t in together[0].translations), "prefix not returned"

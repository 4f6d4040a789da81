"""A training job's configuration: defaults, and each bad value refused naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from llmos.errors import InvalidArgument
from llmos.training import BYTE_VOCAB, TrainingConfig


def test_defaults_fill_in_and_numbers_from_json_become_whole_numbers() -> None:
    config = TrainingConfig.parse({"text": "hello", "steps": 20.0, "model": {"hidden_size": 32.0}})
    assert config.steps == 20 and config.schedule == "cosine"
    shape = config.model_shape()
    assert shape["hidden_size"] == 32 and shape["vocab_size"] == BYTE_VOCAB


@pytest.mark.parametrize(
    ("raw", "field", "sentence"),
    [
        ({"text": "x", "learning_rate": 0}, "learning_rate", "must be above 0"),
        ({"text": "x", "learning_rate": -1e-3}, "learning_rate", "must be above 0"),
        ({"text": "x", "steps": 1.5}, "steps", "must be a whole number"),
        ({"text": ""}, "dataset", "is required (or text): there is nothing to train on"),
        ({"text": "x", "dataset": "d"}, "text", "cannot be set together with dataset"),
        ({"text": "x", "seq_len": 4096}, "seq_len", "above the model's context of 512"),
        ({"text": "x", "schedule": "step"}, "schedule", "must be one of cosine"),
        ({"text": "x", "optimizer": "sgd"}, "optimizer", "is not a training setting"),
        ({"text": "x", "model": {"depth": 3}}, "model.depth", "is not a model shape setting"),
        ({"text": "x", "model": {"hidden_size": 30}}, "model.hidden_size", "multiple of"),
        ({"text": "x", "base_model": "../etc"}, "base_model", "must be a model name"),
        ({"text": "x", "warmup_steps": 500}, "warmup_steps", "between 0 and steps"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(
    raw: dict[str, Any], field: str, sentence: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        TrainingConfig.parse(raw)
    assert caught.value.field == f"spec.config.{field}"
    assert sentence in caught.value.reason

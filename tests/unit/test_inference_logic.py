"""Pure inference logic: request checks, the error codec across Triton and NATS, sampling."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from gateway.validation import (
    MAX_CLASSIFY_TEXT_CHARS,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    check_classification,
    check_embed_inputs,
    check_messages,
    check_prompt,
    checked_params,
)
from llmos import errors
from llmos.errors import InvalidArgument
from llmos.generation import SamplingParams, sampling_params_from_proto
from llmos.v1 import inference_pb2
from llmos.work import domain_error, work_error
from services.inference_worker.engine.engine import _partial_stop_suffix
from services.inference_worker.engine.sampling import choose_next, filter_logits
from services.inference_worker.wire import decode_error, encode_error


def test_unset_params_get_defaults() -> None:
    params = sampling_params_from_proto(inference_pb2.GenerationParams())
    assert params == SamplingParams(max_tokens=128, temperature=0.0, top_p=1.0)
    assert params.greedy


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (inference_pb2.GenerationParams(max_tokens=-3), "params.max_tokens"),
        (inference_pb2.GenerationParams(max_tokens=5000), "params.max_tokens"),
        (inference_pb2.GenerationParams(temperature=-1), "params.temperature"),
        (inference_pb2.GenerationParams(top_p=2), "params.top_p"),
        (inference_pb2.GenerationParams(top_k=5000), "params.top_k"),
        (inference_pb2.GenerationParams(stop=["x"] * 9), "params.stop"),
    ],
)
def test_bad_params_name_the_public_field(
    params: inference_pb2.GenerationParams, field: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        checked_params(params)
    assert caught.value.field == field


def test_request_checks_name_the_field() -> None:
    checks: list[tuple[Callable[[], None], str]] = [
        (lambda: check_prompt("  "), "prompt"),
        (lambda: check_messages([]), "messages"),
        (
            lambda: check_messages([inference_pb2.ChatMessage(role="user", content="")]),
            "messages",
        ),
        (lambda: check_embed_inputs(["a", " "]), "inputs[1]"),
        (lambda: check_classification("text", ["a", "a"]), "labels"),
        (lambda: check_classification("text", ["a", ""]), "labels[1]"),
    ]
    for check, field in checks:
        with pytest.raises(errors.InvalidArgument) as caught:
            check()
        assert caught.value.field == field


def test_a_long_classification_text_is_refused_with_its_limit_before_any_work() -> None:
    labels = [f"label {i}" for i in range(MAX_LABELS)]
    with pytest.raises(errors.InvalidArgument) as caught:
        check_classification("word " * 6_000, labels)  # 30,000 characters
    assert caught.value.field == "text"
    assert f"at most {MAX_CLASSIFY_TEXT_CHARS}" in str(caught.value)
    check_classification("w" * MAX_CLASSIFY_TEXT_CHARS, labels)  # the limit itself is fine
    with pytest.raises(errors.InvalidArgument) as caught:
        check_classification("text", [*labels, "one more"])
    assert caught.value.field == "labels"
    with pytest.raises(errors.InvalidArgument) as caught:
        check_classification("text", ["a", "b" * (MAX_LABEL_CHARS + 1)])
    assert caught.value.field == "labels[1]"


@pytest.mark.parametrize(
    "error",
    [
        errors.InvalidArgument("prompt", "is 3001 tokens; the context window is 2048 tokens"),
        errors.NotFound("model 'x' is not served"),
        errors.ResourceExhausted("the engine queue is full"),
        errors.Unavailable("the engine is shutting down"),
    ],
)
def test_errors_survive_triton_and_nats_unchanged(error: errors.LLMOSError) -> None:
    through_triton = domain_error(decode_error("model raised: " + encode_error(error)))
    through_nats = domain_error(work_error(error))
    for received in (through_triton, through_nats):
        assert type(received) is type(error)
        assert str(received) == str(error)


def test_a_foreign_triton_error_becomes_one_sentence() -> None:
    error = decode_error('Traceback (most recent call last):\n  File "x.py"\nKeyError: 1')
    assert error.code == "UNAVAILABLE"
    assert "Traceback" not in error.message and "x.py" not in error.message


def test_top_k_and_top_p_keep_only_the_likely_tokens() -> None:
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    kept_k = filter_logits(logits, SamplingParams(temperature=1.0, top_k=2)).isfinite()
    assert kept_k.tolist() == [True, True, False, False, False]
    probs = torch.softmax(logits, dim=0)
    p = float(probs[0] + probs[1]) - 1e-6  # the two best tokens just reach p
    kept_p = filter_logits(logits, SamplingParams(temperature=1.0, top_p=p)).isfinite()
    assert kept_p.tolist() == [True, True, False, False, False]


def test_greedy_rows_take_the_argmax_and_seeded_rows_repeat() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(), SamplingParams(temperature=1.0), SamplingParams(temperature=1.0)]

    def draw() -> list[int]:
        generators = [None, torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)]
        return choose_next(logits, params, generators, [[], [], []])[0]

    first, second = draw(), draw()
    assert first[0] == int(logits[0].argmax())
    assert first == second


def test_penalties_steer_away_from_tokens_already_generated() -> None:
    logits = torch.tensor([[3.0, 2.9, 0.0, -1.0]])
    history = [[0, 0]]
    plain, _ = choose_next(logits, [SamplingParams()], [None], history)
    presence = SamplingParams(presence_penalty=0.5)
    frequency = SamplingParams(frequency_penalty=0.06)  # 2 x 0.06 > the 0.1 lead
    assert plain == [0]
    assert choose_next(logits, [presence], [None], history)[0] == [1]
    assert choose_next(logits, [frequency], [None], history)[0] == [1]
    # a negative penalty makes repetition more likely: token 1 trails by 0.1 until then
    encourage = SamplingParams(presence_penalty=-0.5)
    assert choose_next(logits, [encourage], [None], [[1]])[0] == [1]


def test_logprobs_are_the_models_own_and_rank_the_alternatives() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    params = SamplingParams(logprobs=True, top_logprobs=2)
    chosen, reported = choose_next(logits, [params], [None], [[]])
    expected = torch.log_softmax(logits[0], dim=-1)
    assert chosen == [1]
    assert reported[0] is not None
    assert reported[0].logprob == pytest.approx(float(expected[1]))
    assert [i for i, _ in reported[0].top] == [1, 2]
    assert reported[0].top[1][1] == pytest.approx(float(expected[2]))


def test_penalties_and_logprobs_are_bounded() -> None:
    with pytest.raises(InvalidArgument, match="presence_penalty"):
        SamplingParams(presence_penalty=2.5).validate(1000)
    with pytest.raises(InvalidArgument, match="top_logprobs"):
        SamplingParams(logprobs=True, top_logprobs=21).validate(1000)
    with pytest.raises(InvalidArgument, match="top_logprobs: needs logprobs"):
        SamplingParams(top_logprobs=2).validate(1000)


def test_text_that_could_start_a_stop_sequence_is_held_back() -> None:
    assert _partial_stop_suffix("Hello wor", ("world",)) == 3
    assert _partial_stop_suffix("Hello", ("world",)) == 0
    assert _partial_stop_suffix("ab\n", ("\n\n", "xyz")) == 1

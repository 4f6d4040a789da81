"""OpenAI request bodies become the gRPC API's requests, or are refused naming the
parameter; answers and errors take the shapes the OpenAI SDKs parse. Pure logic."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from gateway.openai import responses, schema
from gateway.openai.errors import failure_of, public_param
from llmos import errors
from llmos.errors import InvalidArgument
from llmos.v1 import gateway_pb2, inference_pb2

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


def _refused(build: Any, body: dict[str, Any], param: str, *args: Any) -> str:
    with pytest.raises(InvalidArgument) as caught:
        build(body, *args)
    assert caught.value.field == param
    return caught.value.reason


def test_a_chat_body_becomes_a_chat_request_with_openais_defaults() -> None:
    call = schema.chat_call(
        {
            **CHAT,
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
                },
            ],
            "max_completion_tokens": 7,
            "stop": "\n",
            "seed": 3,
            "presence_penalty": 0.5,
            "logprobs": True,
            "top_logprobs": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u-1",
            "tool_choice": None,  # null is "not sent"
        },
        "high",
    )
    (request,) = call.requests
    assert isinstance(request, gateway_pb2.ChatRequest)
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "Hello"),
    ]
    assert request.params.max_tokens == 7 and list(request.params.stop) == ["\n"]
    assert request.params.temperature == schema.OPENAI_TEMPERATURE  # not sent: OpenAI's 1
    assert request.params.seed == 3 and request.params.presence_penalty == 0.5
    assert request.params.logprobs and request.params.top_logprobs == 2
    assert call.stream and call.include_usage and call.priority == request.priority != 0
    assert call.aliases == {"max_tokens": "max_completion_tokens"}


def test_what_the_engine_cannot_honour_is_refused_by_name() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert "tool calling" in _refused(schema.chat_call, {**CHAT, "tools": tools}, "tools")
    schema_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert "JSON schema" in _refused(
        schema.chat_call, {**CHAT, "response_format": schema_format}, "response_format"
    )
    _refused(schema.chat_call, {**CHAT, "logit_bias": {"42": 5}}, "logit_bias")
    _refused(schema.chat_call, {**CHAT, "frobnicate": 1}, "frobnicate")
    _refused(schema.chat_call, {**CHAT, "n": 9}, "n")
    _refused(schema.chat_call, {**CHAT, "temperature": "hot"}, "temperature")
    _refused(
        schema.chat_call, {**CHAT, "stream_options": {"include_usage": True}}, "stream_options"
    )
    image = [{"type": "image_url", "image_url": {"url": "x"}}]
    _refused(schema.chat_call, {**CHAT, "messages": [{"role": "user", "content": image}]},
             "messages[0].content[0].type")  # fmt: skip
    _refused(schema.chat_call, CHAT, "x-llmos-priority", "urgent")
    _refused(schema.completion_call, {"prompt": [1, 2, 3]}, "prompt")
    _refused(schema.completion_call, {"prompt": "x", "echo": True}, "echo")
    _refused(schema.embedding_call, {"input": "x", "dimensions": 64}, "dimensions")
    # asking for what is already the case is no reason to refuse
    harmless = {**CHAT, "response_format": {"type": "text"}, "tools": [], "store": False}
    assert schema.chat_call(harmless).requests


def test_an_answer_sent_back_as_history_is_accepted() -> None:
    """The SDK's multi-turn pattern appends the answer it got (with `refusal: null`)."""
    history = [
        {"role": "user", "content": "Hi", "name": "ada"},
        {"role": "assistant", "content": "Hello!", "refusal": None, "tool_calls": None},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "And?"},
    ]
    (request,) = schema.chat_call({**CHAT, "messages": history}).requests
    assert isinstance(request, gateway_pb2.ChatRequest)
    assert [m.content for m in request.messages] == ["Hi", "Hello!", "", "And?"]
    calls = [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]
    assert "tool calling" in _refused(
        schema.chat_call, {**CHAT, "messages": calls}, "messages[0].tool_calls"
    )


def test_numbers_that_cannot_be_counts_are_refused_by_name() -> None:
    for name in ("max_tokens", "top_k", "n"):
        _refused(schema.chat_call, {**CHAT, name: 2**40}, name)
    _refused(schema.chat_call, {**CHAT, "top_k": -2}, "top_k")
    _refused(schema.chat_call, {**CHAT, "top_p": 0}, "top_p")  # gRPC would read 0 as unset
    _refused(schema.chat_call, {**CHAT, "max_tokens": 0}, "max_tokens")


def test_features_asked_for_are_not_taken_for_attacks() -> None:
    from gateway.guard import signal_of

    with pytest.raises(errors.Unsupported) as unsupported:
        schema.chat_call({**CHAT, "tools": [{"type": "function"}]})
    assert signal_of(unsupported.value) is None  # a LangChain agent is no intruder
    with pytest.raises(InvalidArgument) as malformed:
        schema.chat_call({**CHAT, "temperature": "hot"})
    assert signal_of(malformed.value) is not None


def test_choices_run_once_per_prompt_and_n_with_consecutive_seeds() -> None:
    call = schema.completion_call({"prompt": ["a", "b"], "n": 2, "seed": 10, "logprobs": 1})
    runs = call.choices()
    completions = [r for r in runs if isinstance(r, gateway_pb2.GenerateRequest)]
    assert len(completions) == len(runs)
    assert [(r.prompt, r.params.seed) for r in completions] == [
        ("a", 10),
        ("a", 11),
        ("b", 10),
        ("b", 11),
    ]
    assert all(r.params.logprobs and r.params.top_logprobs == 1 for r in runs)
    _refused(schema.completion_call, {"prompt": ["a"] * 3, "n": 3}, "prompt")


def test_grpc_field_names_become_the_parameters_the_caller_sent() -> None:
    assert public_param("params.top_p") == "top_p"
    assert public_param("params.max_tokens", {"max_tokens": "max_completion_tokens"}) == (
        "max_completion_tokens"
    )
    assert public_param("inputs[2]") == "input[2]"
    assert public_param("messages[1].role") == "messages[1].role"


def _error(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    response = failure_of(exc, request_id="r-1").response()
    return response.status, json.loads(response.text or ""), dict(response.headers)


def test_errors_carry_the_status_and_shape_the_sdks_map_to_exceptions() -> None:
    status, body, _ = _error(InvalidArgument("params.temperature", "must be >= 0"))
    assert status == 400 and body["error"]["param"] == "temperature"
    assert body["error"]["message"] == "temperature: must be >= 0"
    assert _error(errors.Unauthenticated("bad key"))[0] == 401
    assert _error(errors.PermissionDenied("no"))[0] == 403
    status, body, _ = _error(errors.NotFound("model 'x' is not served"))
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, body, headers = _error(errors.ResourceExhausted("slow down", retry_after_s=2.2))
    assert status == 429 and headers["Retry-After"] == "3"
    assert _error(errors.Unavailable("later"))[0] == 503
    status, body, _ = _error(RuntimeError("secret detail"))
    assert status == 500 and "secret detail" not in json.dumps(body) and "r-1" in json.dumps(body)


def test_answers_take_openais_shapes() -> None:
    entry = inference_pb2.TokenLogprob(
        token_id=1, token=b"\xc3", logprob=-0.5,
        top=[inference_pb2.TokenLogprob(token_id=1, token=b"\xc3", logprob=-0.5)],
    )  # fmt: skip
    choice = responses.Choice(0)
    choice.add(gateway_pb2.GenerateResponse(text="é", logprobs=[entry]))
    choice.add(
        gateway_pb2.GenerateResponse(
            done=True, finish_reason="length",
            usage=inference_pb2.Usage(prompt_tokens=5, completion_tokens=1),
        )
    )  # fmt: skip
    answer = responses.chat_completion("id", 1, "m", [choice], 1)
    assert answer["choices"][0]["message"]["content"] == "é"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["choices"][0]["logprobs"]["content"][0]["bytes"] == [0xC3]
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    embedded = gateway_pb2.EmbedResponse(embeddings=[inference_pb2.Embedding(values=[0.5, -1.0])])
    encoded = responses.embeddings(embedded, as_base64=True)["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (0.5, -1.0)

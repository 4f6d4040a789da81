"""The OpenAI-compatible API as its users meet it: the official `openai` SDK against the
running stack (TLS on), with API keys made by `llmos admin api-key`."""

from __future__ import annotations

import json
import math
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmos.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2, worker_pb2, worker_pb2_grpc
from tests.e2e.conftest import RunningStack
from tests.e2e.shared.sdk import api_key, client
from tests.e2e.shared.test_inference import as_scheduler
from tools.harness import eventually

pytestmark = pytest.mark.e2e

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def sdk(stack: RunningStack) -> openai.OpenAI:
    return client(stack, api_key(stack, "oa-lab", "inference", expires="30d")["key"])


def test_the_ready_line_names_the_api_and_models_are_listed(
    stack: RunningStack, sdk: openai.OpenAI
) -> None:
    assert stack.fields["openai"] == stack.fields["issuer"] + "/v1"
    assert stack.fields["openai"].startswith("https://")
    models = {m.id: m for m in sdk.models.list()}
    assert "smollm2-135m-instruct" in models
    assert models["smollm2-135m-instruct"].owned_by == "llmos"
    assert sdk.models.retrieve("smollm2-135m-instruct").id == "smollm2-135m-instruct"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("no-such-model")


def test_chat_streamed_says_what_chat_answers_whole(sdk: openai.OpenAI) -> None:
    whole = sdk.chat.completions.create(
        model="smollm2-135m-instruct", messages=QUESTION, max_tokens=12, temperature=0
    )
    answer = whole.choices[0]
    assert answer.message.role == "assistant" and answer.message.content
    assert answer.finish_reason in ("stop", "length")
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 12

    chunks = list(
        sdk.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=QUESTION,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == answer.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_streamed_choices_each_arrive_whole(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=QUESTION,
            max_tokens=5,
            n=2,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    finished = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices}
    assert finished == {0: "length", 1: "length"}
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 2 * 5


def test_greedy_output_is_the_same_through_http_and_grpc(stack: RunningStack) -> None:
    """Each API from a tenant of its own: the response cache is per tenant, so neither
    answer can be the other's, cached."""
    http = client(stack, api_key(stack, "oa-http", "inference")["key"])
    chat = http.chat.completions.create(
        model="smollm2-135m-instruct", messages=QUESTION, max_tokens=16, temperature=0
    )
    token = stack.client_token("oa-grpc", ["inference"])
    with stack.channel(token) as channel:
        replies = list(
            gateway_pb2_grpc.GatewayStub(channel).Chat(
                gateway_pb2.ChatRequest(
                    model="smollm2-135m-instruct",
                    messages=[
                        inference_pb2.ChatMessage(role="user", content="Name three colours.")
                    ],
                    params=inference_pb2.GenerationParams(max_tokens=16),
                ),
                timeout=120,
            )
        )
    assert not any(r.cached for r in replies)
    assert chat.choices[0].message.content == "".join(r.text for r in replies)
    assert chat.usage is not None
    assert chat.usage.completion_tokens == replies[-1].usage.completion_tokens


def test_completions_with_choices_and_logprobs(sdk: openai.OpenAI) -> None:
    answer = sdk.completions.create(
        model="smollm2-135m-instruct",
        prompt=["The sky is", "Grass is"],
        n=2,
        max_tokens=6,
        temperature=0.8,
        seed=7,
        logprobs=2,
    )
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    for choice in answer.choices:
        assert choice.logprobs is not None and choice.text
        assert len(choice.logprobs.tokens or []) == len(choice.logprobs.token_logprobs or [])
        assert all(lp <= 0 for lp in choice.logprobs.token_logprobs or [])
        assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs or [])
    assert answer.usage is not None and answer.usage.completion_tokens <= 4 * 6
    # the same seed draws the same text again
    again = sdk.completions.create(
        model="smollm2-135m-instruct", prompt="The sky is", max_tokens=6, temperature=0.8, seed=7
    )
    assert again.choices[0].text == answer.choices[0].text


def test_chat_logprobs_spell_the_answer_byte_for_byte(sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Écris « café » en français."}],
        max_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    spelt = b"".join(bytes(t.bytes or []) for t in choice.logprobs.content)
    assert spelt.decode() == choice.message.content
    for token in choice.logprobs.content:  # greedy: the chosen token is the most likely
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob, abs=1e-4)
        assert len(token.top_logprobs) == 3


def test_embeddings_as_the_sdk_asks_for_them(sdk: openai.OpenAI) -> None:
    as_base64 = sdk.embeddings.create(model="smollm2-135m-instruct", input=["red", "a blue sky"])
    as_floats = sdk.embeddings.create(
        model="smollm2-135m-instruct", input=["red", "a blue sky"], encoding_format="float"
    )
    assert [e.index for e in as_base64.data] == [0, 1]
    for packed, plain in zip(as_base64.data, as_floats.data, strict=True):
        assert packed.embedding == pytest.approx(plain.embedding, abs=1e-6)
        assert math.sqrt(sum(v * v for v in plain.embedding)) == pytest.approx(1.0, abs=1e-3)
    assert as_floats.usage.prompt_tokens > 0


def test_refusals_are_the_sdks_own_exceptions(stack: RunningStack, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(stack, "sk-llmos-k0123456789abcdef-" + "x" * 43).models.list()
    with pytest.raises(openai.AuthenticationError):
        client(stack, "not-a-key").models.list()
    lister = client(stack, api_key(stack, "oa-lab", "models:read")["key"])
    assert lister.models.list().data  # its scope lists models ...
    with pytest.raises(openai.PermissionDeniedError) as denied:  # ... and runs none
        lister.chat.completions.create(model="smollm2-135m-instruct", messages=QUESTION)
    assert "inference" in str(denied.value)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=QUESTION,
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
        )
    assert bad.value.body["param"] == "tools"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(
            model="smollm2-135m-instruct", messages=QUESTION, temperature=-1
        )
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.PermissionDeniedError) as denied:  # no grant for critical
        sdk.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=QUESTION,
            max_tokens=2,
            extra_headers={"x-llmos-priority": "critical"},
        )
    assert "critical" in str(denied.value)


def test_a_key_over_its_limit_hears_when_to_retry(stack: RunningStack) -> None:
    limited = client(stack, api_key(stack, "oa-lab", "inference", rpm="1")["key"])
    limited.chat.completions.create(
        model="smollm2-135m-instruct", messages=QUESTION, max_tokens=2, temperature=0
    )
    with pytest.raises(openai.RateLimitError) as caught:
        limited.chat.completions.create(
            model="smollm2-135m-instruct", messages=QUESTION, max_tokens=2, temperature=0
        )
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60
    assert "requests per minute" in str(caught.value)


def test_an_api_key_works_on_grpc_is_audited_and_dies_when_revoked(stack: RunningStack) -> None:
    made = api_key(stack, "oa-keys", "inference", "models:read", name="nightly-batch")
    key_id, key = made["api_key"]["key_id"], made["key"]
    listed = stack.cli("admin", "api-key", "list", "--tenant", "oa-keys", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout and key not in listed.stdout  # never shown again
    with stack.channel(key) as channel:
        reply = gateway_pb2_grpc.GatewayStub(channel).ListModels(
            gateway_pb2.ListModelsRequest(), timeout=30
        )
    assert reply.models
    sdk = client(stack, key)
    sdk.chat.completions.create(
        model="smollm2-135m-instruct", messages=QUESTION, max_tokens=2, temperature=0
    )

    def audited() -> list[dict[str, Any]] | None:
        query = stack.cli("audit", "query", "--tenant", "oa-keys", "--limit", "0")
        assert query.returncode == 0, query.stderr
        lines = [json.loads(line) for line in query.stdout.splitlines()]
        used = [r for r in lines if r.get("client_id") == key_id]
        actions = {r["action"] for r in used}
        wanted = {"/llmos.v1.Gateway/ListModels", "/llmos.v1.Gateway/Chat"}
        return used if wanted <= actions else None

    used = eventually(audited, 30, what="the key's calls in the audit log", interval=0.5)
    assert all(r["principal"] == f"apikey:{key_id}" for r in used)
    assert key not in json.dumps(used)
    secret = key.removeprefix(f"sk-llmos-{key_id}-")  # it may hold '-' itself
    assert len(secret) == 43
    for log in Path(stack.fields["logs"]).rglob("*"):
        assert not log.is_file() or secret not in log.read_text(errors="replace"), log

    # a bearer that never expires administers nothing
    refused_admin = stack.cli("admin", "api-key", "create", "--tenant", "oa-keys", "--scope=admin")
    assert refused_admin.returncode != 0 and "cannot carry 'admin'" in refused_admin.stderr

    revoked = stack.cli("admin", "api-key", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk.models.list()
    assert "revoked" in str(refused.value)
    with stack.channel(key) as channel, pytest.raises(grpc.RpcError) as caught:
        gateway_pb2_grpc.GatewayStub(channel).ListModels(gateway_pb2.ListModelsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_an_expired_key_is_refused_saying_so(stack: RunningStack) -> None:
    made = api_key(stack, "oa-keys", "inference", expires="1s")
    expires_at = made["api_key"]["expires_at"]
    sdk = client(stack, made["key"])
    time.sleep(max(0.0, _epoch(expires_at) + 0.5 - time.time()))  # past its expiry
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk.models.list()
    assert "expired" in str(refused.value)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_a_stream_the_client_drops_frees_its_worker_slot(
    stack: RunningStack, sdk: openai.OpenAI
) -> None:
    with as_scheduler(stack) as worker_channel:
        worker = worker_pb2_grpc.InferenceWorkerStub(worker_channel)

        def free() -> int:
            request = worker_pb2.DescribeWorkerRequest()
            return int(worker.DescribeWorker(request, timeout=10).free_slots)

        idle = free()
        stream = sdk.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": f"Count slowly. {uuid.uuid4().hex}"}],
            max_tokens=1500,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for received, _ in enumerate(stream):
            if received == 3:
                break
        assert free() == idle - 1
        stream.close()  # the client goes away mid-answer
        # 1500 tokens would take minutes
        eventually(lambda: free() == idle, 15, what="the worker's slot freed", interval=0.2)

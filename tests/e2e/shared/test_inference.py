"""Inference as a client sees it: gateway -> NATS -> inference worker -> Triton -> engine."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import openai
import pytest

from llmos.model.names import DEFAULT_MODEL
from llmos.model.text import TextCodec
from llmos.v1 import (
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    worker_pb2,
    worker_pb2_grpc,
)
from tests.e2e.conftest import RunningStack
from tests.e2e.shared.sdk import api_key, client
from tests.reference import assert_same_or_near_tie, load_reference, reference_tokens
from tools.harness import eventually
from tools.standin import internal_channel

pytestmark = pytest.mark.e2e
SPARE_MODEL = "smollm2-spare-copy"


@pytest.fixture(scope="module")
def channel(stack: RunningStack) -> Iterator[grpc.Channel]:
    with stack.channel() as chan:
        yield chan


@pytest.fixture(scope="module")
def gateway(channel: grpc.Channel) -> gateway_pb2_grpc.GatewayStub:
    return gateway_pb2_grpc.GatewayStub(channel)


def as_scheduler(stack: RunningStack) -> grpc.Channel:
    """The worker's port as the scheduler reaches it (only it may load and unload)."""
    address = stack.fields["inference-worker"]
    secrets = stack.data_dir / "secrets"
    return internal_channel(
        address, "inference-worker", secrets, caller="scheduler", principal=None
    )


def params(**kwargs: object) -> inference_pb2.GenerationParams:
    return inference_pb2.GenerationParams(**kwargs)  # type: ignore[arg-type]


def test_generate_streams_deltas_then_usage(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    request = gateway_pb2.GenerateRequest(
        prompt="The three primary colors are", params=params(max_tokens=16)
    )
    responses = list(gateway.Generate(request, timeout=120))
    assert len(responses) > 1, "tokens were not streamed"
    assert [r.done for r in responses] == [False] * (len(responses) - 1) + [True]
    final = responses[-1]
    tokens = sum(len(r.token_ids) for r in responses)
    assert final.finish_reason in ("stop", "length")
    assert final.usage.completion_tokens == tokens <= 16
    assert final.usage.prompt_tokens > 0
    assert 0 < final.timings.time_to_first_token_s <= final.timings.total_s
    assert final.model == DEFAULT_MODEL
    assert "".join(r.text for r in responses).strip()


def test_greedy_tokens_through_the_api_equal_transformers_in_fp32(
    gateway: gateway_pb2_grpc.GatewayStub, model_folder: Path
) -> None:
    """The whole path (gateway, scheduler, worker, tritonserver, the engine in its
    Python backend) gives transformers' greedy tokens; the shared stack serves fp32
    (tests/e2e/shared/conftest.py), where only a genuine near-tie may differ."""
    codec, reference = TextCodec(model_folder), load_reference(model_folder)
    prompts = ["The three laws of motion are", "def fibonacci(n):", "Once upon a time"]
    ids = [codec.encode(prompt) for prompt in prompts]
    expected = reference_tokens(reference, ids, codec, 16)
    for prompt, prompt_ids, want in zip(prompts, ids, expected, strict=True):
        answer = list(
            gateway.Generate(
                gateway_pb2.GenerateRequest(prompt=prompt, params=params(max_tokens=16)),
                timeout=60,
            )
        )
        got = [token for chunk in answer for token in chunk.token_ids]
        assert_same_or_near_tie(reference, prompt_ids, want, got)


def test_chat_answers_with_the_chat_template(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    request = gateway_pb2.ChatRequest(
        messages=[inference_pb2.ChatMessage(role="user", content="What is the capital of France?")],
        params=params(max_tokens=30),
    )
    responses = list(gateway.Chat(request, timeout=120))
    assert "Paris" in "".join(r.text for r in responses)
    assert responses[-1].finish_reason == "stop"


def test_concurrent_requests_each_get_exactly_their_tokens(
    gateway: gateway_pb2_grpc.GatewayStub,
) -> None:
    def one(index: int) -> tuple[str, int]:
        request = gateway_pb2.GenerateRequest(
            prompt=f"Write a sentence about the number {index}.",
            params=params(max_tokens=12 + index, ignore_eos=True),
        )
        responses = list(gateway.Generate(request, timeout=180))
        return responses[-1].finish_reason, sum(len(r.token_ids) for r in responses)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert results == [("length", 12 + i) for i in range(8)]


def test_embeddings_are_unit_vectors_that_reflect_meaning(
    gateway: gateway_pb2_grpc.GatewayStub,
) -> None:
    texts = ["The cat sat on the mat.", "A cat is sitting on a mat.", "Stock prices fell sharply."]
    reply = gateway.Embed(gateway_pb2.EmbedRequest(inputs=texts), timeout=60)
    vectors = [list(e.values) for e in reply.embeddings]
    assert len(vectors) == 3 and all(len(v) == 576 for v in vectors)
    for vector in vectors:
        assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-4)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert reply.usage.prompt_tokens > 0


def test_classify_ranks_every_label_with_probabilities(
    gateway: gateway_pb2_grpc.GatewayStub,
) -> None:
    labels = ["sports", "cooking", "politics"]
    reply = gateway.Classify(
        gateway_pb2.ClassifyRequest(text="Stir the onions until golden.", labels=labels),
        timeout=60,
    )
    assert sorted(s.label for s in reply.scores) == sorted(labels)
    likelihoods = [s.log_likelihood for s in reply.scores]
    assert likelihoods == sorted(likelihoods, reverse=True)
    assert all(s.log_likelihood < 0 for s in reply.scores)
    assert math.isclose(sum(s.probability for s in reply.scores), 1.0, rel_tol=1e-6)


def test_list_models_shows_the_default_model(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    reply = gateway.ListModels(gateway_pb2.ListModelsRequest(), timeout=10)
    (model,) = [m for m in reply.models if m.name == DEFAULT_MODEL]
    assert model.default and model.workers == 1


BAD_REQUESTS = [
    (gateway_pb2.GenerateRequest(prompt=""), "INVALID_ARGUMENT", "prompt"),
    (gateway_pb2.GenerateRequest(prompt="   "), "INVALID_ARGUMENT", "prompt"),
    (
        gateway_pb2.GenerateRequest(prompt="word " * 3000),
        "INVALID_ARGUMENT",
        "prompt: is 3001 tokens",
    ),
    (
        gateway_pb2.GenerateRequest(prompt="hi", params=params(max_tokens=-1)),
        "INVALID_ARGUMENT",
        "params.max_tokens",
    ),
    (
        gateway_pb2.GenerateRequest(prompt="hi", params=params(max_tokens=10**6)),
        "INVALID_ARGUMENT",
        "params.max_tokens",
    ),
    (
        gateway_pb2.GenerateRequest(prompt="hi", params=params(temperature=-0.5)),
        "INVALID_ARGUMENT",
        "params.temperature",
    ),
    (
        gateway_pb2.GenerateRequest(prompt="hi", params=params(top_p=1.5)),
        "INVALID_ARGUMENT",
        "params.top_p",
    ),
    (
        gateway_pb2.GenerateRequest(prompt="hi", params=params(top_p=-0.1)),
        "INVALID_ARGUMENT",
        "params.top_p",
    ),
    (gateway_pb2.GenerateRequest(prompt="hi", model="no-such-model"), "NOT_FOUND", "no-such-model"),
]


@pytest.mark.parametrize(("request_", "code", "mentions"), BAD_REQUESTS)
def test_bad_generate_requests_are_refused_naming_the_field(
    gateway: gateway_pb2_grpc.GatewayStub,
    request_: gateway_pb2.GenerateRequest,
    code: str,
    mentions: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(gateway.Generate(request_, timeout=60))
    assert caught.value.code().name == code
    assert mentions in (caught.value.details() or "")


def test_non_utf8_prompt_is_invalid_argument_naming_the_field(channel: grpc.Channel) -> None:
    payload = gateway_pb2.GenerateRequest(prompt="PLACEHOLDER").SerializeToString()
    generate = channel.unary_stream("/llmos.v1.Gateway/Generate")
    with pytest.raises(grpc.RpcError) as caught:
        list(generate(payload.replace(b"PLACEHOLDER", b"caf\xe9 \xff\xfe!!!!"), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "prompt: is not valid UTF-8"


@pytest.mark.parametrize(
    ("call", "request_", "field"),
    [
        ("Chat", gateway_pb2.ChatRequest(), "messages"),
        (
            "Chat",
            gateway_pb2.ChatRequest(
                messages=[inference_pb2.ChatMessage(role="robot", content="x")]
            ),
            "messages[0].role",
        ),
        ("Embed", gateway_pb2.EmbedRequest(), "inputs"),
        ("Embed", gateway_pb2.EmbedRequest(inputs=["ok", ""]), "inputs[1]"),
        ("Classify", gateway_pb2.ClassifyRequest(text="x", labels=["only"]), "labels"),
        ("Classify", gateway_pb2.ClassifyRequest(text="", labels=["a", "b"]), "text"),
        (  # scored once per label: 30,000 characters x 32 labels would take tens of GB
            "Classify",
            gateway_pb2.ClassifyRequest(
                text="word " * 6_000, labels=[f"label {i}" for i in range(32)]
            ),
            "text",
        ),
    ],
)
def test_other_bad_requests_name_the_field(
    gateway: gateway_pb2_grpc.GatewayStub, call: str, request_: object, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        result = getattr(gateway, call)(request_, timeout=30)
        if call == "Chat":
            list(result)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}:")


def test_a_client_that_goes_away_frees_the_worker(
    stack: RunningStack, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    with as_scheduler(stack) as worker_channel:
        worker = worker_pb2_grpc.InferenceWorkerStub(worker_channel)
        idle = worker.DescribeWorker(worker_pb2.DescribeWorkerRequest(), timeout=10).free_slots
        call = gateway.Generate(
            gateway_pb2.GenerateRequest(
                prompt="Count slowly.", params=params(max_tokens=2000, ignore_eos=True)
            ),
            timeout=300,
        )
        for received, _ in enumerate(call):
            if received == 3:
                break
        busy = worker.DescribeWorker(worker_pb2.DescribeWorkerRequest(), timeout=10).free_slots
        assert busy == idle - 1
        call.cancel()
        eventually(  # 2000 tokens would take minutes
            lambda: (
                worker.DescribeWorker(worker_pb2.DescribeWorkerRequest(), timeout=10).free_slots
                == idle
            ),
            15,
            what="the worker's slot freed",
            interval=0.2,
        )


def test_the_worker_still_serves_after_all_that(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    request = gateway_pb2.GenerateRequest(
        prompt="Hello", params=params(max_tokens=4, ignore_eos=True)
    )
    responses = list(gateway.Generate(request, timeout=60))
    assert responses[-1].finish_reason == "length"
    assert responses[-1].usage.completion_tokens == 4


def test_a_registered_version_is_deployed_and_answers_without_a_restart(
    stack: RunningStack, model_folder: Path
) -> None:
    """A version in tenant lab-a's registry (the default model's files, as a fine-tune's
    would be) is deployed; the worker fetches and serves it; lab-a's requests naming the
    model reach it; nothing restarted; other tenants cannot reach it."""

    def processes() -> set[tuple[str, int]]:
        return {
            (s["instance"]["service"], s["instance"]["pid"]) for s in stack.status()["services"]
        }

    before = processes()
    owner = stack.client_token("lab-a", ["inference", "models:read", "models:write", "datasets"])
    as_owner = ("--token", owner)
    registered = stack.cli(*as_owner, "models", "register", str(model_folder), "my-tune", "--quiet")
    assert registered.returncode == 0, registered.stderr
    assert json.loads(registered.stdout)["version"] == "1"
    deployed = stack.cli(*as_owner, "models", "deploy", "my-tune", "1")
    served = "lab-a--my-tune-v1"
    try:
        assert deployed.returncode == 0, deployed.stderr
        assert deployed.stdout.strip() == f"my-tune@1 is served as {served}"
        answer = stack.cli(*as_owner, "generate", "--model", "my-tune", "--max-tokens", "8", "Hi")
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip()
        listed = stack.cli(*as_owner, "models", "versions", "my-tune")
        assert listed.stdout.splitlines()[1].split()[:2] == ["my-tune@1", "production"]
        refused = stack.cli(*as_owner, "models", "deploy", "my-tune", "7")
        assert refused.returncode != 0 and "NOT_FOUND" in refused.stderr
        assert processes() == before  # the same processes serve on: nothing restarted
        another_tenant_cannot_reach(stack, "my-tune", served)
    finally:
        with as_scheduler(stack) as worker_channel:
            worker = worker_pb2_grpc.InferenceWorkerStub(worker_channel)
            with contextlib.suppress(grpc.RpcError):
                worker.UnloadModel(worker_pb2.UnloadModelRequest(model=served), timeout=60)
        shutil.rmtree(model_folder.parent / served, ignore_errors=True)  # shared folder


def another_tenant_cannot_reach(stack: RunningStack, model: str, served: str) -> None:
    """Tenant lab-a's private `model`, served as `served`: another tenant neither sees
    it listed, nor generates with it (by its name or its served name), nor deploys it."""
    token = stack.client_token("other-lab", ["inference", "models:read", "models:write"])
    with stack.channel(token) as other_channel:
        other = gateway_pb2_grpc.GatewayStub(other_channel)
        listed = other.ListModels(gateway_pb2.ListModelsRequest(), timeout=30)
        names = {m.name for m in listed.models}
        assert model not in names and served not in names
        for name in (model, served):
            with pytest.raises(grpc.RpcError) as caught:
                list(
                    other.Generate(
                        gateway_pb2.GenerateRequest(
                            model=name, prompt="Hi", params=params(max_tokens=2)
                        ),
                        timeout=60,
                    )
                )
            assert caught.value.code() in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.PERMISSION_DENIED,
            ), caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            other.DeployModel(gateway_pb2.DeployModelRequest(model=model, version=1), timeout=60)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert (caught.value.details() or "") == f"model {model!r} has no version 1"  # as if none
    # nor through the OpenAI-compatible API
    sdk = client(stack, api_key(stack, "other-lab", "inference")["key"])
    assert not {model, served} & {m.id for m in sdk.models.list()}
    for name in (model, served):
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve(name)


def test_models_load_and_unload_on_command_without_a_restart(
    stack: RunningStack, gateway: gateway_pb2_grpc.GatewayStub, model_folder: Path
) -> None:
    """A second model is loaded into the running worker, served, listed, unloaded, and
    then loaded and served again under the same name."""
    link = model_folder.parent / SPARE_MODEL  # the folder workers load from is shared
    link.symlink_to(model_folder, target_is_directory=True)

    def listed() -> set[str]:
        return {
            m.name for m in gateway.ListModels(gateway_pb2.ListModelsRequest(), timeout=10).models
        }

    try:
        with as_scheduler(stack) as worker_channel:
            worker = worker_pb2_grpc.InferenceWorkerStub(worker_channel)
            # what the shared stack serves besides (the entity model, other tests' models)
            serving = set(
                worker.DescribeWorker(worker_pb2.DescribeWorkerRequest(), timeout=30).loaded_models
            )
            assert DEFAULT_MODEL in serving and SPARE_MODEL not in serving
            for bad, code in [("../etc", "INVALID_ARGUMENT"), ("not-imported", "NOT_FOUND")]:
                with pytest.raises(grpc.RpcError) as caught:
                    worker.LoadModel(worker_pb2.LoadModelRequest(model=bad), timeout=30)
                assert caught.value.code().name == code
            for round_ in ("load", "reload"):  # Triton serves a name again after unloading it
                loaded = worker.LoadModel(
                    worker_pb2.LoadModelRequest(model=SPARE_MODEL), timeout=120
                )
                assert set(loaded.loaded_models) == serving | {SPARE_MODEL}, round_
                eventually(lambda: SPARE_MODEL in listed(), 10, what="the loaded model listed")
                answer = list(
                    gateway.Generate(
                        gateway_pb2.GenerateRequest(
                            model=SPARE_MODEL, prompt="Hi", params=params(max_tokens=3)
                        ),
                        timeout=60,
                    )
                )
                assert answer[-1].done and answer[-1].model == SPARE_MODEL, round_
                assert answer[-1].usage.completion_tokens >= 1, round_
                described = worker.UnloadModel(
                    worker_pb2.UnloadModelRequest(model=SPARE_MODEL), timeout=60
                )
                assert set(described.loaded_models) == serving, round_
                eventually(
                    lambda: SPARE_MODEL not in listed(), 10, what="the unloaded model unlisted"
                )
    finally:
        link.unlink()
    assert stack.status()["ready"] is True  # the worker itself keeps serving its API
    assert DEFAULT_MODEL in listed()

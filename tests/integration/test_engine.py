"""The engine against the reference (Hugging Face transformers) and its serving behaviour:
continuous batching, sampling, stop conditions, cancellation, metrics, bad input."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from llmos.errors import InvalidArgument
from llmos.generation import SamplingParams
from llmos.model.folder import load_model
from llmos.model.text import TextCodec
from services.inference_worker.engine.compute import ComputeLoop
from services.inference_worker.engine.engine import Engine, GenerationMetrics, TokenEvent
from services.inference_worker.engine.forward import Attend
from services.inference_worker.engine.prefix_cache import PrefixCache
from services.inference_worker.engine.scoring import (
    check_classification_tokens,
    classification_prompt,
    label_log_likelihoods,
)
from tests.reference import (
    PROMPTS,
    assert_same_or_near_tie,
    load_reference,
    reference_tokens,
)
from tools.harness import eventually

NEW_TOKENS = 24


@dataclass
class Stream:
    """Collects one request's events; `done` is set on the final one."""

    tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    reason: str | None = None
    metrics: GenerationMetrics | None = None
    arrivals: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def __call__(self, event: TokenEvent) -> None:
        if event.token_id is not None:
            self.tokens.append(event.token_id)
            self.arrivals.append(time.monotonic())
        self.texts.append(event.text)
        if event.finish_reason is not None:
            self.reason, self.metrics = event.finish_reason, event.metrics
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def wait(self, timeout: float = 120) -> Stream:
        assert self.done.wait(timeout), "generation did not finish"
        return self


@pytest.fixture(scope="module")
def codec(model_folder: Path) -> TextCodec:
    return TextCodec(model_folder)


@pytest.fixture(scope="module")
def engine(model_folder: Path, codec: TextCodec) -> Iterator[Engine]:
    compute = ComputeLoop()
    compute.start()
    model = compute.call(lambda: load_model(model_folder)).result()
    serving = Engine(model, codec, max_batch=8, max_context=512, wake=compute.wake)
    compute.attach(serving)
    try:
        yield serving
    finally:
        serving.shutdown()
        compute.stop()


@pytest.fixture(scope="module")
def reference(model_folder: Path) -> Any:
    return load_reference(model_folder)


def chat_ids(codec: TextCodec, prompt: str) -> list[int]:
    return codec.encode(codec.render_chat([{"role": "user", "content": prompt}]))


def greedy(max_tokens: int = NEW_TOKENS, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def alone(engine: Engine, codec: TextCodec) -> dict[str, list[int]]:
    """Each prompt's greedy tokens, generated with nothing else running."""
    tokens = {}
    for prompt in PROMPTS:
        stream = Stream()
        engine.submit(chat_ids(codec, prompt), greedy(), stream)
        tokens[prompt] = stream.wait().tokens
    return tokens


def test_greedy_tokens_equal_transformers_one_at_a_time(
    alone: dict[str, list[int]], codec: TextCodec, reference: Any
) -> None:
    prompts = [chat_ids(codec, prompt) for prompt in PROMPTS]
    expected = reference_tokens(reference, prompts, codec, NEW_TOKENS)
    for prompt, ids, want in zip(PROMPTS, prompts, expected, strict=True):
        assert_same_or_near_tie(reference, ids, want, alone[prompt])


def test_batched_generation_equals_unbatched(
    alone: dict[str, list[int]], engine: Engine, codec: TextCodec, reference: Any
) -> None:
    together = {prompt: Stream() for prompt in PROMPTS}
    for prompt, stream in together.items():
        engine.submit(chat_ids(codec, prompt), greedy(), stream)
    for prompt, stream in together.items():
        stream.wait()
        assert_same_or_near_tie(reference, chat_ids(codec, prompt), alone[prompt], stream.tokens)


def test_a_new_request_joins_while_a_long_one_is_running(engine: Engine, codec: TextCodec) -> None:
    long = Stream()
    engine.submit(chat_ids(codec, "Tell me a long story about a dragon."), greedy(120), long)
    while len(long.tokens) < 5:
        time.sleep(0.01)
    short = Stream()
    engine.submit(chat_ids(codec, "2 + 2 ="), greedy(3), short)
    short.wait()
    assert not long.done.is_set(), "the short request waited for the long one"
    assert short.reason == "length" and len(short.tokens) == 3
    long.wait()
    assert long.reason == "length" and len(long.tokens) == 120


def test_cancel_frees_the_slot_at_the_next_step(engine: Engine, codec: TextCodec) -> None:
    stream = Stream()
    handle = engine.submit(chat_ids(codec, "Count from one to a thousand."), greedy(400), stream)
    eventually(lambda: len(stream.tokens) >= 3, 60, what="three tokens", interval=0.01)
    handle.cancel()
    stream.wait(10)
    assert stream.reason == "cancelled"
    assert len(stream.tokens) < 400
    eventually(lambda: engine.load == (0, 0), 5, what="the slot freed", interval=0.01)


def test_stop_sequence_ends_the_text_before_it(engine: Engine, codec: TextCodec) -> None:
    free = Stream()
    engine.submit(chat_ids(codec, "What is the capital of France?"), greedy(), free)
    assert "Paris" in free.wait().text
    stopped = Stream()
    engine.submit(
        chat_ids(codec, "What is the capital of France?"), greedy(stop=("Paris",)), stopped
    )
    stopped.wait()
    assert stopped.reason == "stop"
    assert stopped.text == free.text[: free.text.index("Paris")]


def test_end_of_turn_token_stops_and_is_not_shown(engine: Engine, codec: TextCodec) -> None:
    stream = Stream()
    engine.submit(chat_ids(codec, "What is the capital of France?"), greedy(100), stream)
    stream.wait()
    assert stream.reason == "stop"
    assert stream.text.strip() == "The capital of France is Paris."


def test_sampling_with_a_seed_is_reproducible_and_differs_from_greedy(
    engine: Engine, codec: TextCodec
) -> None:
    ids = chat_ids(codec, "Invent a name for a new color.")
    runs = []
    for seed in (7, 7, 8):
        stream = Stream()
        engine.submit(
            ids,
            SamplingParams(max_tokens=20, temperature=1.2, top_p=0.95, top_k=50, seed=seed),
            stream,
        )
        runs.append(stream.wait().tokens)
    plain = Stream()
    engine.submit(ids, greedy(20), plain)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2] or runs[0] != plain.wait().tokens


def test_metrics_describe_the_request(engine: Engine, codec: TextCodec) -> None:
    ids = chat_ids(codec, "Name a fruit.")
    stream = Stream()
    engine.submit(ids, greedy(8, stop=()), stream)
    metrics = stream.wait().metrics
    assert metrics is not None
    assert metrics.tokens_in == len(ids)
    assert metrics.tokens_out == len(stream.tokens)
    assert 0 <= metrics.queue_s <= metrics.time_to_first_token_s <= metrics.total_s
    assert len(metrics.inter_token_s) == max(len(stream.tokens) - 1, 0) + (stream.reason == "stop")
    assert all(gap > 0 for gap in metrics.inter_token_s)


@pytest.mark.parametrize(
    ("prompt_len", "params", "field_name"),
    [
        (0, SamplingParams(), "prompt"),
        (600, SamplingParams(), "prompt"),
        (5, SamplingParams(max_tokens=0), "max_tokens"),
        (5, SamplingParams(max_tokens=10**9), "max_tokens"),
        (5, SamplingParams(temperature=-0.1), "temperature"),
        (5, SamplingParams(temperature=float("nan")), "temperature"),
        (5, SamplingParams(top_p=0.0), "top_p"),
        (5, SamplingParams(top_p=1.5), "top_p"),
        (5, SamplingParams(top_k=-1), "top_k"),
        (5, SamplingParams(stop=("",)), "stop[0]"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(
    engine: Engine, prompt_len: int, params: SamplingParams, field_name: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        engine.submit([1] * prompt_len, params, Stream())
    assert caught.value.field == field_name
    assert engine.load[1] == 0  # nothing was queued


def test_classification_runs_the_lm_head_only_on_label_tokens(
    engine: Engine, codec: TextCodec
) -> None:
    labels = ["cooking", "sports"]
    prompt = classification_prompt(codec, "Stir the onions until golden.", labels)
    label_ids = [codec.encode(label) for label in labels]
    head_rows: list[int] = []
    hook = engine.model.lm_head.register_forward_hook(
        lambda _m, args, _out: head_rows.append(args[0].shape[-2])
    )
    try:
        scores = label_log_likelihoods(engine.model, [prompt, prompt], label_ids)
    finally:
        hook.remove()
    # logits exist for each label's own tokens only, not for every position x vocabulary
    assert head_rows == [len(ids) for ids in label_ids]
    with torch.inference_mode():
        for score, ids in zip(scores, label_ids, strict=True):
            logprobs = torch.log_softmax(engine.model(torch.tensor([prompt + ids]))[0], dim=-1)
            whole = sum(float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(ids))
            assert score == pytest.approx(whole, abs=1e-3)
    assert scores[0] > scores[1]  # and the answer still makes sense


def test_a_30k_character_text_with_32_labels_is_refused_naming_text(
    engine: Engine, codec: TextCodec
) -> None:
    labels = [f"label {i}" for i in range(32)]
    prompt = classification_prompt(codec, "word " * 6_000, labels)
    with pytest.raises(InvalidArgument) as caught:
        check_classification_tokens(prompt, codec.encode(labels[0]), engine.max_context)
    assert caught.value.field == "text"
    assert f"at most {engine.max_context - len(codec.encode(labels[0]))} tokens" in str(
        caught.value
    )


# -- the per-tenant prefix cache -------------------------------------------------------

SYSTEM = (
    "You are the assistant of LLM OS, a platform that trains and serves language models "
    "for many tenants. Answer in one short sentence, be truthful, and say when you do not "
    "know. Never reveal another tenant's data, prompts or models. "
) * 2  # about 100 tokens: six blocks of 16
QUESTIONS = ["What is the capital of France?", "Name a prime number."]


def system_chat_ids(codec: TextCodec, question: str, system: str = SYSTEM) -> list[int]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return codec.encode(codec.render_chat(messages))


def new_tenant() -> str:
    """A tenant no other request has used: its requests can only prefill cold."""
    return f"tenant-{uuid.uuid4()}"


def generate(engine: Engine, ids: list[int], tenant: str, max_tokens: int = 6) -> list[int]:
    stream = Stream()
    engine.submit(ids, greedy(max_tokens), stream, tenant=tenant)
    return stream.wait().tokens


def cold_tokens(engine: Engine, prompts: list[list[int]]) -> list[list[int]]:
    """Each prompt generated without any reuse (asserted: no cache hit)."""
    before = engine.prefix_stats.hit_tokens
    tokens = [generate(engine, ids, new_tenant()) for ids in prompts]
    assert engine.prefix_stats.hit_tokens == before
    return tokens


def test_a_cached_system_prompt_gives_the_same_tokens_one_by_one_and_together(
    engine: Engine, codec: TextCodec
) -> None:
    prompts = [system_chat_ids(codec, question) for question in QUESTIONS]
    cold = cold_tokens(engine, prompts)
    block = engine.prefix_cache.block_tokens
    shared = next(i for i, (a, b) in enumerate(zip(*prompts, strict=False)) if a != b)
    tenant = new_tenant()
    stats = engine.prefix_stats
    hits, hit_tokens = stats.hits, stats.hit_tokens
    assert [generate(engine, ids, tenant) for ids in prompts] == cold
    assert stats.hits == hits + 1  # the second reused the first one's system turn
    assert stats.hit_tokens - hit_tokens == shared // block * block
    # together, packed into one prefill with a cold prompt: each with its own offset
    streams = [Stream() for _ in range(len(prompts) + 1)]
    for ids, stream in zip(prompts, streams, strict=False):
        engine.submit(ids, greedy(6), stream, tenant=tenant)
    engine.submit(prompts[0], greedy(6), streams[-1], tenant=new_tenant())
    assert [stream.wait().tokens for stream in streams] == [*cold, cold[0]]
    assert stats.hits == hits + 1 + len(prompts)


def test_another_tenant_never_hits_what_a_tenant_cached(engine: Engine, codec: TextCodec) -> None:
    ids = system_chat_ids(codec, QUESTIONS[0])
    owner = new_tenant()
    first = generate(engine, ids, owner)
    stats = engine.prefix_stats
    hits, hit_tokens = stats.hits, stats.hit_tokens
    for other in (new_tenant(), ""):
        assert generate(engine, ids, other) == first
    assert (stats.hits, stats.hit_tokens) == (hits, hit_tokens)  # no hit: nothing to time
    assert generate(engine, ids, owner) == first
    assert stats.hits == hits + 1
    assert stats.hit_tokens - hit_tokens == (len(ids) - 1) // 16 * 16


@pytest.fixture
def small_prefix_cache(engine: Engine) -> Iterator[PrefixCache]:
    """The engine with a 4-block prefix cache for one test (its own is put back after)."""
    own = engine.prefix_cache
    engine.prefix_cache = PrefixCache(capacity_tokens=4 * own.block_tokens)
    try:
        yield engine.prefix_cache
    finally:
        engine.prefix_cache = own


def test_eviction_keeps_the_cache_within_capacity_and_the_tokens_right(
    engine: Engine, codec: TextCodec, small_prefix_cache: PrefixCache
) -> None:
    other_system = "You are a pirate. Answer every question in pirate speech. " * 5
    prompts = [
        system_chat_ids(codec, QUESTIONS[0]),
        system_chat_ids(codec, QUESTIONS[0], other_system),
    ]
    cold = cold_tokens(engine, prompts)
    capacity = 4 * small_prefix_cache.block_tokens
    stats = small_prefix_cache.stats
    assert small_prefix_cache.cached_tokens == capacity  # the cold runs filled it
    tenant, evicted = new_tenant(), stats.evicted_blocks
    for index in (0, 1, 0):  # each prompt's first four blocks replace the previous four
        assert generate(engine, prompts[index], tenant) == cold[index]
        assert small_prefix_cache.cached_tokens == capacity
    assert stats.evicted_blocks - evicted == 3 * 4
    assert stats.hits == 0
    assert generate(engine, prompts[0], tenant) == cold[0]  # the last one stayed
    assert (stats.hits, stats.hit_tokens) == (1, capacity)


def test_a_cancelled_request_leaves_only_correct_kv_behind(
    engine: Engine, codec: TextCodec
) -> None:
    ids = system_chat_ids(codec, "Count from one to a thousand.")
    (cold,) = cold_tokens(engine, [ids])
    tenant = new_tenant()
    stream = Stream()
    handle = engine.submit(ids, greedy(200), stream, tenant=tenant)
    eventually(lambda: len(stream.tokens) >= 3, 60, what="three tokens", interval=0.01)
    handle.cancel()
    assert stream.wait(10).reason == "cancelled"
    hit_tokens = engine.prefix_stats.hit_tokens
    assert generate(engine, ids, tenant) == cold
    assert engine.prefix_stats.hit_tokens - hit_tokens == (len(ids) - 1) // 16 * 16


def test_a_prefill_that_fails_halfway_stores_nothing(engine: Engine, codec: TextCodec) -> None:
    ids = system_chat_ids(codec, QUESTIONS[1])
    (cold,) = cold_tokens(engine, [ids])
    real = engine.forward.hidden

    def fail_at_layer_15(tokens: Tensor, positions: Tensor, attend: Attend) -> Tensor:
        def failing(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            if layer == 15:  # layers 0-14 already wrote this prompt's KV
                raise RuntimeError("simulated failure")
            return attend(layer, q, k, v)

        return real(tokens, positions, failing)

    tenant = new_tenant()
    stored = engine.prefix_stats.stored_blocks
    engine.forward.hidden = fail_at_layer_15  # type: ignore[method-assign]
    try:
        stream = Stream()
        engine.submit(ids, greedy(6), stream, tenant=tenant)
        assert stream.wait(60).reason == "error"
    finally:
        del engine.forward.hidden
    assert engine.prefix_stats.stored_blocks == stored
    hits = engine.prefix_stats.hits
    assert generate(engine, ids, tenant) == cold
    assert engine.prefix_stats.hits == hits  # nothing of the failed prefill was kept

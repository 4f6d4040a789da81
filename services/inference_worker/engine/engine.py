"""Continuous (iteration-level) batching.

The compute thread (compute.py) calls `step()` while there is work. Each iteration
(1) drops cancelled sequences, (2) admits waiting requests into free slots and prefills
their prompts together, (3) runs one decode step for every running sequence, and (4)
lets finished sequences leave. New work therefore joins between decode steps and nobody
waits for the longest request of a batch.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from llmos.errors import InvalidArgument, ResourceExhausted, Unavailable
from llmos.generation import SamplingParams
from llmos.model.llama import LlamaForCausalLM
from llmos.model.text import IncrementalDetokenizer, TextCodec
from services.inference_worker.engine.cache import KVCache
from services.inference_worker.engine.forward import ColumnForward
from services.inference_worker.engine.precision import (
    CPU,
    activation_dtype,
    choose_precision,
    decode_probe,
)
from services.inference_worker.engine.prefix_cache import PrefixCache, PrefixStats
from services.inference_worker.engine.sampling import Logprobs, choose_next

log = logging.getLogger("llmos.engine")


@dataclass(frozen=True)
class GenerationMetrics:
    """Per-request timings (seconds) and token counts."""

    queue_s: float
    time_to_first_token_s: float
    inter_token_s: tuple[float, ...]
    total_s: float
    tokens_in: int
    tokens_out: int

    @property
    def mean_inter_token_s(self) -> float:
        """Average gap between consecutive output tokens (0 with fewer than two)."""
        gaps = self.inter_token_s
        return sum(gaps) / len(gaps) if gaps else 0.0


@dataclass(frozen=True)
class TokenEvent:
    """One step of a stream: a token and its text, or the end with reason and metrics."""

    token_id: int | None
    text: str
    finish_reason: str | None = None  # "stop", "length", "cancelled", "error"
    metrics: GenerationMetrics | None = None
    error: str = ""
    logprobs: Logprobs | None = None  # the token's, when the request asked for them


Sink = Callable[[TokenEvent], None]


@dataclass(eq=False)
class Sequence:
    """A request while the engine holds it."""

    request_id: int
    prompt: list[int]
    params: SamplingParams
    sink: Sink
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None
    tenant: str = ""
    submitted_at: float = field(default_factory=time.monotonic)
    admitted_at: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    gaps: list[float] = field(default_factory=list)
    output: list[int] = field(default_factory=list)
    emitted_chars: int = 0
    cache_len: int = 0
    last_token: int = 0
    cancelled: bool = False


class RequestHandle:
    """What a caller keeps: the id and a way to cancel."""

    def __init__(self, engine: Engine, sequence: Sequence) -> None:
        self._engine = engine
        self._sequence = sequence
        self.request_id = sequence.request_id

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step."""
        self._sequence.cancelled = True
        self._engine.wake()


class Engine:
    """Serves generation requests for one model with continuous batching."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        codec: TextCodec,
        *,
        max_batch: int = 32,
        max_context: int = 2048,
        max_queue: int = 1024,
        prefill_token_budget: int = 2048,
        prefix_cache_tokens: int = 8192,
        wake: Callable[[], None] = lambda: None,
        precision: str = "fp32",
        device: torch.device = CPU,
    ) -> None:
        self.model = model.eval()
        self.device = device
        # "auto" is measured here, on the model's own weights; a bad name is a ValueError
        probe = decode_probe(model) if precision == "auto" else None
        self.precision = choose_precision(precision, device, probe=probe)
        log.info(
            "engine precision",
            extra={"precision": self.precision.name, "reason": self.precision.reason},
        )
        self.forward = ColumnForward(self.model, self.precision.name, device)
        self.codec = codec
        self.max_batch = max_batch
        self.max_context = min(max_context, model.config.max_position_embeddings)
        self.max_queue = max_queue
        self.prefill_token_budget = prefill_token_budget
        self.cache = KVCache(
            model.config,
            max_batch,
            self.max_context,
            dtype=activation_dtype(self.precision.name),
            device=device,
        )
        self.prefix_cache = PrefixCache(prefix_cache_tokens)  # 0 tokens: never stores
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._lock = threading.Lock()
        self._wake = wake
        self._ids = itertools.count(1)
        self._stopping = False
        self.steps = 0

    # -- public API (any thread) -------------------------------------------------------

    def submit(
        self, prompt: list[int], params: SamplingParams, sink: Sink, tenant: str = ""
    ) -> RequestHandle:
        """Queue a request; events arrive on `sink` from the engine thread.

        `tenant` scopes the prefix cache: a prompt only reuses KV its own tenant computed.
        """
        if not isinstance(tenant, str):
            raise InvalidArgument("tenant", "must be a string")
        if not prompt:
            raise InvalidArgument("prompt", "must not be empty")
        if len(prompt) >= self.max_context:
            raise InvalidArgument(
                "prompt",
                f"is {len(prompt)} tokens; the context window is {self.max_context} tokens",
            )
        vocab = self.model.config.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise InvalidArgument("prompt", f"token ids must be in [0, {vocab})")
        params.validate(self.max_context - len(prompt), "fit the context window after this prompt")
        if self._stopping:
            raise Unavailable("the engine is shutting down")
        generator = None
        if not params.greedy:
            generator = torch.Generator()
            generator.manual_seed(params.seed if params.seed is not None else int(time.time_ns()))
        sequence = Sequence(
            request_id=next(self._ids),
            prompt=list(prompt),
            params=params,
            sink=sink,
            detokenizer=IncrementalDetokenizer(self.codec),
            generator=generator,
            tenant=tenant,
        )
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise ResourceExhausted(
                    f"the engine queue is full ({self.max_queue} requests)", retry_after_s=1.0
                )
            self._waiting.append(sequence)
        self._wake()
        return RequestHandle(self, sequence)

    def wake(self) -> None:
        """Ask the compute thread to look at this engine now."""
        self._wake()

    def has_work(self) -> bool:
        """Whether a step would do anything."""
        return bool(self._running or self._waiting)

    def shutdown(self) -> None:
        """Refuse new requests and cancel everything queued or running."""
        self._stopping = True
        with self._lock:
            for sequence in [*self._waiting, *self._running]:
                sequence.cancelled = True
        self._wake()

    @property
    def prefix_stats(self) -> PrefixStats:
        """What the prefix cache did: lookups, hits, tokens reused, blocks stored/evicted."""
        return self.prefix_cache.stats

    @property
    def kv_cache_usage(self) -> float:
        """Share of the KV cache's positions (every slot at the full context) that the
        running sequences hold, 0 to 1 (what vLLM reports as its KV cache usage)."""
        held = sum(len(s.prompt) + len(s.output) for s in list(self._running))
        return held / (self.max_batch * self.max_context)

    @property
    def load(self) -> tuple[int, int]:
        """(running, waiting) request counts."""
        return len(self._running), len(self._waiting)

    # -- iterations (compute thread only) ---------------------------------------------

    def step(self) -> None:
        """One iteration: drop cancelled, admit + prefill, one decode step, retire.

        If the model fails, every running request ends with an error; the engine goes on.
        """
        admitted: list[Sequence] = []
        try:
            self._drop_cancelled()
            admitted = self._admit()
            if admitted:
                self._prefill(admitted)
            if self._running:
                self._decode()
        except Exception as exc:
            log.exception("engine step failed")
            # a prompt whose prefill failed is in neither list yet: it must end too
            unfinished = [s for s in admitted if s not in self._running]
            for sequence in [*self._running, *unfinished]:
                self._finish(sequence, "error", str(exc))
            self._running.clear()
        self.steps += 1

    def _drop_cancelled(self) -> None:
        with self._lock:
            waiting = [s for s in self._waiting if s.cancelled]
            for sequence in waiting:
                self._waiting.remove(sequence)
        for sequence in waiting:
            self._finish(sequence, "cancelled")
        self._retire([i for i, s in enumerate(self._running) if s.cancelled], "cancelled")

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        budget = self.prefill_token_budget
        with self._lock:
            while self._waiting and len(self._running) + len(admitted) < self.max_batch:
                cost = len(self._waiting[0].prompt)
                if admitted and cost > budget:
                    break  # long prompts wait for the next iteration, decoding goes on
                budget -= cost
                admitted.append(self._waiting.popleft())
        now = time.monotonic()
        for sequence in admitted:
            sequence.admitted_at = now
        return admitted

    def _prefill(self, batch: list[Sequence]) -> None:
        """Run new prompts packed into one sequence; their KV goes to the next free slots.

        Packing (not padding) keeps every matmul as wide as the total prompt length with
        no wasted columns; attention runs per prompt on its own slice (causal, fused
        kernel), so prompts never see each other. Padding to the longest prompt instead
        wasted up to half the work and pushed masked attention onto SDPA's slow math path.
        A prompt whose prefix its tenant has cached starts from a copy of that KV and
        feeds only the rest; its queries then attend over the slot's cached prefix plus
        themselves with a bottom-right causal mask.
        """
        base = len(self._running)
        lengths = [len(sequence.prompt) for sequence in batch]
        self.cache.ensure(max(lengths))
        device = self.device
        reused = [self._reuse_prefix(sequence, base + i) for i, sequence in enumerate(batch)]
        fresh = [length - done for length, done in zip(lengths, reused, strict=True)]
        starts = [sum(fresh[:i]) for i in range(len(fresh))]
        tokens = torch.tensor(
            [[token for s, done in zip(batch, reused, strict=True) for token in s.prompt[done:]]],
            device=device,
        )
        positions = torch.cat(
            [
                torch.arange(done, length, device=device)
                for done, length in zip(reused, lengths, strict=True)
            ]
        )[None, :]
        masks = [
            _bottom_right_causal(count, done + count, device) if done else None
            for done, count in zip(reused, fresh, strict=True)
        ]
        cache = self.cache

        def attend(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            pieces = []
            for index, (start, count, done) in enumerate(zip(starts, fresh, reused, strict=True)):
                end, slot, mask = start + count, base + index, masks[index]
                keys, values = k[:, :, start:end], v[:, :, start:end]
                cache.keys(layer)[slot, :, done : done + count] = keys[0]
                cache.values(layer)[slot, :, done : done + count] = values[0]
                if mask is not None:  # attend over the cached prefix too
                    keys = cache.keys(layer)[slot : slot + 1, :, : done + count]
                    values = cache.values(layer)[slot : slot + 1, :, : done + count]
                pieces.append(
                    F.scaled_dot_product_attention(
                        q[:, :, start:end],
                        keys,
                        values,
                        attn_mask=mask,
                        is_causal=mask is None,
                        enable_gqa=True,
                    )
                )
            return torch.cat(pieces, dim=2)

        hidden = self.forward.hidden(tokens, positions, attend)
        for index, sequence in enumerate(batch):  # only now is every layer's KV complete
            self._remember_prefix(sequence, base + index)
        last = [start + count - 1 for start, count in zip(starts, fresh, strict=True)]
        logits = self.forward.logits(hidden[:, last])
        for sequence, length in zip(batch, lengths, strict=True):
            sequence.cache_len = length
        self._running.extend(batch)
        self._accept(batch, logits, offset=base)

    def _reuse_prefix(self, sequence: Sequence, slot: int) -> int:
        """Copy the tenant's longest cached prefix of the prompt into `slot`; its length."""
        done = 0
        for block in self.prefix_cache.lookup(sequence.tenant, sequence.prompt):
            self.cache.load(slot, done, block)
            done += block.shape[3]
        return done

    def _remember_prefix(self, sequence: Sequence, slot: int) -> None:
        """Offer the prompt's full blocks, as computed in `slot`, to the prefix cache."""
        self.prefix_cache.store(
            sequence.tenant,
            sequence.prompt,
            lambda start, end: self.cache.span(slot, start, end),
        )

    def _decode(self) -> None:
        """Feed every running sequence its last token; sample the next."""
        running = self._running
        count = len(running)
        device = self.device
        lengths = [s.cache_len for s in running]
        positions = torch.tensor(lengths, device=device)
        tokens = torch.tensor([[s.last_token] for s in running], device=device)
        span = max(lengths) + 1  # from the Python list: no device sync
        self.cache.ensure(span)
        mask = (torch.arange(span, device=device)[None, :] <= positions[:, None])[:, None, None, :]
        rows = torch.arange(count, device=device)
        cache = self.cache

        def attend(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            keys, values = cache.keys(layer), cache.values(layer)
            keys[rows, :, positions] = k[:, :, 0]
            values[rows, :, positions] = v[:, :, 0]
            return F.scaled_dot_product_attention(
                q, keys[:count, :, :span], values[:count, :, :span], attn_mask=mask, enable_gqa=True
            )

        logits = self.forward.logits(self.forward.hidden(tokens, positions[:, None], attend))
        for sequence in running:
            sequence.cache_len += 1
        self._accept(list(running), logits, offset=0)

    def _accept(self, batch: list[Sequence], logits: Tensor, offset: int) -> None:
        """Sample, stream text, and retire sequences that are done."""
        chosen, logprobs = choose_next(
            logits,
            [s.params for s in batch],
            [s.generator for s in batch],
            [s.output for s in batch],
        )
        now = time.monotonic()
        done: list[tuple[int, str]] = []
        for index, (sequence, token, reported) in enumerate(
            zip(batch, chosen, logprobs, strict=True)
        ):
            if sequence.first_token_at == 0.0:
                sequence.first_token_at = now
            else:
                sequence.gaps.append(now - sequence.last_token_at)
            sequence.last_token_at = now
            reason = self._advance(sequence, token, reported)
            if reason is not None:
                done.append((offset + index, reason))
        for reason in ("stop", "length"):
            self._retire([i for i, r in done if r == reason], reason)

    def _advance(
        self, sequence: Sequence, token: int, logprobs: Logprobs | None = None
    ) -> str | None:
        """Take one token; return a finish reason if the sequence is complete."""
        if token in self.codec.stop_token_ids and not sequence.params.ignore_eos:
            return "stop"
        sequence.output.append(token)
        sequence.last_token = token
        sequence.detokenizer.push(token)
        text = sequence.detokenizer.text
        for stop in sequence.params.stop:
            found = text.find(stop, max(0, sequence.emitted_chars - len(stop) + 1))
            if found >= 0:
                self._emit(sequence, token, text[sequence.emitted_chars : found], logprobs)
                sequence.emitted_chars = len(text)  # nothing after a stop sequence is sent
                return "stop"
        # hold back a tail that could still become a stop sequence
        safe = len(text) - _partial_stop_suffix(text, sequence.params.stop)
        self._emit(sequence, token, text[sequence.emitted_chars : safe], logprobs)
        sequence.emitted_chars = max(sequence.emitted_chars, safe)
        if len(sequence.output) >= sequence.params.max_tokens:
            return "length"
        if sequence.cache_len + 1 >= self.max_context:
            return "length"
        return None

    def _emit(self, sequence: Sequence, token: int, text: str, logprobs: Logprobs | None) -> None:
        sequence.sink(TokenEvent(token_id=token, text=text, logprobs=logprobs))

    def _retire(self, indices: list[int], reason: str) -> None:
        """Remove running sequences, keeping slots 0..B-1 dense."""
        for index in sorted(indices, reverse=True):
            sequence = self._running[index]
            last = len(self._running) - 1
            if index != last:
                mover = self._running[last]
                self.cache.move(last, index, mover.cache_len)
                self._running[index] = mover
            self._running.pop()
            self._finish(sequence, reason)

    def _finish(self, sequence: Sequence, reason: str, error: str = "") -> None:
        text = sequence.detokenizer.text
        tail = (
            text[sequence.emitted_chars :] if reason != "stop" or not sequence.params.stop else ""
        )
        if reason == "stop" and not any(s in text for s in sequence.params.stop):
            tail = text[sequence.emitted_chars :]
        now = time.monotonic()
        admitted = sequence.admitted_at or now
        metrics = GenerationMetrics(
            queue_s=admitted - sequence.submitted_at,
            time_to_first_token_s=(sequence.first_token_at or now) - sequence.submitted_at,
            inter_token_s=tuple(sequence.gaps),
            total_s=now - sequence.submitted_at,
            tokens_in=len(sequence.prompt),
            tokens_out=len(sequence.output),
        )
        sequence.sink(TokenEvent(None, tail, finish_reason=reason, metrics=metrics, error=error))


def _bottom_right_causal(queries: int, keys: int, device: torch.device) -> Tensor:
    """Mask for the last `queries` of `keys` positions: each sees its past and itself.

    SDPA's is_causal aligns the triangle top-left, which is wrong when queries < keys.
    """
    ones = torch.ones(queries, keys, dtype=torch.bool, device=device)
    return ones.tril(diagonal=keys - queries)


def _partial_stop_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is a proper prefix of a stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest

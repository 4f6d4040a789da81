"""The LLM behind one Triton model instance: the engine, its streams and its batches.

This runs inside Triton's Python-backend stub process (see triton_backend.py, the thin
adapter Triton calls), never in the worker: the worker only talks to Triton. It is kept
free of Triton's API so that the benchmark and tests can host it in a plain process.

Threads: torch runs on one compute thread (engine/compute.py explains why one); tokens
leave through one outbox thread. The engine hands each token to the outbox and goes on;
the outbox sends what has piled up for a stream as one message, so under load (many
streams, each step faster than sending every token) tokens coalesce and the per-message
cost is paid once for several tokens, while at light load each token goes out at once.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from llmos import tracing
from llmos.errors import InvalidArgument, LLMOSError
from llmos.generation import sampling_params_from_proto
from llmos.model.folder import load_model
from llmos.model.names import CHAT_ROLES
from llmos.model.text import TextCodec
from llmos.v1 import inference_pb2
from llmos.work import work_error
from services.inference_worker.engine.compute import ComputeLoop
from services.inference_worker.engine.engine import Engine, RequestHandle, TokenEvent
from services.inference_worker.engine.precision import activation_dtype
from services.inference_worker.engine.scoring import (
    check_classification_tokens,
    classification_prompt,
    label_log_likelihoods,
    rank_labels,
)

log = logging.getLogger("llmos.hosted")

MAX_EMBED_TOKENS = 512
#: texts embedded together in one forward pass at most
EMBED_BATCH = 32

#: send(serialized response, final): how a response reaches the requester
Send = Callable[[bytes, bool], None]


@dataclass(frozen=True)
class HostOptions:
    """How to run the model: what the Triton model configuration's parameters say."""

    max_batch: int = 32
    max_context: int = 2048
    device: str = "cpu"
    precision: str = "auto"
    prefix_cache_tokens: int = 8192
    #: under load, tokens per streamed message (1: every token goes out at once)
    coalesce_tokens: int = 2


class _Stream:
    """One generation's way out: its events, coalesced, become GenerateChunks."""

    def __init__(self, key: str, send: Send, spell: Callable[[int], bytes]) -> None:
        self.key = key
        self.send = send
        self.spell = spell  # a token id's bytes, for log-probabilities
        self.handle: RequestHandle | None = None
        self.closed = False

    def flush(self, events: list[TokenEvent]) -> bool:
        """Send the events as one chunk; True once the stream has ended."""
        final = events[-1].finish_reason is not None
        try:
            self.send(_chunk(events, self.spell).SerializeToString(), final)
        except Exception:  # the requester went away (Triton closed the stream): stop
            log.info("stream closed by its requester", extra={"request": self.key})
            if self.handle is not None:
                self.handle.cancel()
            return True
        return final


class _Outbox:
    """The thread that sends streamed tokens, coalescing what piled up per stream.

    Under load (`busy()`: many streams decoding together) a stream's tokens are also
    held until `coalesce` of them are ready, so each message through Triton, the worker,
    NATS and the gateway carries several: per-message work on every hop is what the
    whole path adds to the engine's own cost, and it is paid on the same cores. Its last
    event is never held, and nothing is held longer than `HOLD_S`.
    """

    HOLD_S = 0.5

    def __init__(self, coalesce: int = 1, busy: Callable[[], bool] = lambda: False) -> None:
        self._coalesce = coalesce
        self._busy = busy
        self._queue: queue.SimpleQueue[tuple[_Stream, TokenEvent] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="llmos-outbox", daemon=True)
        self._thread.start()

    def put(self, stream: _Stream, event: TokenEvent) -> None:
        self._queue.put((stream, event))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        pending: dict[_Stream, list[TokenEvent]] = {}
        stopping = False
        while not stopping:
            try:
                item = self._queue.get(timeout=self.HOLD_S if pending else None)
            except queue.Empty:
                item, timed_out = None, True
            else:
                timed_out = False
            while item is not None:
                stream, event = item
                pending.setdefault(stream, []).append(event)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            else:
                stopping = not timed_out
            hold = 1 if stopping or timed_out or not self._busy() else self._coalesce
            for stream, events in list(pending.items()):
                tokens = sum(e.token_id is not None for e in events)
                if events[-1].finish_reason is None and tokens < hold:
                    continue
                del pending[stream]
                if not stream.closed:
                    stream.closed = stream.flush(events)


class HostedLLM:
    """Generation, cancellation, embeddings and classification for one model folder."""

    def __init__(self, folder: Path, options: HostOptions) -> None:
        self.options = options
        self.compute = ComputeLoop()
        self.compute.start()
        self.codec = TextCodec(folder)
        self.model = self.compute.call(lambda: load_model(folder)).result()
        device = torch.device(options.device)
        self.engine = self.compute.call(
            lambda: Engine(
                self.model,
                self.codec,
                max_batch=options.max_batch,
                max_context=options.max_context,
                prefix_cache_tokens=options.prefix_cache_tokens,
                wake=self.compute.wake,
                precision=options.precision,  # "auto": measured here, at load
                device=device,
            )
        ).result()
        if device.type != "cpu":  # embeddings and classification run beside the engine
            dtype = activation_dtype(self.engine.precision.name)
            self.model = self.compute.call(lambda: self.model.to(device, dtype)).result()
        self.compute.attach(self.engine)
        self._streams: dict[str, _Stream] = {}
        self._outbox = _Outbox(options.coalesce_tokens, self._busy)
        self._embeds: list[tuple[inference_pb2.EmbedWork, list[list[int]], Send]] = []
        self._embeds_lock = threading.Lock()

    def _busy(self) -> bool:
        """Whether at least half the engine's batch is decoding (tokens coalesce then)."""
        running, _ = self.engine.load
        return running * 2 >= self.engine.max_batch

    def close(self) -> None:
        """Cancel everything in flight, let the engine retire it, stop the threads."""
        self.engine.shutdown()
        while self.engine.has_work():  # each pass of the compute loop retires what it can
            self.compute.call(lambda: None).result()
        self.compute.detach(self.engine)
        self.compute.stop()
        self._outbox.close()

    # -- generate and cancel ------------------------------------------------------------

    def _prompt_ids(self, work: inference_pb2.GenerateWork) -> list[int]:
        if work.WhichOneof("input") == "chat":
            messages = [{"role": m.role, "content": m.content} for m in work.chat.messages]
            for index, message in enumerate(messages):
                if message["role"] not in CHAT_ROLES:
                    raise InvalidArgument(
                        f"messages[{index}].role", f"must be one of {', '.join(CHAT_ROLES)}"
                    )
            return self.codec.encode(self.codec.render_chat(messages))
        if not work.prompt:
            raise InvalidArgument("prompt", "must not be empty")
        return self.codec.encode(work.prompt)

    def generate(self, work: inference_pb2.GenerateWork, send: Send) -> None:
        """Start a generation whose chunks go to `send`; refusals raise LLMOSError."""
        key = work.request_id
        stream = _Stream(key, send, self.codec.token_bytes)
        outbox = self._outbox
        # from the engine's queue to the last token; ended on the compute thread
        span = tracing.start("engine generate", work.traceparent, attributes={tracing.WORK_ID: key})

        def sink(event: TokenEvent) -> None:  # on the compute thread: hand over, go on
            outbox.put(stream, event)
            if event.finish_reason is not None:
                self._streams.pop(key, None)
                _end_span(span, event)

        self._streams[key] = stream
        try:
            # the prefix cache is the tenant's own: no tenant can time another's prompts
            stream.handle = self.engine.submit(
                self._prompt_ids(work),
                sampling_params_from_proto(work.params),
                sink,
                tenant=work.tenant,
            )
        except BaseException as exc:
            self._streams.pop(key, None)
            span.record_exception(exc)
            span.end()
            raise

    def stats(self) -> inference_pb2.EngineLoad:
        """How full the engine is now (any thread: counts read without the compute loop)."""
        running, waiting = self.engine.load
        return inference_pb2.EngineLoad(
            running=running, waiting=waiting, kv_cache_usage_ratio=self.engine.kv_cache_usage
        )

    def cancel(self, key: str) -> bool:
        """Stop a running generation; False if none runs under that key."""
        stream = self._streams.get(key)
        if stream is None or stream.handle is None:
            return False
        stream.handle.cancel()
        return True

    # -- embed and classify ----------------------------------------------------------------

    def embed(self, work: inference_pb2.EmbedWork, send: Send) -> None:
        """Embed the texts; requests arriving while the compute thread is busy are run
        together in one forward pass (dynamic batching)."""
        sequences = []
        for index, text in enumerate(work.inputs):
            ids = self.codec.encode(text)[:MAX_EMBED_TOKENS]
            if not ids:
                raise InvalidArgument(f"inputs[{index}]", "is empty")
            sequences.append(ids)
        if not sequences:
            raise InvalidArgument("inputs", "must not be empty")
        with self._embeds_lock:
            self._embeds.append((work, sequences, send))
            first = len(self._embeds) == 1
        if first:  # one drain job takes everything queued by the time it runs
            self.compute.call(self._run_embeds)

    def _run_embeds(self) -> None:
        with self._embeds_lock:
            batch, self._embeds = self._embeds, []
        while batch:
            taken: list[tuple[inference_pb2.EmbedWork, list[list[int]], Send]] = []
            count = 0
            while batch and (not taken or count + len(batch[0][1]) <= EMBED_BATCH):
                taken.append(batch.pop(0))
                count += len(taken[-1][1])
            try:
                vectors, lengths = self._embed([s for _, seqs, _ in taken for s in seqs])
            except Exception as exc:
                log.exception("embedding failed")
                error = inference_pb2.EmbedResult(error=work_error(LLMOSError(str(exc))))
                for _, _, send in taken:
                    _send_quietly(send, error.SerializeToString())
                continue
            row = 0
            for _, sequences, send in taken:
                result = inference_pb2.EmbedResult()
                for _ in sequences:
                    result.embeddings.add(values=vectors[row].tolist())
                    result.prompt_tokens += int(lengths[row])
                    row += 1
                _send_quietly(send, result.SerializeToString())

    def _embed(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean-pooled, L2-normalised final hidden states of right-padded sequences.

        Right padding with causal attention means real tokens never attend to the
        padding, so no padding mask is needed.
        """
        width = max(len(s) for s in sequences)
        ids = torch.zeros(len(sequences), width, dtype=torch.long)
        valid = torch.zeros(len(sequences), width, dtype=torch.bool)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            valid[row, : len(sequence)] = True
        device = self.engine.device
        ids, valid = ids.to(device), valid.to(device)
        hidden = self.model.hidden_states(ids, torch.arange(width, device=device).expand_as(ids))
        mask = valid.unsqueeze(-1).to(hidden.dtype)
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        return pooled.float().cpu(), valid.sum(1).cpu()

    def classify(self, work: inference_pb2.ClassifyWork, send: Send) -> None:
        """Score every label as a continuation of the text; the answer ranks them."""
        labels = list(work.labels)
        if not labels:
            raise InvalidArgument("labels", "must not be empty")
        prompt = classification_prompt(self.codec, work.text, labels)
        label_ids = [self.codec.encode(label) for label in labels]
        for ids in label_ids:
            check_classification_tokens(prompt, ids, self.engine.max_context)

        def run() -> None:
            try:
                scores = label_log_likelihoods(self.model, [prompt] * len(labels), label_ids)
            except Exception as exc:
                log.exception("classification failed")
                failed = inference_pb2.ClassifyResult(error=work_error(LLMOSError(str(exc))))
                _send_quietly(send, failed.SerializeToString())
                return
            result = rank_labels(labels, scores)
            result.prompt_tokens = sum(len(prompt) + len(ids) for ids in label_ids)
            _send_quietly(send, result.SerializeToString())

        self.compute.call(run)


def _send_quietly(send: Send, payload: bytes) -> None:
    """Send a one-shot answer; a requester that went away is no error of ours."""
    try:
        send(payload, True)
    except Exception:
        log.info("an answer's requester went away")


def _chunk(events: list[TokenEvent], spell: Callable[[int], bytes]) -> inference_pb2.GenerateChunk:
    """The GenerateChunk for events of one stream that are sent together."""
    chunk = inference_pb2.GenerateChunk(
        text="".join(e.text for e in events),
        token_ids=[e.token_id for e in events if e.token_id is not None],
    )
    for event in events:
        if event.logprobs is not None and event.token_id is not None:
            chunk.logprobs.append(
                inference_pb2.TokenLogprob(
                    token_id=event.token_id,
                    token=spell(event.token_id),
                    logprob=event.logprobs.logprob,
                    top=[
                        inference_pb2.TokenLogprob(token_id=i, token=spell(i), logprob=lp)
                        for i, lp in event.logprobs.top
                    ],
                )
            )
    final = events[-1]
    if final.finish_reason is not None:
        chunk.done = True
        chunk.finish_reason = final.finish_reason
        if final.finish_reason == "error":
            chunk.error.CopyFrom(
                inference_pb2.WorkError(code="INTERNAL", message="the model failed to run")
            )
        if final.metrics is not None:
            m = final.metrics
            chunk.usage.prompt_tokens, chunk.usage.completion_tokens = m.tokens_in, m.tokens_out
            chunk.timings.queue_s = m.queue_s
            chunk.timings.time_to_first_token_s = m.time_to_first_token_s
            chunk.timings.mean_inter_token_s = m.mean_inter_token_s
            chunk.timings.total_s = m.total_s
    return chunk


def _end_span(span: tracing.Span, event: TokenEvent) -> None:
    """The engine's span ends with what the generation did."""
    span.set_attribute("llmos.finish_reason", event.finish_reason or "")
    if event.metrics is not None:
        span.set_attribute("llmos.prompt_tokens", event.metrics.tokens_in)
        span.set_attribute("llmos.completion_tokens", event.metrics.tokens_out)
        span.set_attribute("llmos.time_to_first_token_s", event.metrics.time_to_first_token_s)
    span.end()

"""`llmos generate`, `llmos embed` and `llmos classify`; the sampling flags `llmos chat`
shares, and how a streamed answer is printed."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, TextIO

import typer

from llmos.cli.connection import connection
from llmos.cli.prompts import prompt_text, texts_from
from llmos.priority import PriorityClass
from llmos.v1 import gateway_pb2, inference_pb2

ModelOption = Annotated[str, typer.Option(help="model name (default: the default model)")]
MaxTokens = Annotated[int, typer.Option(help="most tokens to generate (0: 128)")]
Temperature = Annotated[
    float, typer.Option(help="0 is greedy (and cacheable); higher is more random")
]
TopK = Annotated[int, typer.Option(help="sample from the k likeliest tokens (0: all)")]
TopP = Annotated[
    float, typer.Option(help="sample from the likeliest tokens holding this much probability")
]
Seed = Annotated[int | None, typer.Option(help="seed, for sampling that repeats")]
Stop = Annotated[list[str] | None, typer.Option(metavar="TEXT", help="stop sequence (repeatable)")]
Priority = Annotated[str, typer.Option(help="critical, high, normal or batch")]
Quiet = Annotated[bool, typer.Option("--quiet", help="no usage line on stderr")]
System = Annotated[str, typer.Option(help="system message (with --chat)")]


@dataclass(frozen=True)
class Sampling:
    """The generation flags, as the API takes them."""

    max_tokens: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    priority: str = "normal"

    def params(self) -> inference_pb2.GenerationParams:
        """GenerationParams for a Generate or Chat request."""
        params = inference_pb2.GenerationParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop=list(self.stop),
        )
        if self.seed is not None:
            params.seed = self.seed
        return params

    def priority_value(self) -> int:
        """The priority class's proto number (a bad name is refused with a sentence)."""
        return int(PriorityClass.parse(self.priority, "--priority"))


def usage_line(last: gateway_pb2.GenerateResponse) -> str:
    """What a finished generation cost and how fast it came."""
    if last.cached:
        return f"[{last.model}: {last.finish_reason}, answered from the cache]"
    return (
        f"[{last.model}: {last.finish_reason}, {last.usage.prompt_tokens} prompt + "
        f"{last.usage.completion_tokens} completion tokens, first token after "
        f"{last.timings.time_to_first_token_s * 1000:.0f} ms, "
        f"{last.timings.mean_inter_token_s * 1000:.0f} ms/token]"
    )


def stream_answer(
    responses: Iterable[gateway_pb2.GenerateResponse], out: TextIO
) -> tuple[str, gateway_pb2.GenerateResponse | None]:
    """Print each piece of text as it arrives; the whole text and the final message."""
    pieces: list[str] = []
    last = None
    for response in responses:
        out.write(response.text)
        out.flush()
        pieces.append(response.text)
        last = response
    out.write("\n")
    out.flush()
    return "".join(pieces), last


def generate(
    ctx: typer.Context,
    prompt: Annotated[
        str | None,
        typer.Argument(help="the prompt; `-` or none (with a pipe) reads it from stdin"),
    ] = None,
    chat: Annotated[
        bool, typer.Option("--chat", help="treat the prompt as a user message")
    ] = False,
    system: System = "",
    model: ModelOption = "",
    max_tokens: MaxTokens = 0,
    temperature: Temperature = 0.0,
    top_k: TopK = 0,
    top_p: TopP = 0.0,
    seed: Seed = None,
    stop: Stop = None,
    quiet: Quiet = False,
    priority: Priority = "normal",
) -> None:
    """Stream a completion (or, with --chat, an assistant's answer) to stdout."""
    conn = connection(ctx)
    text = prompt_text(prompt, sys.stdin)
    sampling = Sampling(max_tokens, temperature, top_k, top_p, seed, tuple(stop or ()), priority)
    params, rank = sampling.params(), sampling.priority_value()
    if chat:
        messages = [inference_pb2.ChatMessage(role="user", content=text)]
        if system:
            messages.insert(0, inference_pb2.ChatMessage(role="system", content=system))
        request = gateway_pb2.ChatRequest(model=model, messages=messages, params=params)
        request.priority = rank  # type: ignore[assignment]
        responses = conn.gateway_stub().Chat(request, timeout=conn.timeout)
    else:
        completion = gateway_pb2.GenerateRequest(model=model, prompt=text, params=params)
        completion.priority = rank  # type: ignore[assignment]
        responses = conn.gateway_stub().Generate(completion, timeout=conn.timeout)
    _, last = stream_answer(responses, sys.stdout)
    if last is not None and not quiet:
        print(usage_line(last), file=sys.stderr)


def embed(
    ctx: typer.Context,
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="texts to embed; `-` or none (with a pipe): one per line of stdin"),
    ] = None,
    model: ModelOption = "",
) -> None:
    """Embeddings of texts: one JSON array of floats (L2-normalised) per text."""
    conn = connection(ctx)
    inputs = texts_from(texts or [], sys.stdin)
    reply = conn.gateway_stub().Embed(
        gateway_pb2.EmbedRequest(model=model, inputs=inputs), timeout=conn.timeout
    )
    for embedding in reply.embeddings:
        print(json.dumps([round(v, 6) for v in embedding.values]))


def classify(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="the text to classify; `-` reads it from stdin")],
    labels: Annotated[list[str], typer.Argument(help="the candidate labels")],
    model: ModelOption = "",
) -> None:
    """Rank labels for a text: most likely first, with probabilities."""
    conn = connection(ctx)
    request = gateway_pb2.ClassifyRequest(
        model=model, text=prompt_text(text, sys.stdin, "text"), labels=labels
    )
    reply = conn.gateway_stub().Classify(request, timeout=conn.timeout)
    for score in reply.scores:
        print(
            f"{score.probability:6.1%}  {score.label}  (log-likelihood {score.log_likelihood:.3f})"
        )

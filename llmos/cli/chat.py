"""`llmos chat`: a conversation with a model, its answers streamed as they are generated.

The API keeps no conversation, so each turn sends the whole transcript. On a terminal
the prompt has line editing (readline, when Python has it); `/reset` forgets the
conversation, `/exit` or Ctrl-D ends it, Ctrl-C stops an answer. When stdin is not a
terminal each line is one turn, so a conversation can be piped in and tested.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Literal

import grpc
import typer

from llmos.cli.connection import connection
from llmos.cli.errors import explain
from llmos.cli.inference import (
    MaxTokens,
    ModelOption,
    Priority,
    Quiet,
    Sampling,
    Seed,
    Stop,
    Temperature,
    TopK,
    TopP,
    stream_answer,
    usage_line,
)
from llmos.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2

Line = Literal["ask", "reset", "exit", "blank", "unknown"]
COMMANDS = "/reset forgets the conversation, /exit or Ctrl-D ends it"


def line_kind(line: str) -> Line:
    """What a line typed at the prompt asks for."""
    word = line.strip()
    if not word:
        return "blank"
    if word in ("/exit", "/quit"):
        return "exit"
    if word == "/reset":
        return "reset"
    if word.startswith("/") and " " not in word:
        return "unknown"
    return "ask"


@dataclass
class Transcript:
    """The conversation so far: the system message, then user and assistant turns."""

    system: str = ""
    turns: list[inference_pb2.ChatMessage] = field(default_factory=list)

    def messages(self) -> list[inference_pb2.ChatMessage]:
        """Everything the model is to read, in order."""
        head = [inference_pb2.ChatMessage(role="system", content=self.system)]
        return [*(head if self.system else []), *self.turns]

    def ask(self, text: str) -> list[inference_pb2.ChatMessage]:
        """Add the user's turn; the messages to send for it."""
        self.turns.append(inference_pb2.ChatMessage(role="user", content=text))
        return self.messages()

    def answered(self, text: str) -> None:
        """Add the assistant's answer to the last question."""
        self.turns.append(inference_pb2.ChatMessage(role="assistant", content=text))

    def withdraw(self) -> None:
        """Forget the last question, which got no (whole) answer."""
        if self.turns and self.turns[-1].role == "user":
            self.turns.pop()

    def reset(self) -> None:
        """Start over (the system message stays)."""
        self.turns.clear()


def _line_editing() -> None:
    """Give input() line editing and history, where Python has readline."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (loading it is what turns editing on)


def _lines(interactive: bool) -> Iterator[str]:
    if not interactive:
        for line in sys.stdin:
            yield line.rstrip("\n")
        return
    while True:
        try:
            yield input("> ")
        except EOFError:
            print(file=sys.stderr)
            return


def _turn(
    stub: gateway_pb2_grpc.GatewayStub,
    request: gateway_pb2.ChatRequest,
    timeout: float,
    quiet: bool,
) -> str:
    """Stream one answer; its text. Ctrl-C cancels the call before it propagates."""
    responses = stub.Chat(request, timeout=timeout)
    try:
        text, last = stream_answer(responses, sys.stdout)
    except KeyboardInterrupt:
        responses.cancel()
        raise
    if last is not None and not quiet:
        print(usage_line(last), file=sys.stderr)
    return text


def chat(
    ctx: typer.Context,
    system: Annotated[str, typer.Option(help="system message, kept across /reset")] = "",
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
    """Chat with a model, its answers streamed as they come.

    Each turn sends the whole conversation. /reset forgets it, /exit or Ctrl-D ends it,
    Ctrl-C stops an answer. When stdin is not a terminal, each line is one turn."""
    conn = connection(ctx)
    sampling = Sampling(max_tokens, temperature, top_k, top_p, seed, tuple(stop or ()), priority)
    params, rank = sampling.params(), sampling.priority_value()
    interactive = sys.stdin.isatty()
    if interactive:
        _line_editing()
        print(f"chat with {model or 'the default model'}: {COMMANDS}", file=sys.stderr)
    stub = conn.gateway_stub()
    transcript = Transcript(system)
    for line in _lines(interactive):
        kind = line_kind(line)
        if kind == "exit":
            break
        if kind == "reset":
            transcript.reset()
            if interactive:
                print("(the conversation starts over)", file=sys.stderr)
        elif kind == "unknown":
            print(f"llmos: unknown command {line.strip()}: {COMMANDS}", file=sys.stderr)
        elif kind == "ask":
            request = gateway_pb2.ChatRequest(
                model=model, messages=transcript.ask(line), params=params
            )
            request.priority = rank  # type: ignore[assignment]
            try:
                transcript.answered(_turn(stub, request, conn.timeout, quiet))
            except (grpc.RpcError, KeyboardInterrupt) as exc:
                transcript.withdraw()  # the question goes too: ask again, or something else
                if not interactive:
                    raise
                explained = explain(exc, conn.address)
                if isinstance(exc, KeyboardInterrupt):
                    print("\n(answer stopped)", file=sys.stderr)
                elif explained is not None:
                    print(f"llmos: {explained.sentence}", file=sys.stderr)

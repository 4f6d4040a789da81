"""`llmos` — talk to a running LLM OS through its gateway.

The gateway address comes from --gateway, else $LLMOS_GATEWAY, else the stack file the
dev launcher writes (<data dir>/stack.json), else 127.0.0.1:50051.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import grpc
from google.protobuf import json_format

from llmos.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2

DEFAULT_GATEWAY = "127.0.0.1:50051"
EXIT_OK, EXIT_NOT_READY, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2, 3


def gateway_address(explicit: str | None) -> str:
    """Resolve which gateway to call (see module docstring)."""
    if explicit:
        return explicit
    if os.environ.get("LLMOS_GATEWAY"):
        return os.environ["LLMOS_GATEWAY"]
    stack_file = Path(os.environ.get("LLMOS_DATA_DIR", "var")) / "stack.json"
    try:
        return str(json.loads(stack_file.read_text())["gateway"])
    except (OSError, ValueError, KeyError):
        return DEFAULT_GATEWAY


def _stub(args: argparse.Namespace) -> gateway_pb2_grpc.GatewayStub:
    return gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(gateway_address(args.gateway)))


def cmd_status(args: argparse.Namespace) -> int:
    """Print every service instance and whether it is SERVING."""
    status = _stub(args).GetSystemStatus(gateway_pb2.GetSystemStatusRequest(), timeout=args.timeout)
    if args.json:
        print(json_format.MessageToJson(status, preserving_proto_field_name=True))
        return EXIT_OK if status.ready else EXIT_NOT_READY
    state_name = gateway_pb2.ServiceStatus.State.Name
    rows = [
        (
            s.instance.service,
            state_name(s.state).removeprefix("STATE_"),
            s.instance.address,
            s.instance.instance_id,
            s.detail,
        )
        for s in status.services
    ]
    rows += [
        (name, "MISSING", "-", "-", "no instance registered") for name in status.missing_services
    ]
    header = ("SERVICE", "STATE", "ADDRESS", "INSTANCE", "DETAIL")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )
    print(f"\nLLM OS is {'ready' if status.ready else 'NOT ready'}")
    return EXIT_OK if status.ready else EXIT_NOT_READY


def cmd_events(args: argparse.Namespace) -> int:
    """Stream events as JSON lines until interrupted."""
    request = gateway_pb2.SubscribeEventsRequest(kinds=args.kind or [])
    for event in _stub(args).SubscribeEvents(request):
        print(
            json_format.MessageToJson(event, indent=None, preserving_proto_field_name=True),
            flush=True,
        )
    return EXIT_OK


def _params(args: argparse.Namespace) -> inference_pb2.GenerationParams:
    params = inference_pb2.GenerationParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop=args.stop or [],
    )
    if args.seed is not None:
        params.seed = args.seed
    return params


def _print_stream(responses: Iterable[gateway_pb2.GenerateResponse], quiet: bool) -> int:
    last = None
    for response in responses:
        print(response.text, end="", flush=True)
        last = response
    print()
    if last is not None and not quiet:
        print(
            f"[{last.model}: {last.finish_reason}, {last.usage.prompt_tokens} prompt + "
            f"{last.usage.completion_tokens} completion tokens, first token after "
            f"{last.timings.time_to_first_token_s * 1000:.0f} ms, "
            f"{last.timings.mean_inter_token_s * 1000:.0f} ms/token]",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream a completion (or, with --chat, an assistant answer) to stdout."""
    stub = _stub(args)
    if args.chat:
        messages = [inference_pb2.ChatMessage(role="user", content=args.prompt)]
        if args.system:
            messages.insert(0, inference_pb2.ChatMessage(role="system", content=args.system))
        chat = gateway_pb2.ChatRequest(model=args.model, messages=messages, params=_params(args))
        return _print_stream(stub.Chat(chat, timeout=args.timeout), args.quiet)
    request = gateway_pb2.GenerateRequest(
        model=args.model, prompt=args.prompt, params=_params(args)
    )
    return _print_stream(stub.Generate(request, timeout=args.timeout), args.quiet)


def cmd_embed(args: argparse.Namespace) -> int:
    """Print one JSON array of floats per input text."""
    reply = _stub(args).Embed(
        gateway_pb2.EmbedRequest(model=args.model, inputs=args.texts), timeout=args.timeout
    )
    for embedding in reply.embeddings:
        print(json.dumps([round(v, 6) for v in embedding.values]))
    return EXIT_OK


def cmd_classify(args: argparse.Namespace) -> int:
    """Print the labels, most likely first, with probabilities."""
    reply = _stub(args).Classify(
        gateway_pb2.ClassifyRequest(model=args.model, text=args.text, labels=args.labels),
        timeout=args.timeout,
    )
    for score in reply.scores:
        print(
            f"{score.probability:6.1%}  {score.label}  (log-likelihood {score.log_likelihood:.3f})"
        )
    return EXIT_OK


def cmd_models_list(args: argparse.Namespace) -> int:
    """Models served by some worker."""
    reply = _stub(args).ListModels(gateway_pb2.ListModelsRequest(), timeout=args.timeout)
    for model in reply.models:
        default = " (default)" if model.default else ""
        print(f"{model.name}{default}  workers={model.workers}")
    return EXIT_OK


def cmd_models_import(args: argparse.Namespace) -> int:
    """Convert a GGUF file into a model folder workers can load (runs locally)."""
    from llmos.model.gguf_import import import_gguf
    from llmos.model.names import MODEL_NAME

    name = args.name or args.gguf.stem.lower().replace(".", "-")
    if not MODEL_NAME.match(name):
        print(f"llmos: {name!r} is not a valid model name; pass --name", file=sys.stderr)
        return EXIT_NOT_READY
    target = Path(os.environ.get("LLMOS_DATA_DIR", "var")) / "models" / name
    config = import_gguf(args.gguf, target)
    print(f"imported {args.gguf.name} as {name}: {config.parameter_count:,} parameters in {target}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The `llmos` command line."""
    parser = argparse.ArgumentParser(prog="llmos", description="Client of LLM OS.")
    parser.add_argument("--gateway", help=f"HOST:PORT of the gateway (default {DEFAULT_GATEWAY})")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="health of every service")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=cmd_status)
    events = commands.add_parser("events", help="follow events (JSON lines)")
    events.add_argument("--kind", action="append", help="service, job or model (repeatable)")
    events.set_defaults(run=cmd_events)

    generate = commands.add_parser("generate", help="stream a completion or chat answer")
    generate.add_argument("prompt")
    generate.add_argument("--chat", action="store_true", help="treat the prompt as a user message")
    generate.add_argument("--system", default="", help="system message (with --chat)")
    generate.add_argument("--model", default="", help="default: the default model")
    generate.add_argument("--max-tokens", type=int, default=0)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--top-p", type=float, default=0.0)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    generate.add_argument("--quiet", action="store_true", help="no usage line on stderr")
    generate.set_defaults(run=cmd_generate)

    embed = commands.add_parser("embed", help="embeddings of texts")
    embed.add_argument("texts", nargs="+")
    embed.add_argument("--model", default="")
    embed.set_defaults(run=cmd_embed)

    classify = commands.add_parser("classify", help="rank labels for a text")
    classify.add_argument("text")
    classify.add_argument("labels", nargs="+")
    classify.add_argument("--model", default="")
    classify.set_defaults(run=cmd_classify)

    models = commands.add_parser("models", help="list or import models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    model_commands.add_parser("list", help="models being served").set_defaults(run=cmd_models_list)
    importer = model_commands.add_parser("import", help="import a GGUF file")
    importer.add_argument("--gguf", type=Path, required=True)
    importer.add_argument("--name", help="model name (default: from the file name)")
    importer.set_defaults(run=cmd_models_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `llmos` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except grpc.RpcError as exc:
        code = exc.code()
        detail = exc.details()
        if code == grpc.StatusCode.UNAVAILABLE:
            print(
                f"llmos: gateway at {gateway_address(args.gateway)} is unreachable: {detail}",
                file=sys.stderr,
            )
            return EXIT_UNREACHABLE
        print(f"llmos: {code.name}: {detail}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

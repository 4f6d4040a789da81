"""`llmos` — talk to a running LLM OS through its gateway.

The gateway address comes from --gateway, else $LLMOS_GATEWAY, else the stack file the
dev launcher writes (<data dir>/stack.json), else 127.0.0.1:50051.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format

from llmos.v1 import gateway_pb2, gateway_pb2_grpc

DEFAULT_GATEWAY = "127.0.0.1:50051"
EXIT_OK, EXIT_NOT_READY, EXIT_UNREACHABLE = 0, 1, 3


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


def build_parser() -> argparse.ArgumentParser:
    """The `llmos` command line."""
    parser = argparse.ArgumentParser(prog="llmos", description="Client of LLM OS.")
    parser.add_argument("--gateway", help=f"HOST:PORT of the gateway (default {DEFAULT_GATEWAY})")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="health of every service")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=cmd_status)
    events = commands.add_parser("events", help="follow events (JSON lines)")
    events.add_argument("--kind", action="append", help="service, job or model (repeatable)")
    events.set_defaults(run=cmd_events)
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
        return EXIT_NOT_READY
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

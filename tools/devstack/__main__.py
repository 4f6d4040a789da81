"""`python -m tools.devstack` (what `make run` starts): the whole LLM OS, until Ctrl-C.

Prints one line `LLM OS ready gateway=HOST:PORT ...` when every service is SERVING;
scripts parse it. SIGINT/SIGTERM stop everything in reverse order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from llmos.keyfiles import make_private_tree, private_files
from llmos.log import configure_logging
from tools.devstack.infra import InfraError, exit_with_parent
from tools.devstack.process import format_ready_line
from tools.devstack.stack import DevStack, StackError, StackOptions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options of the launcher."""
    parser = argparse.ArgumentParser(prog="python -m tools.devstack", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("var"), help="default: ./var")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument(
        "--gateway-port", type=int, default=50051, help="public gRPC port (0: any free port)"
    )
    parser.add_argument(
        "--auth-port", type=int, default=50050, help="OAuth HTTP port (0: any free port)"
    )
    parser.add_argument(
        "--no-tls",
        dest="tls",
        action="store_false",
        help="plaintext gateway (default: TLS with a generated local CA under <data dir>/tls)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="three clustered NATS servers (every stream on all three) and Redis with a "
        "replica and three Sentinels, as at scale; services follow a failover",
    )
    parser.add_argument(
        "--shared-storage",
        action="store_true",
        help="storage and audit on PostgreSQL and an S3-compatible store (SeaweedFS), both "
        "started here, as several machines would share them",
    )
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop everything when the parent process dies (`make run` uses it: make does "
        "not pass SIGTERM on to the command it runs)",
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    """Start, print the ready line, supervise until a signal, stop."""
    if args.exit_with_parent:
        exit_with_parent(args.parent)
    make_private_tree(args.data_dir)  # what an earlier version left open to others
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = DevStack(
        StackOptions(
            data_dir=args.data_dir,
            host=args.host,
            gateway_port=args.gateway_port,
            auth_port=args.auth_port,
            tls=args.tls,
            ready_timeout_s=args.ready_timeout,
            cluster=args.cluster,
            shared_storage=args.shared_storage,
        )
    )
    began = time.monotonic()
    try:
        starting = asyncio.ensure_future(stack.start())
        stopped_early = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopped_early}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return 130
        stopped_early.cancel()
        fields = starting.result()
        print(format_ready_line(fields), flush=True)
        logging.getLogger("llmos.devstack").info(
            "ready after %.1fs; logs in %s", time.monotonic() - began, fields["logs"]
        )
        await stack.supervise(stop)
        return 0
    except (StackError, InfraError) as exc:
        print(f"LLM OS failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()
        print("LLM OS stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parent = os.getppid()  # before anything else: the parent to exit with
    private_files()
    configure_logging("devstack", "info", "text")
    args = parse_args(argv)
    args.parent = parent
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

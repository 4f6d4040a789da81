"""`llmos` — the command line of LLM OS, talking to a running LLM OS through its gateway.

This is the one place where a failure becomes `llmos: <sentence>` on stderr and an exit
status: 1 not ready or failed, 2 refused or bad input, 3 unreachable, 130 interrupted.
A Python traceback is shown only with LLMOS_DEBUG=1. The commands (`llmos.cli.app`) are
imported inside `main`, after gRPC's log level is set: its C core reads it on loading.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import typer


def _quiet_libraries(debug: bool) -> None:
    """Library logs would print tracebacks (gRPC's Python side) and TLS handshake chatter
    (its C core) beside the one sentence; LLMOS_DEBUG=1 shows them."""
    if debug:
        logging.basicConfig(level=logging.DEBUG)
        os.environ.setdefault("GRPC_VERBOSITY", "INFO")
    else:
        logging.getLogger().addHandler(logging.NullHandler())
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def _stdout_gone() -> None:
    """The reader of stdout left (`llmos ... | head`): discard what is still buffered,
    so Python's exit does not fail on it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `llmos` command: run it and return its exit status."""
    debug = os.environ.get("LLMOS_DEBUG") == "1"
    _quiet_libraries(debug)
    from llmos.cli.app import app  # only now: see the module docstring
    from llmos.cli.connection import Connection

    command = typer.main.get_command(app)
    conn = Connection()  # the top-level callback fills it in from the global options
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with command.make_context("llmos", args, obj=conn) as ctx:
            command.invoke(ctx)
        return 0
    except typer.Exit as exc:
        return exc.exit_code
    except BrokenPipeError:
        _stdout_gone()
        return 0
    except typer.Abort:
        print("llmos: aborted", file=sys.stderr)
        return 1
    except Exception as exc:  # the one place every failure is explained
        return _report(exc, conn.address, debug)
    except KeyboardInterrupt as exc:
        return _report(exc, conn.address, debug)


def _report(exc: BaseException, gateway: str, debug: bool) -> int:
    from llmos.cli.errors import EXIT_FAILED, explain

    explained = explain(exc, gateway)
    if debug:
        traceback.print_exc()
    if explained is None:
        text = str(exc).strip() or type(exc).__name__
        hint = "" if debug else " (LLMOS_DEBUG=1 shows where)"
        print(f"llmos: unexpected error: {text}{hint}", file=sys.stderr)
        return EXIT_FAILED
    if explained.sentence:
        print(f"llmos: {explained.sentence}", file=sys.stderr)
    return explained.exit_code


if __name__ == "__main__":
    sys.exit(main())

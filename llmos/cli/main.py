"""`llmos` — the command line of LLM OS, talking to a running LLM OS through its gateway.

Each area's commands live in their own module; this one assembles them, reads the global
options (before the command: `llmos --gateway HOST:PORT status`), and is the one place
where a failure becomes `llmos: <sentence>` on stderr and an exit status: 1 not ready or
failed, 2 refused or bad input, 3 unreachable, 130 interrupted. A Python traceback is
shown only with LLMOS_DEBUG=1.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Annotated

import typer

from llmos.cli import admin, audit, chat, datasets, identity, inference, jobs, models, system
from llmos.cli.connection import DEFAULT_GATEWAY, Connection
from llmos.cli.errors import EXIT_FAILED, EXIT_OK, explain
from llmos.cli.train import train

app = typer.Typer(
    name="llmos",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def options(
    ctx: typer.Context,
    gateway: Annotated[
        str | None,
        typer.Option(
            help=f"HOST:PORT of the gateway (default: $LLMOS_GATEWAY, the dev stack's, "
            f"else {DEFAULT_GATEWAY})"
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds each call may take")] = 120.0,
    token: Annotated[
        str | None, typer.Option(help="an access token to use as is ($LLMOS_TOKEN)")
    ] = None,
    credentials: Annotated[
        str | None,
        typer.Option(
            help="JSON file with issuer, client_id and client_secret ($LLMOS_CREDENTIALS)"
        ),
    ] = None,
    ca_file: Annotated[
        str | None,
        typer.Option(help="CA certificate that signed the gateway's, for TLS ($LLMOS_TLS_CA)"),
    ] = None,
    issuer: Annotated[
        str | None, typer.Option(help="OAuth issuer URL, for login ($LLMOS_ISSUER)")
    ] = None,
) -> None:
    """Client of LLM OS: inference, chat, models, datasets, training jobs, audit and
    administration, through the gateway."""
    conn = ctx.ensure_object(Connection)
    conn.gateway, conn.timeout, conn.token = gateway, timeout, token
    conn.credentials, conn.ca_file, conn.issuer = credentials, ca_file, issuer
    ctx.call_on_close(conn.close)


for command in (identity.login, identity.logout, identity.whoami):
    app.command()(command)
app.add_typer(admin.app, name="admin")
app.command()(system.cluster)
app.add_typer(jobs.app, name="jobs")
app.command()(system.status)
app.command()(system.events)
app.command()(inference.generate)
app.command()(chat.chat)
app.command()(inference.embed)
app.command()(inference.classify)
app.add_typer(models.app, name="models")
app.add_typer(datasets.app, name="datasets")
app.command()(train)
app.add_typer(audit.app, name="audit")


def _quiet_libraries(debug: bool) -> None:
    """Library log records (gRPC's among them) would print tracebacks; keep them for
    LLMOS_DEBUG=1."""
    if debug:
        logging.basicConfig(level=logging.DEBUG)
    else:
        logging.getLogger().addHandler(logging.NullHandler())


def _stdout_gone() -> None:
    """The reader of stdout left (`llmos ... | head`): discard what is still buffered,
    so Python's exit does not fail on it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `llmos` command: run it and return its exit status."""
    debug = os.environ.get("LLMOS_DEBUG") == "1"
    _quiet_libraries(debug)
    command = typer.main.get_command(app)
    conn = Connection()  # the top-level callback fills it in from the global options
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with command.make_context("llmos", args, obj=conn) as ctx:
            command.invoke(ctx)
        return EXIT_OK
    except typer.Exit as exc:
        return exc.exit_code
    except BrokenPipeError:
        _stdout_gone()
        return EXIT_OK
    except typer.Abort:
        print("llmos: aborted", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # the one place every failure is explained
        return _report(exc, conn.address, debug)
    except KeyboardInterrupt as exc:
        return _report(exc, conn.address, debug)


def _report(exc: BaseException, gateway: str, debug: bool) -> int:
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

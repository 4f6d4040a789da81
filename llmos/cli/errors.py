"""Every failure of the `llmos` command becomes one sentence and an exit status, here.

Commands raise what they meet (gRPC errors, OAuth refusals, file errors) or a
`CommandError`; `explain` turns any of them into the line printed after `llmos: `.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import typer

from llmos.errors import LLMOSError
from llmos.oauthclient import OAuthError

EXIT_OK, EXIT_NOT_READY, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2, 3
#: What was asked about is not well: a job that did not succeed, an audit log that is not intact.
EXIT_FAILED = EXIT_NOT_READY
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A failure the command explains itself, with the exit status it calls for."""

    def __init__(self, sentence: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(sentence)
        self.exit_code = exit_code


class NotSignedIn(CommandError):
    """No way to get a token was found (or the session can no longer be refreshed)."""


def unreachable(what: str, address: str, reason: object) -> CommandError:
    """`what` at `address` did not answer (exit status 3)."""
    reason_text = str(getattr(reason, "reason", reason)).strip() or type(reason).__name__
    return CommandError(f"{what} at {address} is unreachable: {reason_text}", EXIT_UNREACHABLE)


@dataclass(frozen=True)
class Explanation:
    """What to print after `llmos: ` on stderr, and the exit status."""

    sentence: str
    exit_code: int


def explain(exc: BaseException, gateway: str) -> Explanation | None:
    """The sentence and status for a failure the command knows, or None for a bug."""
    if isinstance(exc, CommandError):
        return Explanation(str(exc), exc.exit_code)
    if isinstance(exc, grpc.RpcError):
        return _rpc(exc, gateway)
    if isinstance(exc, OAuthError):
        return Explanation(f"the issuer refused: {exc}", EXIT_REFUSED)
    if isinstance(exc, LLMOSError):
        return Explanation(str(exc), EXIT_REFUSED)
    if isinstance(exc, typer.TyperException):
        return _usage(exc)
    if isinstance(exc, KeyboardInterrupt):
        return Explanation("interrupted", EXIT_INTERRUPTED)
    if isinstance(exc, EOFError):
        return Explanation("the input ended before everything needed was read", EXIT_REFUSED)
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return Explanation(f"{where}{exc.strerror}", EXIT_REFUSED)
    return None


def _rpc(exc: grpc.RpcError, gateway: str) -> Explanation:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Explanation(f"gateway at {gateway} is unreachable: {detail}", EXIT_UNREACHABLE)
    return Explanation(f"{code.name}: {detail}", EXIT_REFUSED)


def _usage(exc: typer.TyperException) -> Explanation:
    """A bad flag or argument: click's message, and where to read about the command.
    (A group called without a command has printed its help already: nothing to add.)"""
    exit_code = int(getattr(exc, "exit_code", EXIT_REFUSED))
    sentence = exc.format_message().strip().rstrip(".").replace("Value error, ", "")
    ctx = getattr(exc, "ctx", None)
    if sentence and ctx is not None:
        sentence += f" (see `{ctx.command_path} --help`)"
    return Explanation(sentence, exit_code)

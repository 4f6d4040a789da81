"""Text the command reads rather than takes as an argument: prompts and texts from stdin
(`-`, or nothing given while stdin is a pipe), and secrets from the terminal or a pipe."""

from __future__ import annotations

import getpass
from typing import TextIO

from llmos.cli.errors import CommandError

STDIN = "-"


def prompt_text(argument: str | None, stdin: TextIO, what: str = "prompt") -> str:
    """The argument as given; or, for `-` or no argument while stdin is not a terminal,
    everything on stdin (less the one newline that ends it)."""
    if argument is not None and argument != STDIN:
        return argument
    if argument is None and stdin.isatty():
        raise CommandError(f"no {what}: give it as an argument, or `-` to read it from stdin")
    text = stdin.read().removesuffix("\n")
    if not text.strip():
        raise CommandError(f"the {what} read from stdin is empty")
    return text


def texts_from(arguments: list[str], stdin: TextIO) -> list[str]:
    """The arguments as given; or, for `-` or none while stdin is not a terminal, one text
    per non-empty line of stdin."""
    if arguments and arguments != [STDIN]:
        return arguments
    if not arguments and stdin.isatty():
        raise CommandError("no texts: give them as arguments, or `-` to read lines from stdin")
    texts = [line for line in stdin.read().splitlines() if line.strip()]
    if not texts:
        raise CommandError("no texts on stdin: every line read was empty")
    return texts


def secret_lines(questions: list[str], stdin: TextIO) -> list[str]:
    """Answers read from the terminal (hidden when the question names a password), or one
    per line from a pipe."""
    if stdin.isatty():
        return [
            getpass.getpass(f"{q}: ") if "password" in q else input(f"{q}: ") for q in questions
        ]
    return [stdin.readline().rstrip("\n") for _ in questions]

"""The `llmos` command is part of the client package: it loads no server code, and every
command and flag it has is documented in its help."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import typer

from llmos.cli.app import app
from llmos.cli.main import main
from tests.conftest import ROOT

SERVER_PACKAGES = ("gateway", "services", "tools")


def test_the_cli_imports_nothing_from_gateway_services_or_tools() -> None:
    probe = (
        "import json, sys\n"
        "import llmos.cli.main, llmos.cli.app\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_PACKAGES})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []


def test_llmos_help_runs_as_a_program_and_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmos.cli", "--help"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("status", "chat", "generate", "models", "admin", "audit", "train"):
        assert name in result.stdout


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "llmos" for p, _ in COMMANDS]
)
def test_every_command_documents_every_option_in_its_help(
    path: tuple[str, ...], command: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*path, "--help"]) == 0
    shown = capsys.readouterr().out
    for param in getattr(command, "params", []):
        if getattr(param, "hidden", False):
            continue
        assert getattr(param, "help", None), f"{' '.join(path)}: {param.name} has no help"
        for flag in getattr(param, "opts", []):
            if flag.startswith("-"):
                assert flag in shown, f"{' '.join(path)} --help does not show {flag}"


def test_every_listing_offers_json_output() -> None:
    listings = {
        ("status",), ("cluster",), ("jobs", "list"), ("models", "list"), ("models", "versions"),
        ("datasets", "list"), ("admin", "tenant-list"), ("admin", "client-list"),
        ("admin", "user-list"),
    }  # fmt: skip
    by_path = dict(COMMANDS)
    for path in listings:
        flags = {flag for param in getattr(by_path[path], "params", []) for flag in param.opts}
        assert {"-o", "--output"} <= flags, path

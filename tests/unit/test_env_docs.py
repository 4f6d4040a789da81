"""The README's table of environment variables is the one the code generates, and no
`LLMOS_*` variable is read behind the table's back."""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos import subjects
from llmos.config import EnvReader, Variable
from llmos.services import SERVICE_MODULES, SERVICE_OPTIONS
from tests.conftest import ROOT
from tools import envdoc

#: where the project's own code is (generated stubs excluded)
CODE = ("llmos", "gateway", "services", "tools")
VARIABLE_NAME = re.compile(r"\bLLMOS_[A-Z0-9_]*[A-Z0-9]\b")
#: JetStream stream names share the prefix but are not variables
STREAMS = {subjects.EVENTS_STREAM, subjects.AUDIT_STREAM, subjects.WITNESS_STREAM}


def _code_files() -> Iterator[Path]:
    for top in CODE:
        for path in sorted((ROOT / top).rglob("*.py")):
            if (ROOT / "llmos" / "v1") not in path.parents:
                yield path


def _names_in_code() -> Iterator[tuple[str, str]]:
    """Every `LLMOS_*` name in a string literal or keyword argument, with where it is."""
    for path in _code_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            texts: list[str] = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.append(node.value)
            elif isinstance(node, ast.keyword) and node.arg:
                texts.append(node.arg)
            for text in texts:
                for name in VARIABLE_NAME.findall(text):
                    yield name, f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"


def test_the_readme_table_is_the_one_the_code_generates() -> None:
    current = envdoc.README.read_text()
    wanted = envdoc.with_table(current, envdoc.table(envdoc.variables()))
    if current != wanted:
        diff = "".join(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                wanted.splitlines(keepends=True),
                "README.md",
                "generated",
                n=0,
            )
        )
        pytest.fail(
            f"README.md's configuration table differs from what the code reads; {envdoc.FIX}\n"
            + diff
        )


def test_every_llmos_variable_named_in_the_code_is_documented() -> None:
    documented = {v.name for v in envdoc.variables()}
    hidden = sorted(
        f"{where}: {name}"
        for name, where in _names_in_code()
        if name not in documented and name not in STREAMS
    )
    assert not hidden, (
        "these variables are named in the code but missing from the configuration table; "
        "read them through llmos.config.EnvReader (with doc=...) in the service's options, "
        "or declare them in llmos.config.CLI_VARIABLES, then run `make docs`:\n" + "\n".join(hidden)
    )


def test_every_variable_says_what_it_means_in_one_line() -> None:
    vague = [v.name for v in envdoc.variables() if not v.doc.strip() or "\n" in v.doc]
    assert not vague, f"give these a one-line doc=: {', '.join(vague)}"


def test_the_generator_reads_the_options_each_service_starts_with() -> None:
    assert set(SERVICE_OPTIONS) == set(SERVICE_MODULES)
    for service, spec in SERVICE_OPTIONS.items():
        package = ROOT / SERVICE_MODULES[service].replace(".", "/")
        configured = {
            keyword.value.id
            for path in package.glob("*.py")
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call)
            for keyword in node.keywords
            if keyword.arg == "configure" and isinstance(keyword.value, ast.Name)
        }
        assert configured == {spec.partition(":")[2]}, service


def test_a_read_is_recorded_with_its_meaning_and_the_default_people_see() -> None:
    env = EnvReader({"LLMOS_SLOTS": "3"}, service="scheduler")
    assert env.integer("SLOTS", 8, minimum=1, maximum=9, doc="slots per worker") == 3
    env.text("DIR", "", doc="where things go", default_shown="`<data dir>/things`")
    env.choice("MODE", "off", ("on", "off"), doc="the mode")
    env.number("WAIT_S", 2.5, minimum=0, maximum=9, doc="how long")
    assert env.reads == [
        Variable("LLMOS_SLOTS", "`8`", "slots per worker", "scheduler"),
        Variable("LLMOS_DIR", "`<data dir>/things`", "where things go", "scheduler"),
        Variable("LLMOS_MODE", "`off`", "the mode (`on`, `off`)", "scheduler"),
        Variable("LLMOS_WAIT_S", "`2.5`", "how long", "scheduler"),
    ]


def test_a_variable_read_differently_by_two_readers_shows_each_reading() -> None:
    rendered = envdoc.table(
        [
            Variable("LLMOS_X", "`1`", "a | b", "gateway"),
            Variable("LLMOS_X", "`2`", "a | b", "CLI"),
        ]
    )
    assert rendered.splitlines()[-1] == (
        "| `LLMOS_X` | gateway, CLI | gateway: `1`; CLI: `2` | a \\| b |"
    )


def test_a_readme_without_the_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="markers"):
        envdoc.with_table("# README\n", "| table |")

"""`python -m tools.envdoc` (`make docs`): README.md's table of environment variables,
generated from the code that reads them.

Each service's common settings and its own options (`llmos.services.SERVICE_OPTIONS`) are
read against an empty environment; the `EnvReader` records every variable it is asked
for, with its meaning and its default as people read it. The `llmos` command's variables
are declared in `llmos.config.CLI_VARIABLES`. The table sits in README.md between the
markers below. `--check` exits 1 when README.md is stale, as tests/unit/test_env_docs.py
fails then.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from llmos.config import CLI_VARIABLES, EnvReader, Variable, read_service_settings
from llmos.services import SERVICE_OPTIONS

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- env:begin (generated from the code by `make docs`; edit the code, not this) -->"
END = "<!-- env:end -->"
FIX = "run `make docs` (python -m tools.envdoc) and commit README.md"


def options_reader(spec: str) -> Callable[[EnvReader], object]:
    """The function `module:function` names."""
    module, _, function = spec.partition(":")
    reader: Callable[[EnvReader], object] = getattr(importlib.import_module(module), function)
    return reader


def variables() -> list[Variable]:
    """Every variable each service reads (common settings, then its own), then the CLI's."""
    found: list[Variable] = []
    for service, spec in SERVICE_OPTIONS.items():
        env = EnvReader({}, service=service)
        read_service_settings(service, env)
        options_reader(spec)(env)
        found.extend(env.reads)
    return [*found, *CLI_VARIABLES]


def readers(services: Iterable[str]) -> str:
    """Who reads a variable, in words: `all services`, or their names; then the CLI."""
    named = list(dict.fromkeys(services))
    own = [s for s in named if s in SERVICE_OPTIONS]
    if set(own) == set(SERVICE_OPTIONS):
        own = ["all services"]
    return ", ".join([*own, *(s for s in named if s not in SERVICE_OPTIONS)])


def _merged(reads: Sequence[Variable], field: Callable[[Variable], str]) -> str:
    """One cell: the value if every reader agrees, else each reader's own."""
    by_value: dict[str, list[str]] = {}
    for read in reads:
        by_value.setdefault(field(read), []).append(read.service)
    if len(by_value) == 1:
        return next(iter(by_value))
    return "; ".join(f"{readers(services)}: {value}" for value, services in by_value.items())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(found: Iterable[Variable]) -> str:
    """The markdown table, a row per variable in the order first read."""
    grouped: dict[str, list[Variable]] = {}
    for read in found:
        grouped.setdefault(read.name, []).append(read)
    lines = ["| variable | read by | default | meaning |", "| --- | --- | --- | --- |"]
    for name, reads in grouped.items():
        cells = (
            f"`{name}`",
            readers(r.service for r in reads),
            _merged(reads, lambda r: r.default),
            _merged(reads, lambda r: r.doc),
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def with_table(readme: str, generated: str) -> str:
    """`readme` with the text between the markers replaced by `generated`."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"README.md lacks the markers {BEGIN!r} ... {END!r}")
    return f"{head}{BEGIN}\n{generated}\n{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite README.md's table, or with --check only say whether it is current."""
    parser = argparse.ArgumentParser(prog="python -m tools.envdoc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    parser.add_argument("--print", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    generated = table(variables())
    if args.print:
        print(generated)
        return 0
    current = README.read_text()
    wanted = with_table(current, generated)
    if wanted == current:
        print("README.md: the configuration table is current")
        return 0
    if args.check:
        print(f"README.md: the configuration table differs from the code; {FIX}", file=sys.stderr)
        return 1
    README.write_text(wanted)
    print("README.md: configuration table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())

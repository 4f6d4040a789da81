"""How replies are shown: a table for people, or the reply itself as JSON for programs.

`-o json` prints the protobuf message exactly (proto field names), so scripts read the
same fields the API documents. `-o table` is a rich table: boxed and coloured on a
terminal; without borders, colours or wrapping when stdout is a pipe or a file, so each
row stays on one line with whitespace between columns (first column first).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Literal, TextIO

import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

Format = Literal["table", "json"]
Cell = str | Text

OutputOption = Annotated[
    Format,
    typer.Option(
        "--output", "-o", help="table (for people) or json (the reply, with proto field names)"
    ),
]
JsonAlias = Annotated[
    bool, typer.Option("--json", hidden=True, help="the same as -o json (an older spelling)")
]

#: Wide enough that no row of a piped table is ever wrapped.
PIPE_WIDTH = 100_000


def message_json(message: Message, indent: int | None = 2) -> str:
    """A protobuf message as JSON with the proto's own field names."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=indent)


def chosen(output: Format, json_alias: bool) -> Format:
    """The format asked for, honouring the hidden `--json` spelling."""
    return "json" if json_alias else output


@dataclass
class Listing:
    """Rows of cells under headers; `footer` lines follow the table."""

    headers: Sequence[str]
    rows: list[Sequence[Cell]] = field(default_factory=list)
    footer: list[str] = field(default_factory=list)


def render_table(listing: Listing, terminal: bool, width: int | None = None) -> str:
    """The table as text: boxed and styled on a terminal, plain aligned columns otherwise."""
    table = Table(
        box=box.SIMPLE_HEAD if terminal else None,
        pad_edge=False,
        show_edge=False,
        header_style="bold" if terminal else "",
    )
    for header in listing.headers:
        table.add_column(header, no_wrap=not terminal, overflow="fold")
    for row in listing.rows:
        table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=(width or 100) if terminal else PIPE_WIDTH,
        force_terminal=terminal,
        no_color=not terminal,
        highlight=False,
    )
    console.print(table)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    if listing.footer:
        lines += ["", *listing.footer]
    return "\n".join(lines) + "\n"


def write_table(listing: Listing, out: TextIO | None = None) -> None:
    """Print a listing to stdout (or `out`) as a table."""
    out = out or sys.stdout
    terminal = out.isatty()
    width = Console(file=out).width if terminal else None
    out.write(render_table(listing, terminal, width))
    out.flush()


def show(reply: Message, listing: Listing, output: Format) -> None:
    """A listing command's answer in the chosen format."""
    if output == "json":
        print(message_json(reply))
    else:
        write_table(listing)


def utc_time(seconds: int) -> str:
    """A moment for a table: UTC, to the second."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def styled(text: str, good: bool) -> Text:
    """A state cell: green when all is well, red when not (plain when piped)."""
    return Text(text, style="green" if good else "red")

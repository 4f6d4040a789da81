"""`llmos entities`, `llmos translate` and `llmos kb ...`: the applications from the shell.

Knowledge bases are managed (create, add, list, show, delete) with the `datasets` scope
and asked with `inference`; `kb ask` streams the answer and prints its citations after.
"""

from __future__ import annotations

import json
import mimetypes
import sys
from pathlib import Path
from typing import Annotated

import typer

from llmos.cli.connection import connection
from llmos.cli.errors import CommandError
from llmos.cli.inference import ModelOption
from llmos.cli.output import Listing, OutputOption, show
from llmos.cli.prompts import prompt_text, texts_from
from llmos.v1 import apps_pb2

app = typer.Typer(
    help="Knowledge bases for the customer-service assistant: create, add, ask.",
    no_args_is_help=True,
)

Texts = Annotated[
    list[str] | None,
    typer.Argument(help="texts; `-` or none (with a pipe): one per line of stdin"),
]
Name = Annotated[str, typer.Argument(help="the knowledge base")]


def entities(
    ctx: typer.Context,
    texts: Texts = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="a custom entity type (repeat); the chat model answers"),
    ] = None,
    model: ModelOption = "",
) -> None:
    """Named entities of each text: one JSON line per text, spans with character offsets."""
    conn = connection(ctx)
    request = apps_pb2.ExtractEntitiesRequest(
        model=model, texts=texts_from(texts or [], sys.stdin), labels=label or []
    )
    reply = conn.apps_stub().ExtractEntities(request, timeout=conn.timeout)
    for result in reply.results:
        spans = [
            {"start": e.start, "end": e.end, "label": e.label, "text": e.text}
            for e in result.entities
        ]
        print(json.dumps(spans, ensure_ascii=False))
    print(f"[{reply.model}]", file=sys.stderr)


def translate(
    ctx: typer.Context,
    texts: Texts = None,
    source: Annotated[str, typer.Option("--from", help="source language (ISO 639-1)")] = "en",
    target: Annotated[str, typer.Option("--to", help="target language (ISO 639-1)")] = "",
    model: ModelOption = "",
) -> None:
    """Translate texts: one line out per text in."""
    conn = connection(ctx)
    request = apps_pb2.TranslateRequest(
        model=model, texts=texts_from(texts or [], sys.stdin), source=source, target=target
    )
    reply = conn.apps_stub().Translate(request, timeout=conn.timeout)
    for text in reply.translations:
        print(text)
    print(f"[{reply.model}]", file=sys.stderr)


def base_listing(bases: list[apps_pb2.KnowledgeBase]) -> Listing:
    listing = Listing(("NAME", "DOCUMENTS", "CHUNKS", "VERSION", "EMBEDDING MODEL"))
    for base in bases:
        listing.rows.append(
            (
                base.name,
                str(len(base.documents)),
                str(base.chunks),
                str(base.version),
                base.embedding_model,
            )
        )
    return listing


@app.command()
def create(
    ctx: typer.Context,
    name: Name,
    description: Annotated[str, typer.Option(help="what it holds")] = "",
    embedding_model: Annotated[
        str, typer.Option(help="the model that embeds it (default: the default model)")
    ] = "",
    output: OutputOption = "table",
) -> None:
    """Create an empty knowledge base."""
    conn = connection(ctx)
    reply = conn.apps_stub().CreateKnowledgeBase(
        apps_pb2.CreateKnowledgeBaseRequest(
            name=name, description=description, embedding_model=embedding_model
        ),
        timeout=conn.timeout,
    )
    show(reply, base_listing([reply]), output)


@app.command()
def add(
    ctx: typer.Context,
    name: Name,
    files: Annotated[list[Path], typer.Argument(help="text, Markdown, HTML or PDF files")],
    output: OutputOption = "table",
) -> None:
    """Add documents (a document already there by its file name is replaced)."""
    documents = []
    for path in files:
        if not path.is_file():
            raise CommandError(f"{path} does not exist or is not a file")
        content_type = mimetypes.guess_type(path.name)[0] or ""
        documents.append(
            apps_pb2.Document(name=path.name, content=path.read_bytes(), content_type=content_type)
        )
    conn = connection(ctx)
    reply = conn.apps_stub().AddDocuments(
        apps_pb2.AddDocumentsRequest(knowledge_base=name, documents=documents),
        timeout=conn.timeout,
    )
    show(reply, base_listing([reply]), output)


@app.command("list")
def list_(ctx: typer.Context, output: OutputOption = "table") -> None:
    """The tenant's knowledge bases."""
    conn = connection(ctx)
    reply = conn.apps_stub().ListKnowledgeBases(
        apps_pb2.ListKnowledgeBasesRequest(), timeout=conn.timeout
    )
    show(reply, base_listing(list(reply.knowledge_bases)), output)


@app.command("show")
def show_(ctx: typer.Context, name: Name, output: OutputOption = "table") -> None:
    """A knowledge base's documents."""
    conn = connection(ctx)
    reply = conn.apps_stub().GetKnowledgeBase(
        apps_pb2.GetKnowledgeBaseRequest(name=name), timeout=conn.timeout
    )
    listing = Listing(("DOCUMENT", "CHUNKS", "CHARACTERS", "SHA256"))
    for document in reply.documents:
        listing.rows.append(
            (document.name, str(document.chunks), str(document.characters), document.sha256[:16])
        )
    show(reply, listing, output)


@app.command()
def delete(ctx: typer.Context, name: Name) -> None:
    """Delete a knowledge base and its documents."""
    conn = connection(ctx)
    conn.apps_stub().DeleteKnowledgeBase(
        apps_pb2.GetKnowledgeBaseRequest(name=name), timeout=conn.timeout
    )
    print(f"deleted knowledge base {name}")


@app.command()
def ask(
    ctx: typer.Context,
    name: Name,
    question: Annotated[str, typer.Argument(help="the question; `-` reads it from stdin")],
    conversation: Annotated[
        str, typer.Option(help="continue this conversation (its id is printed after)")
    ] = "",
    handoff: Annotated[
        bool, typer.Option("--handoff", help="hand the conversation to a person")
    ] = False,
    max_tokens: Annotated[int, typer.Option(help="the answer's length at most (0: 256)")] = 0,
    model: ModelOption = "",
) -> None:
    """Ask the assistant: the answer streams, then its citations and the conversation id."""
    conn = connection(ctx)
    request = apps_pb2.AskRequest(
        knowledge_base=name,
        question=prompt_text(question, sys.stdin, "question"),
        conversation_id=conversation,
        handoff=handoff,
        model=model,
        max_tokens=max_tokens,
    )
    citations: list[apps_pb2.Citation] = []
    conversation_id = ""
    for response in conn.apps_stub().Ask(request, timeout=conn.timeout):
        citations.extend(response.citations)
        conversation_id = conversation_id or response.conversation_id
        sys.stdout.write(response.text)
        sys.stdout.flush()
    print()
    for citation in citations:
        print(
            f"[{citation.number}] {citation.document} chunk {citation.chunk} "
            f"({citation.start}-{citation.end})",
            file=sys.stderr,
        )
    print(f"conversation {conversation_id}", file=sys.stderr)

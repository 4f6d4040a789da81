"""`llmos models ...`: what is served (list, deploy), local import of GGUF files, and the
tenant's model registry (register, versions, alias, export)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import json_format

from llmos.cli.connection import connection
from llmos.cli.errors import CommandError
from llmos.cli.output import Listing, OutputOption, message_json, show
from llmos.cli.transfer import download_file, upload_file
from llmos.model.tasks import TaskSpec
from llmos.v1 import gateway_pb2, storage_pb2

app = typer.Typer(
    help="List, import, register, alias, deploy and export models.", no_args_is_help=True
)

Name = Annotated[str, typer.Argument(help="the model's name")]
Version = Annotated[int, typer.Argument(help="a version number of the model")]
Quiet = Annotated[bool, typer.Option("--quiet", help="no progress lines")]


def served_listing(reply: gateway_pb2.ListModelsResponse) -> Listing:
    """One row per model some worker serves."""
    listing = Listing(("MODEL", "WORKERS", "DEFAULT"))
    for model in reply.models:
        listing.rows.append((model.name, str(model.workers), "yes" if model.default else ""))
    return listing


@app.command("list")
def list_(ctx: typer.Context, output: OutputOption = "table") -> None:
    """Models being served, with how many workers serve each."""
    conn = connection(ctx)
    reply = conn.gateway_stub().ListModels(gateway_pb2.ListModelsRequest(), timeout=conn.timeout)
    show(reply, served_listing(reply), output)


@app.command("import")
def import_(
    gguf: Annotated[Path | None, typer.Option(help="a llama-family GGUF file")] = None,
    translation: Annotated[
        Path | None,
        typer.Option(help="a Hugging Face translation model folder (Marian, NLLB, M2M100)"),
    ] = None,
    pair: Annotated[
        list[str] | None,
        typer.Option(
            help="translation: a language pair it serves, `en>de` (repeat; default: "
            "the tokenizer's source and target languages)"
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="model name (default: from the file or folder name)")
    ] = None,
) -> None:
    """Convert a GGUF file, or a translation model (to CTranslate2, int8), into a model
    folder workers can load (runs locally; `models register` then uploads it).

    The folder is written under $LLMOS_DATA_DIR/models (default var/models)."""
    from llmos.model.names import MODEL_NAME

    source = _one_source(gguf, translation)
    chosen = name or source.stem.lower().replace(".", "-").replace("_", "-")
    if not MODEL_NAME.match(chosen):
        raise CommandError(f"{chosen!r} is not a valid model name; pass --name")
    target = Path(os.environ.get("LLMOS_DATA_DIR", "var")) / "models" / chosen
    if translation is not None:
        spec = _import_translation(translation, target, pair or [])
        print(f"imported {translation} as {chosen}: translates {', '.join(spec.pair_names())} "
              f"in {target}")  # fmt: skip
        return
    from llmos.model.gguf_import import import_gguf  # torch: only this command needs it

    config = import_gguf(source, target)
    print(f"imported {source.name} as {chosen}: {config.parameter_count:,} parameters in {target}")


def _one_source(gguf: Path | None, translation: Path | None) -> Path:
    if (gguf is None) == (translation is None):
        raise CommandError("pass exactly one of --gguf FILE and --translation FOLDER")
    if gguf is not None and not gguf.is_file():
        raise CommandError(f"{gguf} does not exist or is not a file")
    if translation is not None and not translation.is_dir():
        raise CommandError(f"{translation} does not exist or is not a folder")
    return gguf or translation  # type: ignore[return-value]


def _import_translation(folder: Path, target: Path, pairs: list[str]) -> TaskSpec:
    from llmos.errors import InvalidArgument
    from llmos.model.translation import convert_marian  # ctranslate2: only this command

    parsed = []
    for text in pairs:
        source, separator, wanted = text.partition(">")
        if not separator:
            raise CommandError(f"--pair {text!r}: write it as SOURCE>TARGET, e.g. en>de")
        parsed.append((source.strip().lower(), wanted.strip().lower()))
    try:
        return convert_marian(folder, target, parsed or None)
    except (ValueError, FileExistsError, InvalidArgument) as exc:
        raise CommandError(str(exc)) from None


@app.command()
def register(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="a Hugging Face model folder")],
    name: Name,
    parent: Annotated[
        str | None, typer.Option(help="lineage: the model version it derives from (NAME@N)")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Upload a model folder as a new version of NAME in the registry; prints the version."""
    if not folder.is_dir():
        raise CommandError(f"{folder} is not a folder")
    conn = connection(ctx)
    stub = conn.storage_stub()
    files = {
        str(path.relative_to(folder)): upload_file(stub, path, conn.timeout, quiet).sha256
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    request = storage_pb2.CreateModelVersionRequest(model=name, files=files)
    if parent:
        request.lineage.update({"parent": parent})
    print(message_json(stub.CreateModelVersion(request, timeout=conn.timeout)))


def versions_listing(reply: storage_pb2.ListModelVersionsResponse) -> Listing:
    """One row per version: NAME@N (as `models export` takes it), aliases, metadata."""
    listing = Listing(("VERSION", "ALIASES", "ARCHITECTURE", "PARAMETERS", "CREATED"))
    for version in reply.versions:
        metadata = json_format.MessageToDict(version.metadata)
        parameters = metadata.get("parameters")
        listing.rows.append(
            (
                f"{version.model}@{version.version}",
                ",".join(version.aliases) or "-",
                str(metadata.get("architecture") or "-"),
                f"{int(parameters):,}" if isinstance(parameters, int | float) else "-",
                version.created_at.ToJsonString() if version.HasField("created_at") else "-",
            )
        )
    return listing


@app.command()
def versions(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="only this model's versions")] = None,
    output: OutputOption = "table",
) -> None:
    """Registered versions (of every model, or of one)."""
    conn = connection(ctx)
    request = storage_pb2.ListModelVersionsRequest(model=name or "")
    reply = conn.storage_stub().ListModelVersions(request, timeout=conn.timeout)
    show(reply, versions_listing(reply), output)


@app.command()
def alias(
    ctx: typer.Context,
    name: Name,
    alias: Annotated[str, typer.Argument(help="the alias, e.g. production")],
    version: Version,
) -> None:
    """Point an alias at a version (atomically; audited); prints the version."""
    conn = connection(ctx)
    request = storage_pb2.SetAliasRequest(model=name, alias=alias, version=version)
    print(message_json(conn.storage_stub().SetAlias(request, timeout=conn.timeout)))


@app.command()
def deploy(ctx: typer.Context, name: Name, version: Version) -> None:
    """Serve a version: it becomes production and a worker loads it, with no restart."""
    conn = connection(ctx)
    deployment = conn.gateway_stub().DeployModel(
        gateway_pb2.DeployModelRequest(model=name, version=version),
        timeout=max(conn.timeout, 600),
    )
    print(f"{deployment.model}@{deployment.version} is served as {deployment.served_as}")


def version_request(ref: str) -> storage_pb2.GetModelVersionRequest:
    """NAME (latest), NAME@VERSION or NAME:ALIAS."""
    if "@" in ref:
        name, _, version = ref.partition("@")
        if not version.isdigit():
            raise CommandError(f"{ref!r}: the version after @ must be a whole number")
        return storage_pb2.GetModelVersionRequest(model=name, version=int(version))
    name, _, alias = ref.partition(":")
    return storage_pb2.GetModelVersionRequest(model=name, alias=alias)


@app.command()
def export(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME:ALIAS")],
    folder: Annotated[Path, typer.Argument(help="where to write the model's files")],
) -> None:
    """Write a version's files to a folder (a Hugging Face model folder)."""
    request = version_request(ref)
    conn = connection(ctx)
    stub = conn.storage_stub()
    version = stub.GetModelVersion(request, timeout=conn.timeout)
    for relative, sha256 in sorted(version.files.items()):
        download_file(stub, sha256, folder / relative, conn.timeout)
    print(f"{version.model}@{version.version} -> {folder}")

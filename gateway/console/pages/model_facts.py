"""What the models pages show, in words: rows of the registry's models and versions,
a version's metadata and lineage as facts linked to their pages, which versions workers
serve now, and the deploy form as a request. No I/O: the handlers are in `models`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.console.forms import FieldErrors, field_errors
from gateway.deployments import served_name
from llmos.errors import InvalidArgument, LLMOSError
from llmos.model.names import SHARED_TENANT
from llmos.v1 import gateway_pb2, storage_pb2

PRODUCTION = "production"
DEPLOY_FIELDS = ("model", "version")
#: metadata keys shown under their own words; any other key is shown as it is named
METADATA_LABELS = {
    "architecture": "Architecture",
    "parameters": "Parameters",
    "context_length": "Context length",
    "quantization": "Quantization",
    "tokenizer": "Tokenizer",
    "method": "Training method",
    "hidden_size": "Hidden size",
    "num_hidden_layers": "Layers",
    "vocab_size": "Vocabulary",
}


@dataclass(frozen=True)
class Fact:
    """One line of a description: a label, its text, and where it links to ("" if nowhere)."""

    label: str
    text: str
    href: str = ""


@dataclass(frozen=True)
class ModelRow:
    """A model of the registry as the models page lists it (its latest version)."""

    name: str
    #: the viewer's tenant's own model (else the system tenant's, shared with every tenant)
    mine: bool
    latest: int
    aliases: str
    architecture: str
    parameters: str
    created: float
    served: str

    @property
    def owner(self) -> str:
        """Whose model it is, in words."""
        return "your tenant" if self.mine else f"{SHARED_TENANT} (shared)"


def seconds(stamp: Timestamp) -> float:
    """A protobuf time as seconds since the epoch (0 when unset, which reads as "-")."""
    return stamp.seconds + stamp.nanos / 1e9


def number_text(value: Any) -> str:
    """A count with thousands separators, or the value as it is if it is no number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"
    if value is None or value == "":
        return "-"
    return str(value)


def served_counts(reply: gateway_pb2.ListModelsResponse) -> dict[str, int]:
    """Workers serving each served name."""
    return {model.name: model.workers for model in reply.models}


def served_rows(reply: gateway_pb2.ListModelsResponse) -> list[tuple[str, str, str]]:
    """The "served now" table: served name, workers, whether it is the default model."""
    return [(m.name, str(m.workers), "yes" if m.default else "") for m in reply.models]


def version_served(version: storage_pb2.ModelVersion, served: Mapping[str, int]) -> int:
    """Workers serving this version as its owner's deployment (0 if none, or if its
    name could not be served at all)."""
    try:
        return served.get(served_name(version.tenant, version.model, version.version), 0)
    except InvalidArgument:
        return 0


def served_text(workers: int) -> str:
    """How many workers serve something, in words."""
    if workers <= 0:
        return "no"
    return "on 1 worker" if workers == 1 else f"on {workers} workers"


def deployed_versions(owner: str, model: str, served: Mapping[str, int]) -> dict[int, int]:
    """Workers serving each deployed version of `owner`'s `model`, by version (found by
    the deployment names' pattern, `served_name`'s with any version)."""
    try:
        prefix = served_name(owner, model, 0)[:-1]  # "<owner>--<model>-v"
    except InvalidArgument:
        return {}
    found = {}
    for name, workers in served.items():
        number = name[len(prefix) :]
        if name.startswith(prefix) and number.isdigit():
            found[int(number)] = workers
    return dict(sorted(found.items()))


def model_served_text(version: storage_pb2.ModelVersion, served: Mapping[str, int]) -> str:
    """Where a model is served, in words: each deployed version, and its plain name (a
    model an operator serves under its own name)."""
    parts = [
        f"version {number} {served_text(workers)}"
        for number, workers in deployed_versions(version.tenant, version.model, served).items()
    ]
    if served.get(version.model):
        parts.append(f"as {version.model} {served_text(served[version.model])}")
    return "; ".join(parts) or "no"


def model_rows(
    tenant: str, latest: Iterable[storage_pb2.ModelVersion], served: Mapping[str, int]
) -> list[ModelRow]:
    """The models `tenant` can read (ListModelVersions of every model gives the latest
    version of its own and of the shared tenant's), its own first, then by name, each
    with where any of its versions is served."""
    rows = []
    for version in sorted(latest, key=lambda v: (v.tenant != tenant, v.model)):
        metadata = MessageToDict(version.metadata)
        rows.append(
            ModelRow(
                name=version.model,
                mine=version.tenant == tenant,
                latest=version.version,
                aliases=", ".join(sorted(version.aliases)) or "-",
                architecture=str(metadata.get("architecture") or "-"),
                parameters=number_text(metadata.get("parameters")),
                created=seconds(version.created_at),
                served=model_served_text(version, served),
            )
        )
    return rows


@dataclass(frozen=True)
class VersionRow:
    """One version of a model as its page lists it."""

    number: int
    aliases: str
    architecture: str
    parameters: str
    created: float
    served: str
    derived_from: str


def version_rows(
    versions: Iterable[storage_pb2.ModelVersion], served: Mapping[str, int]
) -> list[VersionRow]:
    """Every version of one model, newest first."""
    rows = []
    for version in sorted(versions, key=lambda v: v.version, reverse=True):
        metadata = MessageToDict(version.metadata)
        lineage = MessageToDict(version.lineage)
        rows.append(
            VersionRow(
                number=version.version,
                aliases=", ".join(sorted(version.aliases)) or "-",
                architecture=str(metadata.get("architecture") or "-"),
                parameters=number_text(metadata.get("parameters")),
                created=seconds(version.created_at),
                served=served_text(version_served(version, served)),
                derived_from=str(lineage.get("parent") or "-"),
            )
        )
    return rows


def alias_map(versions: Iterable[storage_pb2.ModelVersion]) -> dict[str, int]:
    """Each alias of a model and the version it points at, by alias name."""
    return dict(sorted((alias, v.version) for v in versions for alias in v.aliases))


def metadata_facts(version: storage_pb2.ModelVersion) -> list[Fact]:
    """A version's metadata (read from its config.json, or written by its trainer)."""
    metadata = MessageToDict(version.metadata)
    known = [key for key in METADATA_LABELS if key in metadata]
    others = sorted(key for key in metadata if key not in METADATA_LABELS)
    return [Fact(_label(key), _text(metadata[key])) for key in known + others]


def lineage_facts(version: storage_pb2.ModelVersion, viewer_tenant: str) -> list[Fact]:
    """Where a version came from: the version it derives from, the training job and the
    dataset that made it, and the job's settings. Each is linked to its page only for a
    version of the viewer's own tenant: the console's pages show the viewer's tenant, so
    a shared model's job or dataset name would open another object, or a refusal."""
    lineage = MessageToDict(version.lineage)
    own = version.tenant == viewer_tenant

    def link(path: str, name: str) -> str:
        return f"/console/{path}/{quote(name, safe='')}" if own else ""

    facts = []
    parent = lineage.pop("parent", None)
    if parent:
        name, _, number = str(parent).partition("@")
        href = link("models", name)
        if href and number.isdigit():
            href += f"?version={number}"
        facts.append(Fact("Derived from", str(parent), href))
    job = lineage.pop("job", None)
    if job:
        facts.append(Fact("Training job", str(job), link("training", str(job))))
    dataset = lineage.pop("dataset", None)
    if isinstance(dataset, dict) and dataset.get("name"):
        text = f"{dataset['name']} (sha256 {str(dataset.get('sha256', ''))[:12]})"
        facts.append(Fact("Dataset", text, link("datasets", str(dataset["name"]))))
    elif dataset:
        facts.append(Fact("Dataset", _text(dataset)))
    config = lineage.pop("config", None)
    if isinstance(config, dict) and config:
        facts.append(Fact("Training settings", _text(config)))
    facts.extend(Fact(_label(key), _text(value)) for key, value in sorted(lineage.items()))
    return facts


def _label(key: str) -> str:
    """A metadata or lineage key as a label: its own words if it has them."""
    return METADATA_LABELS.get(key) or key.replace("_", " ").capitalize()


def _text(value: Any) -> str:
    """A metadata or lineage value as one line: objects as key=value pairs."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) or "-"
    return number_text(value)


def deploy_request(form: Mapping[str, str]) -> gateway_pb2.DeployModelRequest:
    """The DeployModel request a filled-in form stands for (the API checks the rest)."""
    model, text = form.get("model", "").strip(), form.get("version", "").strip()
    if not model:
        raise InvalidArgument("model", "choose the model to deploy")
    if not text.isdigit():
        raise InvalidArgument("version", "must be a version number (1, 2, ...)")
    return gateway_pb2.DeployModelRequest(model=model, version=int(text))


def deploy_failure(exc: LLMOSError) -> FieldErrors:
    """A refused deploy on the form: next to the field the API names, or above it."""
    if isinstance(exc, InvalidArgument):
        return field_errors(exc, DEPLOY_FIELDS)
    return {"": str(exc)}

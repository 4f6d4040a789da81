"""Datasets: the tenant's datasets listed and described, deleted, and uploaded from the
browser with a progress bar.

The page's upload form (`form[data-upload]`, driven by console.js) PUTs the file as the
raw request body to `/console/datasets/upload?name=...&description=...`; the handler
streams it into storage (`dataset_upload`), names it with `Storage/CreateDataset`, and
answers JSON: `{"location": ...}` of the new dataset's page, or `{"error": sentence,
"field": name}` next to which the page can show it. The name is checked before a byte is
stored, so a taken or malformed name does not cost the person a whole upload."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from gateway.auth.scopes import DATASETS
from gateway.console.app import Console
from gateway.console.pages.dataset_upload import (
    BodyReplay,
    Call,
    upload_body,
    upload_query,
    upload_refusal,
)
from gateway.console.view import View
from gateway.web.security import PAGE_HEADERS
from llmos.errors import (
    InvalidArgument,
    LLMOSError,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from llmos.v1 import storage_pb2

#: how long one upload stream may take (a broken one is resumed: dataset_upload.py)
UPLOAD_S = 3600.0
#: uploads at once, per session and in all: each holds up to KEEP bytes of its file
MAX_UPLOADS = 4
_uploads = asyncio.Semaphore(MAX_UPLOADS)
UPLOADING = "datasets.uploading"


def dataset_facts(dataset: storage_pb2.Dataset) -> dict[str, Any]:
    """What the dataset page says of a dataset."""
    return {
        "name": dataset.name,
        "description": dataset.description or "No description.",
        "records": f"{dataset.records:,}",
        "bytes": f"{dataset.size:,}",
        "size": dataset.size,
        "sha256": dataset.sha256,
        "created": dataset.created_at.seconds + dataset.created_at.nanos / 1e9,
    }


def dataset_rows(datasets: list[storage_pb2.Dataset]) -> list[dict[str, Any]]:
    """The datasets page's table, by name."""
    return [dataset_facts(d) for d in sorted(datasets, key=lambda d: d.name)]


def declared_size(content_length: int | None) -> int:
    """The size the upload starts with: the body's declared length (browsers send it
    for a file), which must be known and not zero."""
    if content_length is None:
        raise InvalidArgument("file", "has no declared size; send it with a Content-Length")
    if content_length <= 0:
        raise InvalidArgument("file", "is empty; choose a file with at least one line")
    return content_length


async def _check_name_free(view: View, name: str) -> None:
    """Refuse a name the dataset could not be created under, before the upload."""
    if not name:
        raise InvalidArgument("name", "is required")
    try:
        await view.call("Storage/GetDataset", storage_pb2.GetDatasetRequest(name=name))
    except NotFound:
        return
    raise InvalidArgument(
        "name", f"a dataset named {name!r} exists already; choose another name or delete it"
    )


async def _forget_blob(view: View, sha256: str) -> None:
    """The blob of an upload whose dataset was refused: nothing uses it, so it goes
    (best effort: storage refuses if something has started to use it meanwhile)."""
    with contextlib.suppress(LLMOSError):
        await view.call("Storage/DeleteBlob", storage_pb2.DownloadBlobRequest(sha256=sha256))


def register(console: Console) -> None:
    async def show(view: View) -> web.StreamResponse:
        listed = await view.call("Storage/ListDatasets", storage_pb2.ListDatasetsRequest())
        return view.render(
            "datasets.html",
            rows=dataset_rows(list(listed.datasets)),
            flash=view.session.take_flash("datasets"),
        )

    async def show_one(view: View) -> web.StreamResponse:
        request = storage_pb2.GetDatasetRequest(name=view.request.match_info["name"])
        found = await view.call("Storage/GetDataset", request)
        return view.render(
            "dataset.html", dataset=dataset_facts(found), flash=view.session.take_flash("datasets")
        )

    async def delete(view: View) -> web.StreamResponse:
        request = storage_pb2.GetDatasetRequest(name=view.request.match_info["name"])
        gone = await view.call("Storage/DeleteDataset", request)
        view.session.flash["datasets.ok"] = f"Dataset {gone.name} is deleted, and its data with it."
        raise web.HTTPFound("/console/datasets")

    async def upload(view: View) -> web.StreamResponse:
        async def upload_call(rpc: str, message: Any) -> Any:
            """A browser may send slowly: the stream may take as long as UPLOAD_S."""
            return await view.call(rpc, message, UPLOAD_S)

        name, description = upload_query(view.request.query)
        if view.session.memo.get(UPLOADING) or _uploads.locked():
            busy = ResourceExhausted(
                "another upload is under way; send this file when it has finished", 10
            )
            status, answer = upload_refusal(busy)
            return web.json_response(answer, status=status, headers=PAGE_HEADERS)
        view.session.memo[UPLOADING] = True
        try:
            async with _uploads:
                return await _upload(view, upload_call, name, description)
        finally:
            view.session.memo.pop(UPLOADING, None)

    async def _upload(
        view: View, upload_call: Call, name: str, description: str
    ) -> web.StreamResponse:
        try:
            size = declared_size(view.request.content_length)
            await _check_name_free(view, name)
            blob = await upload_body(upload_call, BodyReplay(view.request.content.read, size))
            create = storage_pb2.CreateDatasetRequest(
                name=name, sha256=blob.sha256, description=description
            )
            try:
                made = await view.call("Storage/CreateDataset", create)
            except LLMOSError:
                if not blob.deduplicated:
                    await _forget_blob(view, blob.sha256)
                raise
        except Unauthenticated:
            raise
        except LLMOSError as exc:
            status, answer = upload_refusal(exc)
            return web.json_response(answer, status=status, headers=PAGE_HEADERS)
        view.session.flash["datasets.ok"] = (
            f"Dataset {made.name} is uploaded: {made.records:,} records, {made.size:,} bytes."
        )
        location = f"/console/datasets/{made.name}"
        return web.json_response({"location": location}, headers=PAGE_HEADERS)

    console.page("GET", "/console/datasets", DATASETS, show)
    console.page("PUT", "/console/datasets/upload", DATASETS, upload)
    console.page("GET", "/console/datasets/{name}", DATASETS, show_one)
    console.page("POST", "/console/datasets/{name}/delete", DATASETS, delete)

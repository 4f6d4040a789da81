"""The datasets page's pure parts: the browser's upload body streamed to storage in
pieces and resumed after a broken stream (against a fake storage that keeps only
whole chunks, as the real one does), refusals as JSON naming the form's field, and the
dataset rows and pages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.console.pages.dataset_upload import (
    STALLS,
    BodyBroken,
    BodyReplay,
    upload_body,
    upload_query,
    upload_refusal,
)
from gateway.console.pages.datasets import dataset_facts, dataset_rows, declared_size
from gateway.web.render import render_text
from llmos.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from llmos.v1 import storage_pb2


class Body:
    """A request body that hands out at most `n` bytes a read, as aiohttp's does."""

    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        self.data = data
        self.at = 0
        self.fail_at = fail_at
        self.reads: list[int] = []

    async def read(self, n: int) -> bytes:
        self.reads.append(n)
        if self.fail_at is not None and self.at >= self.fail_at:
            raise ConnectionResetError("Connection lost")
        piece = self.data[self.at : self.at + n]
        self.at += len(piece)
        return piece


class Storage:
    """UploadBlob and GetUpload of a fake storage: it keeps whole `chunk`s only, and
    each stream in `breaks` ends (Unavailable) after that many data messages."""

    def __init__(self, chunk: int = 4, breaks: tuple[int, ...] = ()) -> None:
        self.chunk = chunk
        self.breaks = list(breaks)
        self.stored = bytearray()
        self.starts: list[storage_pb2.UploadStart] = []
        self.offsets: list[int] = []

    async def call(self, rpc: str, message: Any) -> Any:
        if rpc == "Storage/GetUpload":
            if not self.starts:
                raise NotFound("no upload")
            return storage_pb2.UploadStatus(received=len(self.stored), size=self.starts[0].size)
        assert rpc == "Storage/UploadBlob"
        return await self._upload(message)

    async def _upload(
        self, messages: AsyncIterator[storage_pb2.UploadBlobRequest]
    ) -> storage_pb2.Blob:
        limit = self.breaks.pop(0) if self.breaks else None
        pending = bytearray()
        first = True
        count = 0
        async for message in messages:
            if first:
                assert message.WhichOneof("part") == "start"
                self.starts.append(message.start)
                first = False
                continue
            assert message.offset == len(self.stored) + len(pending), "out of order"
            self.offsets.append(message.offset)
            pending += message.data
            count += 1
            whole = len(pending) // self.chunk * self.chunk
            self.stored += pending[:whole]
            del pending[:whole]
            if limit is not None and count >= limit:
                raise Unavailable("the call ran out of time downstream; retry")
        self.stored += pending
        if len(self.stored) != self.starts[0].size:
            raise InvalidArgument("start", "incomplete")  # storage: FailedPrecondition
        return storage_pb2.Blob(sha256="0" * 64, size=len(self.stored))


DATA = bytes(range(256)) * 4  # 1024 bytes


async def test_the_body_goes_to_storage_in_pieces_after_a_start_that_declares_its_size() -> None:
    body, storage = Body(DATA), Storage()
    blob = await upload_body(storage.call, BodyReplay(body.read, len(DATA), keep=64, piece=100))
    assert bytes(storage.stored) == DATA and blob.size == len(DATA)
    start = storage.starts[0]
    assert start.size == len(DATA) and 8 <= len(start.upload_id) <= 64 and not start.sha256
    assert max(body.reads) <= 100  # never more than a piece read at once
    assert storage.offsets == list(range(0, len(DATA), 100))


async def test_a_broken_stream_resumes_from_what_storage_kept_under_the_same_upload_id() -> None:
    body, storage = Body(DATA), Storage(chunk=64, breaks=(3, 2))
    replay = BodyReplay(body.read, len(DATA), keep=256, piece=50)
    await upload_body(storage.call, replay)
    assert bytes(storage.stored) == DATA
    assert len(storage.starts) == 3 and len({s.upload_id for s in storage.starts}) == 1
    assert body.at == len(DATA) and sum(body.reads) <= len(DATA) + 50  # the body read once


async def test_only_the_last_bytes_are_kept_for_a_resume() -> None:
    replay = BodyReplay(Body(DATA).read, len(DATA), keep=100, piece=30)
    async for _ in replay.messages(storage_pb2.UploadStart(upload_id="u" * 8), 0):
        pass
    assert replay.taken == len(DATA)
    assert len(DATA) - 130 < replay.kept_from <= len(DATA) - 100


class GatedBody(Body):
    """A body whose bytes arrive only once `gate` is set, refusing two readers at once
    as aiohttp's does."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.gate = asyncio.Event()
        self.waiting = False

    async def read(self, n: int) -> bytes:
        if self.waiting:
            raise RuntimeError("read() called while another coroutine is already waiting")
        self.waiting = True
        try:
            await self.gate.wait()
        finally:
            self.waiting = False
        return await super().read(n)


async def test_a_stale_stream_still_waiting_for_the_body_hands_its_piece_to_the_new_one() -> None:
    body = GatedBody(DATA[:100])
    replay = BodyReplay(body.read, 100, keep=100, piece=30)
    start = storage_pb2.UploadStart(upload_id="u" * 8, size=100)
    stale = replay.messages(start, 0)
    await anext(stale)
    stale_next = asyncio.ensure_future(anext(stale))  # waits in a read of the body
    await asyncio.sleep(0)
    fresh = replay.messages(start, 0)
    assert (await anext(fresh)).WhichOneof("part") == "start"
    fresh_next = asyncio.ensure_future(anext(fresh))  # must not read at the same time
    await asyncio.sleep(0)
    body.gate.set()
    first = await fresh_next
    assert (first.offset, first.data) == (0, DATA[:30])  # the piece the stale stream read
    with pytest.raises(StopAsyncIteration):
        await stale_next  # which it did not send
    rest = [m async for m in fresh]
    assert b"".join([first.data, *(m.data for m in rest)]) == DATA[:100]
    assert sum(body.reads) == 100


async def test_a_resume_from_before_the_kept_bytes_gives_up_with_a_sentence() -> None:
    storage = Storage(chunk=512, breaks=(30,))  # keeps nothing of the first 30 * 10 bytes
    replay = BodyReplay(Body(DATA).read, len(DATA), keep=20, piece=10)
    with pytest.raises(Unavailable, match="could not be resumed; send the file again"):
        await upload_body(storage.call, replay)


async def test_an_upload_that_stores_nothing_more_gives_up_after_a_few_breaks() -> None:
    storage = Storage(chunk=4096, breaks=(1,) * (STALLS + 2))
    replay = BodyReplay(Body(DATA).read, len(DATA), keep=len(DATA), piece=10)
    with pytest.raises(Unavailable, match="after 0 of 1024 bytes"):
        await upload_body(storage.call, replay)
    assert len(storage.starts) == STALLS + 1


async def test_a_body_that_breaks_or_ends_early_is_the_uploads_error_not_storages() -> None:
    broken = BodyReplay(Body(DATA, fail_at=300).read, len(DATA), piece=100)
    with pytest.raises(BodyBroken, match="did not arrive whole"):
        await upload_body(Storage().call, broken)
    short = BodyReplay(Body(DATA[:500]).read, len(DATA), piece=100)
    with pytest.raises(BodyBroken, match="ended after 500 of its 1024 bytes"):
        await upload_body(Storage().call, short)


def test_a_refusal_is_json_naming_the_form_field_in_a_sentence() -> None:
    bad_name = InvalidArgument("name", "'Bad Name' is not a name (1-128 of a-z 0-9 . _ -)")
    assert upload_refusal(bad_name) == (
        400,
        {"error": "Name: 'Bad Name' is not a name (1-128 of a-z 0-9 . _ -).", "field": "name"},
    )
    long = InvalidArgument("description", "is longer than 1000 characters")
    assert upload_refusal(long)[1] == {
        "error": "Description is longer than 1000 characters.",
        "field": "description",
    }
    quota = ResourceExhausted("tenant 'lab' would store 5001 bytes, over its quota of 3000")
    status, answer = upload_refusal(quota)
    assert status == 429 and answer["field"] == "file"
    assert answer["error"].startswith("File: tenant 'lab' would store")
    assert upload_refusal(InvalidArgument("start.size", "must be between 0 and 1"))[1] == {
        "error": "File must be between 0 and 1.",
        "field": "file",
    }
    assert upload_refusal(BodyBroken("the file ended early"))[0] == 400
    assert upload_refusal(PermissionDenied("this call needs scope 'datasets'")) == (
        403,
        {"error": "This call needs scope 'datasets'.", "field": ""},
    )


def test_the_upload_declares_a_known_non_zero_size_and_its_query_is_trimmed() -> None:
    assert declared_size(10) == 10
    for bad in (None, 0):
        with pytest.raises(InvalidArgument) as caught:
            declared_size(bad)
        assert caught.value.field == "file"
    assert upload_query({"name": " chats ", "description": " mine "}) == ("chats", "mine")
    assert upload_query({}) == ("", "")


def _dataset(name: str, records: int = 1200, size: int = 5 << 20) -> storage_pb2.Dataset:
    dataset = storage_pb2.Dataset(
        name=name, sha256="c" * 64, size=size, records=records, description=""
    )
    dataset.created_at.FromSeconds(1_790_000_000)
    return dataset


def test_datasets_are_listed_by_name_with_counts_a_person_reads() -> None:
    rows = dataset_rows([_dataset("zeta"), _dataset("alpha", records=3, size=80)])
    assert [r["name"] for r in rows] == ["alpha", "zeta"]
    facts = dataset_facts(_dataset("zeta"))
    assert facts["records"] == "1,200" and facts["bytes"] == f"{5 << 20:,}"
    assert facts["description"] == "No description." and facts["created"] == 1_790_000_000


def _layout(**context: Any) -> dict[str, Any]:
    return {"nav": [], "current": "/console/datasets", "user": "ada", "tenant": "lab",
            "csrf": "t0ken", **context}  # fmt: skip


def test_the_pages_carry_the_upload_form_and_a_confirmed_delete() -> None:
    listing = render_text(
        "datasets.html", **_layout(rows=dataset_rows([_dataset("a<b")]), flash={})
    )
    assert '<form data-upload method="post" action="/console/datasets/upload"' in listing
    assert "<progress" in listing and "data-status" in listing and 'type="file"' in listing
    assert "a&lt;b" in listing and "a<b" not in listing
    one = render_text("dataset.html", **_layout(dataset=dataset_facts(_dataset("chats")), flash={}))
    assert 'action="/console/datasets/chats/delete" data-confirm=' in one
    assert 'name="csrf_token" value="t0ken"' in one and "sha256:" + "c" * 64 in one

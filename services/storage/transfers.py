"""Moving blobs in and out: resumable uploads, verified downloads, and deleting a blob
nothing uses.

An upload is a start (tenant, id, size, optional digest) followed by chunks at their
offsets. Bad data (a chunk out of order, a digest that does not match) discards the whole
upload; a broken stream keeps what was written so the client resumes from `received`.
An upload nobody resumes holds its quota reservation and its file until it has been idle
for the configured time (`expire_idle`), then both are released.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from llmos.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from services.storage.blobs import DigestMismatch, Upload
from services.storage.checks import (
    check_blob_size,
    check_sha256,
    check_tenant,
    check_upload_id,
)
from services.storage.crypto import Corrupt
from services.storage.metadata import BlobRow
from services.storage.quotas import Quotas
from services.storage.store import Store

DOWNLOAD_GROUP = 3  # 1 MiB chunks per streamed message: under the default 4 MiB limit


@dataclass(frozen=True)
class UploadStart:
    """The first message of an upload: what is coming, under which id."""

    tenant: str
    upload_id: str
    size: int
    sha256: str


@dataclass(frozen=True)
class UploadChunk:
    """Bytes of an upload, at the offset they start at."""

    offset: int
    data: bytes


#: One message of an upload stream; None is a message that is neither.
UploadPart = UploadStart | UploadChunk | None


@dataclass(frozen=True)
class BlobPiece:
    """Plaintext of a blob at `offset`, with the whole blob's `size` (for ranged reads)."""

    offset: int
    data: bytes
    size: int


@dataclass(frozen=True)
class StoredBlob:
    """A finished upload: the blob it became, and whether the tenant had it already."""

    tenant: str
    sha256: str
    size: int
    deduplicated: bool


class Transfers:
    """Uploads, downloads and deletion of a tenant's blobs."""

    def __init__(self, store: Store, quotas: Quotas) -> None:
        self._store = store
        self._quotas = quotas
        #: one upload admitted at a time: the quota check and the reservation (the row of
        #: the upload in progress) are then one step, and expiry never races a resume
        self._admitting = asyncio.Lock()
        #: (tenant, upload id) of the uploads whose stream is open now: never expired
        self._streaming: set[tuple[str, str]] = set()

    async def upload(self, parts: AsyncIterable[UploadPart]) -> StoredBlob:
        """Receive one upload stream and store its blob once it is complete and verified.
        Each message is written (hashed, sealed, staged: on a thread) while the next one
        arrives; at most two are held."""
        upload: Upload | None = None
        writing: asyncio.Task[None] | None = None
        try:
            async for part in parts:
                if upload is None:
                    upload = await self._begin(part)
                    continue
                if writing is not None:
                    await writing  # in order: a message is checked once the last is written
                writing = asyncio.create_task(self._receive(upload, part))
            if writing is not None:
                await writing
            return await self._finish(upload)
        except InvalidArgument:
            await _settled(writing)
            if upload is not None:  # bad data: nothing of it stays
                upload.close()
                await asyncio.to_thread(
                    self._store.files.discard, upload.row.tenant, upload.row.upload_id
                )
            raise
        except BaseException:  # the stream broke: what was written stays for a resume
            await _settled(writing)
            if upload is not None:
                upload.close()
            raise
        finally:
            if upload is not None:
                self._streaming.discard((upload.row.tenant, upload.row.upload_id))

    async def _finish(self, upload: Upload | None) -> StoredBlob:
        """Store the blob of an upload whose stream ended."""
        if upload is None:
            raise InvalidArgument("start", "the stream was empty: send an UploadStart first")
        row = upload.row
        if not self._store.files.complete(upload):
            upload.close()
            raise FailedPrecondition(
                f"upload {row.upload_id!r} is incomplete: {upload.stored} of {row.size} "
                "bytes stored; send the rest from there with the same upload_id"
            )
        try:
            sha256, deduplicated = await asyncio.to_thread(self._store.files.finish, upload)
        except DigestMismatch as exc:
            raise InvalidArgument("start.sha256", f"{exc}; nothing was stored") from None
        self._store.record(row.tenant, "storage.blob.write", f"blob/{sha256}", f"{row.size} bytes")
        return StoredBlob(row.tenant, sha256, row.size, deduplicated)

    async def _begin(self, start: UploadPart) -> Upload:
        if not isinstance(start, UploadStart):
            raise InvalidArgument("start", "the first message must be an UploadStart")
        tenant = check_tenant(start.tenant)
        check_upload_id(start.upload_id, "start.upload_id")
        check_blob_size(start.size, "start.size")
        if start.sha256:
            check_sha256(start.sha256, "start.sha256")
        async with self._admitting:
            existing = self._store.meta.upload(tenant, start.upload_id)
            if existing is not None and (
                existing.size != start.size or existing.expected_sha256 != start.sha256
            ):
                raise FailedPrecondition(
                    f"upload {start.upload_id!r} was started with another size or digest"
                )
            if existing is None:
                self._quotas.make_room(tenant, start.size)
            upload = await asyncio.to_thread(
                self._store.files.begin, tenant, start.upload_id, start.size, start.sha256
            )
            self._streaming.add((tenant, start.upload_id))
            return upload

    async def _receive(self, upload: Upload, chunk: UploadPart) -> None:
        if not isinstance(chunk, UploadChunk):
            raise InvalidArgument("start", "may only be sent first")
        expected = upload.received + len(upload.pending)
        if chunk.offset != expected:
            raise InvalidArgument(
                "offset",
                f"chunk out of order: it starts at {chunk.offset}, but {expected} bytes "
                "have been received",
            )
        try:
            await asyncio.to_thread(self._store.files.write, upload, chunk.data)
        except ValueError as exc:
            raise InvalidArgument("data", str(exc)) from None

    async def expire_idle(self, idle_s: float, now: float | None = None) -> list[tuple[str, str]]:
        """Discard uploads no stream has written to for `idle_s` seconds (their file's last
        write), releasing their quota reservation and file; the (tenant, id) of each."""
        now = time.time() if now is None else now
        expired = []
        async with self._admitting:
            for row in self._store.meta.uploads():
                key = (row.tenant, row.upload_id)
                last = await asyncio.to_thread(
                    self._store.files.place.last_write, row.tenant, row.upload_id
                )
                if key in self._streaming or now - last < idle_s:
                    continue
                await asyncio.to_thread(self._store.files.discard, row.tenant, row.upload_id)
                self._store.record(
                    row.tenant, "storage.upload.expire", f"upload/{row.upload_id}",
                    f"idle for over {idle_s:.0f} s; {row.size} bytes released",
                )  # fmt: skip
                expired.append(key)
        return expired

    async def progress(self, tenant: str, upload_id: str) -> tuple[int, int]:
        """How far an upload in progress got: (bytes received, bytes declared)."""
        tenant = check_tenant(tenant)
        row = self._store.meta.upload(tenant, upload_id)
        if row is None:
            raise NotFound(f"no upload {upload_id!r} is in progress")
        upload = await asyncio.to_thread(
            self._store.files.begin, tenant, upload_id, row.size, row.expected_sha256
        )
        return upload.received, row.size

    async def download(
        self, tenant: str, sha256: str, offset: int, length: int = 0
    ) -> AsyncIterator[BlobPiece]:
        """A blob's plaintext from `offset` on (at most `length` bytes; 0: to the end), as
        pieces each verified. The next piece is read and decrypted while this one is sent,
        so disk and crypto overlap the network; at most one piece waits (memory bounded)."""
        tenant = check_tenant(tenant)
        sha256 = check_sha256(sha256)
        row = self._store.meta.blob(tenant, sha256)
        if row is None:
            raise NotFound(f"blob {sha256} does not exist")
        if not 0 <= offset <= row.size:
            raise InvalidArgument("offset", f"must be between 0 and the size, {row.size}")
        if length < 0:
            raise InvalidArgument("length", "must not be negative (0 reads to the end)")
        end = row.size if length == 0 else min(row.size, offset + length)
        chunks = self._store.files.read(tenant, sha256, offset, group=DOWNLOAD_GROUP)
        ahead: asyncio.Future[bytes | None] = asyncio.ensure_future(
            asyncio.to_thread(_next_chunk, chunks)
        )
        try:
            while True:
                chunk = await ahead
                if chunk is None:
                    return
                if offset + len(chunk) >= end:  # the range's last piece: read no further
                    yield BlobPiece(offset, chunk[: end - offset], row.size)
                    return
                ahead = asyncio.ensure_future(asyncio.to_thread(_next_chunk, chunks))
                yield BlobPiece(offset, chunk, row.size)
                offset += len(chunk)
        finally:
            # a read under way in its thread must end before the file is closed
            ahead.add_done_callback(_closing(chunks))

    async def delete(self, tenant: str, sha256: str) -> BlobRow:
        """Delete a blob no dataset or model file uses."""
        tenant = check_tenant(tenant)
        sha256 = check_sha256(sha256)
        async with self._store.lock:
            row = self._store.meta.blob(tenant, sha256)
            if row is None:
                raise NotFound(f"blob {sha256} does not exist")
            users = self._store.meta.references(tenant, sha256)
            if users:
                raise FailedPrecondition(
                    f"blob {sha256} is used by {users} dataset(s) or model file(s); delete those"
                )
            self._store.files.remove(tenant, sha256)
        self._store.record(tenant, "storage.blob.delete", f"blob/{sha256}")
        return row


async def _settled(writing: asyncio.Task[None] | None) -> None:
    """Wait for a write under way in its thread (its outcome no longer matters) before its
    upload is closed or discarded."""
    if writing is not None and not writing.done():
        await asyncio.wait([writing])
    if writing is not None and not writing.cancelled():
        writing.exception()  # retrieved: a failure already answered is not worth a warning


def _closing(chunks: Iterator[bytes]) -> Callable[[asyncio.Future[bytes | None]], None]:
    """A callback closing a blob's reader (its file) once its last read is over: a range
    that ended early, or a client that went away, leaves the reader open."""

    def close(read: asyncio.Future[bytes | None]) -> None:
        if not read.cancelled():
            read.exception()  # a failed read nobody awaited is not worth a warning
        close_reader = getattr(chunks, "close", None)
        if close_reader is not None:
            close_reader()

    return close


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    try:
        return next(chunks)
    except StopIteration:
        return None
    except Corrupt as exc:
        raise DataLoss(f"stored data is damaged and was not served: {exc}") from None

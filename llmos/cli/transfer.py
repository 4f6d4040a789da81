"""Files to and from storage through the gateway, streamed in pieces of a few MiB (never
read whole), with a progress line on stderr. A broken upload is resumed from what the
server stored (same upload id), up to 3 times; a download runs several ranges at once."""

from __future__ import annotations

import collections
import hashlib
import os
import queue
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import grpc

from llmos.v1 import storage_pb2, storage_pb2_grpc

PIECE = 1 << 20
#: bytes per upload message: under the gateway's 4 MiB request limit with room to spare
UPLOAD_PIECE = 2 * PIECE
#: bytes per ranged DownloadBlob request, and how many run at once
SEGMENT = 32 * PIECE
STREAMS = 4
RESUMES = 3
RETRIABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)


def file_digest(path: Path) -> str:
    """sha256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while piece := file.read(PIECE):
            digest.update(piece)
    return digest.hexdigest()


def progress(name: str, done: int, size: int) -> str:
    """The progress line of a transfer (printed after a carriage return)."""
    return f"{name}: {done * 100 // max(size, 1)}% of {size} bytes"


def upload_file(
    stub: storage_pb2_grpc.StorageStub, path: Path, timeout: float, quiet: bool = False
) -> storage_pb2.Blob:
    """Upload `path`, resuming after a broken stream. The file is read once: each piece is
    hashed on a thread of its own while it is sent (sha256 releases the GIL), and the
    digest storage computed must equal this one, else the blob is deleted (unless it was
    there before) and the upload fails."""
    size = path.stat().st_size
    start = storage_pb2.UploadStart(upload_id=uuid.uuid4().hex, size=size)
    with _Hasher() as hasher:

        def messages(offset: int) -> Iterator[storage_pb2.UploadBlobRequest]:
            yield storage_pb2.UploadBlobRequest(start=start)
            with path.open("rb") as file:
                hasher.catch_up(file, offset)
                file.seek(offset)
                while piece := file.read(UPLOAD_PIECE):
                    hasher.feed(offset, piece)
                    yield storage_pb2.UploadBlobRequest(data=piece, offset=offset)
                    offset += len(piece)
                    if not quiet:
                        print("\r" + progress(path.name, offset, size), end="", file=sys.stderr,
                              flush=True)  # fmt: skip

        offset = 0
        for attempt in range(RESUMES + 1):
            try:
                blob: storage_pb2.Blob = stub.UploadBlob(messages(offset), timeout=timeout)
                break
            except grpc.RpcError as exc:
                if exc.code() not in RETRIABLE or attempt == RESUMES:
                    raise
                status = stub.GetUpload(storage_pb2.GetUploadRequest(upload_id=start.upload_id))
                offset = status.received
        sha256 = hasher.hexdigest(size)
    if not quiet:
        print(file=sys.stderr)
    if blob.sha256 != sha256:
        if not blob.deduplicated:
            stub.DeleteBlob(storage_pb2.DownloadBlobRequest(sha256=blob.sha256))
        raise DigestMismatch(
            f"{path}: storage received data hashing to {blob.sha256}, but the file hashes "
            f"to {sha256} (it changed while it was uploaded?); nothing was kept"
        )
    return blob


class DigestMismatch(RuntimeError):
    """What storage received is not what the file holds."""


class _Hasher:
    """The sha256 of a file, fed the pieces read to send them and hashing them in order on
    one thread while the next piece is sent. Pieces sent again after a resume are hashed
    once; at most AHEAD pieces wait to be hashed (memory bounded)."""

    AHEAD = 4

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="upload-hash")
        self._waiting: collections.deque[Future[None]] = collections.deque()
        self.fed = 0  # bytes handed to the hashing thread, in order from 0

    def __enter__(self) -> _Hasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(cancel_futures=True)

    def feed(self, offset: int, piece: bytes) -> None:
        """Hash what of `piece` (read at `offset`) is new; `offset` is at most `fed`."""
        if offset + len(piece) <= self.fed:
            return
        new = memoryview(piece)[self.fed - offset :]
        self._waiting.append(self._pool.submit(self._digest.update, new))
        self.fed += len(new)
        while len(self._waiting) > self.AHEAD:
            self._waiting.popleft().result()

    def catch_up(self, file: BinaryIO, offset: int) -> None:
        """Before sending from `offset`, hash what storage kept beyond what was fed (a
        resume may start past it): read again from the file."""
        file.seek(self.fed)
        while self.fed < offset and (piece := file.read(min(UPLOAD_PIECE, offset - self.fed))):
            self.feed(self.fed, piece)

    def hexdigest(self, size: int) -> str:
        while self._waiting:
            self._waiting.popleft().result()
        if self.fed != size:
            raise RuntimeError(f"{self.fed} of {size} bytes were read: the file changed")
        return self._digest.hexdigest()


def download_file(
    stub: storage_pb2_grpc.StorageStub, sha256: str, target: Path, timeout: float
) -> None:
    """Write the blob `sha256` of the caller's tenant (or `system`'s) to `target`: ranges
    of SEGMENT bytes fetched by up to STREAMS streams at once (one HTTP/2 stream is held
    back by its flow-control window; several fill the link), each piece written at its
    offset. Memory stays at about one message per stream."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as file:
        fd = file.fileno()
        first = iter(stub.DownloadBlob(_range(sha256, 0), timeout=timeout))
        head = next(first, None)
        if head is None:
            return
        os.pwrite(fd, head.data, head.offset)
        # an older storage sends no size and ignores the length: the first stream is all
        offsets = queue.SimpleQueue[int]()
        for offset in range(SEGMENT, head.size, SEGMENT):
            offsets.put(offset)
        failed = threading.Event()

        def write(chunks: Iterable[storage_pb2.BlobChunk]) -> None:
            for chunk in chunks:
                if failed.is_set():
                    return
                os.pwrite(fd, chunk.data, chunk.offset)

        def ranges() -> None:
            while not failed.is_set():
                try:
                    offset = offsets.get_nowait()
                except queue.Empty:
                    return
                write(stub.DownloadBlob(_range(sha256, offset), timeout=timeout))

        def first_then_ranges() -> None:
            write(first)
            ranges()

        def guarded(work: Callable[[], None]) -> None:
            try:
                work()
            except BaseException:
                failed.set()  # the other streams stop at their next message
                raise

        with ThreadPoolExecutor(STREAMS) as pool:
            running = [pool.submit(guarded, first_then_ranges)]
            running += [pool.submit(guarded, ranges) for _ in range(STREAMS - 1)]
            for done in running:
                done.result()


def _range(sha256: str, offset: int) -> storage_pb2.DownloadBlobRequest:
    return storage_pb2.DownloadBlobRequest(sha256=sha256, offset=offset, length=SEGMENT)

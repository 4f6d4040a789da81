"""Files to and from storage through the gateway, streamed in pieces of a few MiB (never
read whole), with a progress line on stderr. A broken upload is resumed from what the
server stored (same upload id), up to 3 times; a download runs several ranges at once."""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from llmos.v1 import storage_pb2, storage_pb2_grpc

PIECE = 1 << 20
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
    """Upload `path` (checked against its digest), resuming after a broken stream."""
    size = path.stat().st_size
    start = storage_pb2.UploadStart(upload_id=uuid.uuid4().hex, size=size, sha256=file_digest(path))

    def messages(offset: int) -> Iterator[storage_pb2.UploadBlobRequest]:
        yield storage_pb2.UploadBlobRequest(start=start)
        with path.open("rb") as file:
            file.seek(offset)
            while piece := file.read(PIECE):
                yield storage_pb2.UploadBlobRequest(data=piece, offset=offset)
                offset += len(piece)
                if not quiet:
                    print("\r" + progress(path.name, offset, size), end="", file=sys.stderr,
                          flush=True)  # fmt: skip

    offset = 0
    for attempt in range(RESUMES + 1):
        try:
            blob: storage_pb2.Blob = stub.UploadBlob(messages(offset), timeout=timeout)
            if not quiet:
                print(file=sys.stderr)
            return blob
        except grpc.RpcError as exc:
            if exc.code() not in RETRIABLE or attempt == RESUMES:
                raise
            status = stub.GetUpload(storage_pb2.GetUploadRequest(upload_id=start.upload_id))
            offset = status.received
    raise AssertionError("unreachable")


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

"""Files to and from storage through the gateway, streamed in 1 MiB pieces (never read
whole), with a progress line on stderr. A broken upload is resumed from what the server
stored (same upload id), up to 3 times."""

from __future__ import annotations

import hashlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc

from llmos.v1 import storage_pb2, storage_pb2_grpc

PIECE = 1 << 20
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
    """Write the blob `sha256` of the caller's tenant (or `system`'s) to `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as file:
        wanted = storage_pb2.DownloadBlobRequest(sha256=sha256)
        for chunk in stub.DownloadBlob(wanted, timeout=timeout):
            file.write(chunk.data)

"""Downloads in ranges, as `llmos` fetches large files: a range is served with the whole
blob's size (so a client can split the rest), a bad range is refused naming its field,
and parallel ranged streams write exactly the blob. A real storage process, on both
backends."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from llmos.cli import transfer
from llmos.v1 import storage_pb2, storage_pb2_grpc
from tests.integration.storage_client import MIB, StorageProcess, refused, upload


@pytest.fixture(scope="module")
def storage(storage_on_each_backend: StorageProcess) -> StorageProcess:
    """Each test runs on both backends."""
    return storage_on_each_backend


def test_a_range_of_a_blob_is_served_with_the_whole_blobs_size(storage: StorageProcess) -> None:
    stub = storage.stub()
    data = os.urandom(5 * MIB + 321)
    blob = upload(stub, "lab-ranges", data)

    def ranged(offset: int, length: int) -> tuple[bytes, set[int]]:
        request = storage_pb2.DownloadBlobRequest(
            tenant="lab-ranges", sha256=blob.sha256, offset=offset, length=length
        )
        chunks = list(stub.DownloadBlob(request, timeout=60))
        return b"".join(c.data for c in chunks), {c.size for c in chunks}

    assert ranged(MIB - 5, 2 * MIB + 9) == (data[MIB - 5 : 3 * MIB + 4], {len(data)})
    assert ranged(0, 10) == (data[:10], {len(data)})
    assert ranged(4 * MIB, 10 * MIB)[0] == data[4 * MIB :]  # a range past the end stops there


def test_a_bad_range_is_invalid_argument_naming_the_field(storage: StorageProcess) -> None:
    stub = storage.stub()
    blob = upload(stub, "lab-ranges", b"some bytes")

    def ranged(offset: int, length: int) -> object:
        request = storage_pb2.DownloadBlobRequest(
            tenant="lab-ranges", sha256=blob.sha256, offset=offset, length=length
        )
        return lambda: list(stub.DownloadBlob(request, timeout=60))

    refused(ranged(0, -1), grpc.StatusCode.INVALID_ARGUMENT, "length: must not be negative")
    refused(ranged(11, 1), grpc.StatusCode.INVALID_ARGUMENT, "offset: must be between 0")


class _AsTenant:
    """A storage stub whose downloads act for `tenant`, as the gateway stamps them."""

    def __init__(self, stub: storage_pb2_grpc.StorageStub, tenant: str) -> None:
        self._stub, self._tenant = stub, tenant

    def DownloadBlob(self, request: storage_pb2.DownloadBlobRequest, **kwargs: object) -> object:
        request.tenant = self._tenant
        return self._stub.DownloadBlob(request, **kwargs)


@pytest.mark.parametrize("size", [0, 7 * MIB + 123])
def test_a_download_in_parallel_ranges_writes_exactly_the_blob(
    storage: StorageProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(transfer, "SEGMENT", MIB + 4097)  # ranges that cut chunks anywhere
    data = os.urandom(size)
    blob = upload(storage.stub(), "lab-ranges", data)
    target = tmp_path / "out" / "blob.bin"
    transfer.download_file(_AsTenant(storage.stub(), "lab-ranges"), blob.sha256, target, 60)
    assert target.read_bytes() == data

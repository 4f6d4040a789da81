"""`make bench-storage`: upload and download speed of a 512 MiB blob through the storage
gRPC API (encrypted, hashed, chunked), as ratios to `cp` of the same file on the same disk
in the same run, and the storage process's peak memory. Prints one JSON line:

  upload_mb_s / download_mb_s / cp_mb_s   throughput, MB = 10^6 bytes
  upload_vs_cp, download_vs_cp            the ratios (target >= 0.5)
  peak_rss_mb                             VmHWM of the storage process (bounded: the blob
                                          is 512 MiB, chunks are 1 MiB)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmos.config import environment_without_llmos
from llmos.health import SERVING, check_health
from llmos.identity import operator_identity
from llmos.ports import free_port
from llmos.usage import peak_resident_mb
from llmos.v1 import storage_pb2, storage_pb2_grpc
from tools.devstack.infra import start_nats, start_redis, terminate
from tools.scratch import scratch_directory
from tools.standin import internal_channel

MIB = 1 << 20


def _write_file(path: Path, size: int) -> str:
    block = os.urandom(MIB)
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for index in range(size // MIB):
            piece = index.to_bytes(8, "big") + block[8:]
            digest.update(piece)
            file.write(piece)
    return digest.hexdigest()


def _requests(
    path: Path, size: int, sha256: str, piece: int
) -> Iterator[storage_pb2.UploadBlobRequest]:
    yield storage_pb2.UploadBlobRequest(
        start=storage_pb2.UploadStart(
            tenant="bench", upload_id=uuid.uuid4().hex, size=size, sha256=sha256
        )
    )
    offset = 0
    with path.open("rb") as file:
        while data := file.read(piece):
            yield storage_pb2.UploadBlobRequest(data=data, offset=offset)
            offset += len(data)


def measure(size_mib: int, piece_mib: int) -> dict[str, Any]:
    with scratch_directory("llmos-bench-storage-") as workdir:
        return _measure(workdir, size_mib, piece_mib)


def _measure(workdir: Path, size_mib: int, piece_mib: int) -> dict[str, Any]:
    nats_server, redis_server = start_nats(workdir), start_redis(workdir)
    address = f"127.0.0.1:{free_port()}"
    storage = subprocess.Popen(
        [sys.executable, "-m", "services.storage"],
        env={
            **environment_without_llmos(),
            "LLMOS_NATS_URL": nats_server.public_url,
            "LLMOS_REDIS_URL": redis_server.public_url,
            "LLMOS_DATA_DIR": str(workdir / "data"),
            "LLMOS_SECRETS_DIR": str(nats_server.secrets_dir),
            "LLMOS_LISTEN_ADDR": address,
            "LLMOS_LOG_LEVEL": "warning",
        },
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        operator = operator_identity(nats_server.secrets_dir, "bench")
        while (
            asyncio.run(check_health(address, timeout_s=1, identity=operator, server="storage"))[0]
            != SERVING
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("storage did not start")
            time.sleep(0.2)
        size = size_mib * MIB
        source = workdir / "source.bin"
        sha256 = _write_file(source, size)
        with internal_channel(address, "storage", nats_server.secrets_dir) as channel:
            stub = storage_pb2_grpc.StorageStub(channel)
            started = time.perf_counter()
            shutil.copyfile(source, workdir / "copy.bin")
            with (workdir / "copy.bin").open("rb+") as file:
                os.fsync(file.fileno())
            cp_s = time.perf_counter() - started
            started = time.perf_counter()
            blob = stub.UploadBlob(_requests(source, size, sha256, piece_mib * MIB), timeout=600)
            upload_s = time.perf_counter() - started
            assert blob.sha256 == sha256
            started = time.perf_counter()
            check = hashlib.sha256()
            with (workdir / "download.bin").open("wb") as out:
                request = storage_pb2.DownloadBlobRequest(tenant="bench", sha256=sha256)
                for chunk in stub.DownloadBlob(request, timeout=600):
                    out.write(chunk.data)
                    check.update(chunk.data)
                os.fsync(out.fileno())
            download_s = time.perf_counter() - started
            assert check.hexdigest() == sha256
        mb = size / 1e6
        return {
            "bench": "storage",
            "blob_mib": size_mib,
            "upload_message_mib": piece_mib,
            "cp_mb_s": round(mb / cp_s, 1),
            "upload_mb_s": round(mb / upload_s, 1),
            "download_mb_s": round(mb / download_s, 1),
            "upload_vs_cp": round(cp_s / upload_s, 3),
            "download_vs_cp": round(cp_s / download_s, 3),
            "peak_rss_mb": peak_resident_mb(storage.pid),
            "path": "client file -> gRPC stream -> sha256 + AES-256-GCM per "
            "1 MiB chunk -> file + fsync; download: decrypt + authenticate + sha256 -> stream "
            "-> client file + fsync; cp = copyfile + fsync",
        }
    finally:
        terminate(storage, 10)
        redis_server.stop()
        nats_server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="blob size in MiB")
    parser.add_argument("--piece-mib", type=int, default=4, help="upload message size")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.mib, args.piece_mib)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

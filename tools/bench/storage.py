"""`make bench-storage`: upload and download speed of a 512 MiB blob, as ratios to `cp`
of the same file on the same disk in the same run, on each storage backend (files and
SQLite; SeaweedFS's S3 and PostgreSQL, started here) and two paths side by side:

- `direct`: the storage gRPC API itself (mutual TLS, as the gateway's certificate);
- `gateway`: the public door, as `llmos` users transfer files (`llmos.cli.transfer`:
  bearer token, scope check, audit, tenant stamped, relayed to storage over mutual TLS).

Both are encrypted, hashed and chunked at rest. Prints one JSON line per backend:

  cp_mb_s                                    copyfile + fsync, MB = 10^6 bytes
  <path>.upload_mb_s / download_mb_s         throughput of each path
  <path>.upload_vs_cp / download_vs_cp       the ratios (target >= 0.5 through the gateway)
  peak_rss_mb.storage / .gateway             VmHWM of each process (bounded: the blob is
                                             512 MiB, messages a few MiB, queues bounded)
  cpu_s.<transfer>.client / gateway / storage CPU seconds (user + system) each process spent
                                             on one transfer: on a small machine the sum,
                                             not the wall time, is what bounds the speed
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmos.channels import plaintext_channel
from llmos.cli.transfer import download_file, upload_file
from llmos.config import environment_without_llmos
from llmos.health import SERVING, check_health
from llmos.identity import operator_identity
from llmos.ports import free_port
from llmos.usage import peak_resident_mb
from llmos.v1 import storage_pb2, storage_pb2_grpc
from tools.devstack.gateway_process import GatewayProcess, start_gateway
from tools.devstack.infra import start_nats, start_redis, terminate
from tools.devstack.shared_storage import (
    ObjectStoreServer,
    PostgresServer,
    start_object_store,
    start_postgres,
)
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


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process `pid` (None: this one, all its threads)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _CpuMeter:
    """CPU seconds of the client, gateway and storage processes per measured transfer."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.spent: dict[str, dict[str, float]] = {}

    def timed(self, name: str, action: Callable[[], object]) -> float:
        before = {who: _cpu_seconds(pid) for who, pid in self.pids.items()}
        elapsed = _timed(action)
        self.spent[name] = {
            who: round(_cpu_seconds(pid) - before[who], 2) for who, pid in self.pids.items()
        }
        return elapsed


def _fsync(path: Path) -> None:
    with path.open("rb+") as file:
        os.fsync(file.fileno())


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while piece := file.read(8 * MIB):
            digest.update(piece)
    return digest.hexdigest()


BACKENDS = ("local", "s3+postgresql")


def measure(size_mib: int, piece_mib: int, backend: str) -> dict[str, Any]:
    with scratch_directory("llmos-bench-storage-") as workdir:
        return _measure(workdir, size_mib, piece_mib, backend)


def _measure(workdir: Path, size_mib: int, piece_mib: int, backend: str) -> dict[str, Any]:
    nats_server, redis_server = start_nats(workdir), start_redis(workdir)
    address = f"127.0.0.1:{free_port()}"
    env = {
        **environment_without_llmos(),
        "LLMOS_NATS_URL": nats_server.public_url,
        "LLMOS_REDIS_URL": redis_server.public_url,
        "LLMOS_SECRETS_DIR": str(nats_server.secrets_dir),
        "LLMOS_LOG_LEVEL": "warning",
    }
    servers: list[PostgresServer | ObjectStoreServer] = []
    if backend != "local":
        postgres = start_postgres(workdir / "postgres", nats_server.secrets_dir)
        servers.append(postgres)
        objects = start_object_store(workdir / "objects", nats_server.secrets_dir)
        servers.append(objects)
        env |= {
            "LLMOS_STORAGE_DATABASE_URL": postgres.url("storage"),
            "LLMOS_STORAGE_S3_ENDPOINT": objects.endpoint,
        }
    storage = subprocess.Popen(
        [sys.executable, "-m", "services.storage"],
        env={**env, "LLMOS_DATA_DIR": str(workdir / "data"), "LLMOS_LISTEN_ADDR": address},
        stderr=subprocess.DEVNULL,
    )
    gateway: GatewayProcess | None = None
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
        gateway = start_gateway(env, workdir / "gateway")
        size = size_mib * MIB
        source = workdir / "source.bin"
        sha256 = _write_file(source, size)

        def cp() -> None:
            shutil.copyfile(source, workdir / "copy.bin")
            _fsync(workdir / "copy.bin")

        timings: dict[str, float] = {"cp": _timed(cp)}
        meter = _CpuMeter({"client": None, "gateway": gateway.process.pid, "storage": storage.pid})
        with internal_channel(address, "storage", nats_server.secrets_dir) as channel:
            stub = storage_pb2_grpc.StorageStub(channel)

            def direct_upload() -> None:
                requests = _requests(source, size, sha256, piece_mib * MIB)
                assert stub.UploadBlob(requests, timeout=600).sha256 == sha256

            def direct_download() -> None:
                check = hashlib.sha256()
                with (workdir / "direct.bin").open("wb") as out:
                    request = storage_pb2.DownloadBlobRequest(tenant="bench", sha256=sha256)
                    for chunk in stub.DownloadBlob(request, timeout=600):
                        out.write(chunk.data)
                        check.update(chunk.data)
                    os.fsync(out.fileno())
                assert check.hexdigest() == sha256

            timings["direct_upload"] = meter.timed("direct_upload", direct_upload)
            timings["direct_download"] = meter.timed("direct_download", direct_download)
        with plaintext_channel(gateway.address, gateway.admin_token()) as public:
            door = storage_pb2_grpc.StorageStub(public)

            def gateway_upload() -> None:
                assert upload_file(door, source, timeout=600, quiet=True).sha256 == sha256

            def gateway_download() -> None:
                download_file(door, sha256, workdir / "gateway.bin", timeout=600)
                _fsync(workdir / "gateway.bin")

            timings["gateway_upload"] = meter.timed("gateway_upload", gateway_upload)
            timings["gateway_download"] = meter.timed("gateway_download", gateway_download)
        assert _file_digest(workdir / "gateway.bin") == sha256  # checked outside the timing
        cp_s, mb = timings["cp"], size / 1e6

        def path(name: str) -> dict[str, float]:
            up, down = timings[f"{name}_upload"], timings[f"{name}_download"]
            return {
                "upload_mb_s": round(mb / up, 1),
                "download_mb_s": round(mb / down, 1),
                "upload_vs_cp": round(cp_s / up, 3),
                "download_vs_cp": round(cp_s / down, 3),
            }

        return {
            "bench": "storage",
            "backend": backend,
            "blob_mib": size_mib,
            "direct_upload_message_mib": piece_mib,
            "cp_mb_s": round(mb / cp_s, 1),
            "direct": path("direct"),
            "gateway": path("gateway"),
            "peak_rss_mb": {
                "storage": peak_resident_mb(storage.pid),
                "gateway": peak_resident_mb(gateway.process.pid),
            },
            "cpu_s": meter.spent,
            "path": "direct: client file -> gRPC stream (mTLS) -> sha256 + AES-256-GCM per "
            "1 MiB chunk -> file + fsync; download: decrypt + authenticate -> stream -> "
            "client file + fsync. gateway: the same through `llmos.cli.transfer` over the "
            "public door (bearer token, relayed over mTLS). cp = copyfile + fsync",
        }
    finally:
        if gateway is not None:
            gateway.stop()
        terminate(storage, 10)
        for server in servers:
            server.stop()
        redis_server.stop()
        nats_server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="blob size in MiB")
    parser.add_argument("--piece-mib", type=int, default=4, help="direct upload message size")
    parser.add_argument(
        "--backend", choices=(*BACKENDS, "both"), default="both", help="default: both, in turn"
    )
    args = parser.parse_args(argv)
    for backend in BACKENDS if args.backend == "both" else (args.backend,):
        print(json.dumps(measure(args.mib, args.piece_mib, backend)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

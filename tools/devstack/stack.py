"""The whole LLM OS on one machine: infrastructure first, then the six services.

Services start together (each waits for its dependencies itself), the stack is ready
when every health check says SERVING, and it stops in reverse start order. A service
that crashes is restarted, unless it keeps crashing, which stops the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from gateway.auth.bootstrap import credentials_path
from llmos.health import SERVING, check_health
from llmos.identity import operator_identity
from llmos.keyfiles import write_private
from llmos.ports import LOCALHOST, free_port
from llmos.processes import kill_group
from llmos.services import SERVICE_MODULES
from tools.devstack.cluster import (
    NatsCluster,
    RedisReplicated,
    start_nats_cluster,
    start_redis_replicated,
)
from tools.devstack.infra import (
    NatsServer,
    RedisServer,
    spawn,
    start_nats,
    start_redis,
    terminate,
)
from tools.devstack.shared_storage import (
    ObjectStoreServer,
    PostgresServer,
    start_object_store,
    start_postgres,
)
from tools.devstack.tls import TlsFiles, ensure_dev_tls

log = logging.getLogger("llmos.devstack")

STACK_FILE = "stack.json"
CRASH_LIMIT = 3  # crashes of one service within CRASH_WINDOW_S stop the stack
CRASH_WINDOW_S = 60.0


#: the dev stack's default intrusion allowlist: this machine's own calls
LOOPBACK_ALLOWLIST = "127.0.0.1,::1"


#: the Prometheus scrape targets file, under `<data dir>/prometheus/`
SCRAPE_TARGETS = "targets.json"


class StackError(RuntimeError):
    """The stack could not start or a service keeps crashing."""


@dataclass
class ServiceProcess:
    """One service child process and what it needs to be restarted."""

    name: str
    address: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    crashes: deque[float] = field(default_factory=deque)
    tls_ca: bytes | None = None  # its gRPC port speaks TLS with a certificate from this CA

    def start(self) -> None:
        """(Re)start the process."""
        module = SERVICE_MODULES[self.name]
        self.proc = spawn([sys.executable, "-m", module], self.log_path, self.env)

    def stop(self, grace_s: float) -> int:
        """SIGTERM, SIGKILL after `grace_s`; then end what it left in its process group
        (Triton's stubs survive a worker that died), each by its id."""
        assert self.proc is not None
        code = terminate(self.proc, grace_s)
        self.end_leftovers()
        return code

    def end_leftovers(self) -> None:
        """Kill whatever the exited process left in its process group (its own: the
        launcher starts each service in a new session)."""
        if self.proc is not None and (left := kill_group(self.proc.pid)):
            log.warning("%s left %d processes behind; ended them", self.name, left)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its log, to explain a failure."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class StackOptions:
    """Where the stack keeps data and listens."""

    data_dir: Path
    host: str = LOCALHOST
    gateway_port: int = 50051
    #: the gateway's OAuth endpoints (0: any free port)
    auth_port: int = 50050
    #: serve the gateway over TLS with a generated local CA and certificate
    tls: bool = True
    ready_timeout_s: float = 120.0
    shutdown_grace_s: float = 5.0
    env: dict[str, str] = field(default_factory=dict)
    #: three clustered NATS servers (each stream on all three), Redis with a replica and
    #: Sentinels
    cluster: bool = False
    #: storage's metadata and the audit log in PostgreSQL, blobs in an S3-compatible store
    #: (both started here: the servers a multi-machine deployment shares)
    shared_storage: bool = False


class DevStack:
    """Starts, supervises and stops NATS, Redis and the six services."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.data_dir = options.data_dir.resolve()
        self.log_dir = self.data_dir / "logs"
        self.nats: NatsServer | NatsCluster | None = None
        self.redis: RedisServer | RedisReplicated | None = None
        self.postgres: PostgresServer | None = None
        self.objects: ObjectStoreServer | None = None
        self.services: list[ServiceProcess] = []
        self.tls: TlsFiles | None = None
        self.issuer = ""
        self.openai = ""
        #: service -> where its /metrics is served
        self.metrics: dict[str, str] = {}

    async def start(self) -> dict[str, str]:
        """Start everything and wait until every service is SERVING; return the ready fields."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._start_infra()
        assert self.nats is not None and self.redis is not None
        gateway_env = self._gateway_env()
        for name in SERVICE_MODULES:
            port = (self.options.gateway_port if name == "gateway" else 0) or free_port(
                self.options.host
            )
            address = f"{self.options.host}:{port}"
            metrics = f"{self.options.host}:{free_port(self.options.host)}"
            self.metrics[name] = metrics
            env = {
                **os.environ,
                "LLMOS_DATA_DIR": str(self.data_dir),
                "LLMOS_NATS_URL": self.nats.public_url,
                **self._redis_env(),
                "LLMOS_LISTEN_ADDR": address,
                "LLMOS_METRICS_ADDR": metrics,
                "LLMOS_SHUTDOWN_GRACE_S": str(self.options.shutdown_grace_s),
                **(gateway_env if name == "gateway" else {}),
                **self._storage_env(),
                **self.options.env,
            }
            service = ServiceProcess(name, address, env, self.log_dir / f"{name}.log")
            if name == "gateway" and self.tls is not None:
                service.tls_ca = self.tls.ca.read_bytes()
            service.start()
            self.services.append(service)
        self._write_scrape_targets()
        await self._wait_serving()
        fields = self.ready_fields()
        write_private(self.data_dir / STACK_FILE, json.dumps(fields, indent=2) + "\n")
        return fields

    def _start_infra(self) -> None:
        """NATS and Redis: one server each, or (`cluster`) three NATS nodes and a Redis
        primary, replica and Sentinels, each attribute set as soon as it runs (so that
        `stop` ends what did start)."""
        host = self.options.host
        if self.options.cluster:
            self.nats = start_nats_cluster(self.data_dir, host)
            self.redis = start_redis_replicated(self.data_dir, host)
        else:
            self.nats = start_nats(self.data_dir, host)
            self.redis = start_redis(self.data_dir, host)
        if self.options.shared_storage:
            secrets = self.nats.secrets_dir
            self.postgres = start_postgres(self.data_dir / "postgres", secrets, host)
            self.objects = start_object_store(self.data_dir / "objects", secrets, host)

    def _storage_env(self) -> dict[str, str]:
        """With shared storage: where storage and audit find PostgreSQL and S3 (each reads
        its own credentials from the secrets dir)."""
        if self.postgres is None or self.objects is None:
            return {}
        return {
            "LLMOS_STORAGE_DATABASE_URL": self.postgres.url("storage"),
            "LLMOS_AUDIT_DATABASE_URL": self.postgres.url("audit"),
            "LLMOS_STORAGE_S3_ENDPOINT": self.objects.endpoint,
        }

    def _redis_env(self) -> dict[str, str]:
        """How services reach Redis: its URL, and with a replica the Sentinels."""
        if isinstance(self.redis, RedisReplicated):
            return self.redis.env()
        assert self.redis is not None
        return {"LLMOS_REDIS_URL": self.redis.public_url}

    def _gateway_env(self) -> dict[str, str]:
        """The gateway's OAuth port and, by default, TLS from a generated local CA. The
        machine's own loopback address is on the intrusion allowlist unless one is given:
        the operator's `llmos` calls come from there, and an operator blocked from their
        own machine could not unblock themselves (other local addresses, 127.0.0.2..., are
        still counted and blocked)."""
        host = self.options.host
        port = self.options.auth_port or free_port(host)
        env = {"LLMOS_AUTH_HTTP_ADDR": f"{host}:{port}"}
        if "LLMOS_INTRUSION_ALLOWLIST" not in {**os.environ, **self.options.env}:
            env["LLMOS_INTRUSION_ALLOWLIST"] = LOOPBACK_ALLOWLIST
        if self.options.tls:
            self.tls = ensure_dev_tls(self.data_dir / "tls", [host])
            env.update(
                LLMOS_TLS_CERT=str(self.tls.cert),
                LLMOS_TLS_KEY=str(self.tls.key),
                LLMOS_TLS_CA=str(self.tls.ca),
            )
        self.issuer = f"{'https' if self.options.tls else 'http'}://{host}:{port}"
        self.openai = f"{self.issuer}/v1"  # the same HTTP server as the issuer's
        return env

    def _write_scrape_targets(self) -> None:
        """`<data dir>/prometheus/targets.json`: every service's /metrics in Prometheus'
        file-based discovery format (`file_sd_configs`), labelled by service."""
        folder = self.data_dir / "prometheus"
        folder.mkdir(exist_ok=True)
        targets = [
            {"targets": [address], "labels": {"service": name, "instance": f"{name}@{address}"}}
            for name, address in self.metrics.items()
        ]
        partial = folder / "targets.json.tmp"  # Prometheus rereads the file: never half
        partial.write_text(json.dumps(targets, indent=2) + "\n")
        partial.replace(folder / SCRAPE_TARGETS)

    def ready_fields(self) -> dict[str, str]:
        """The `key=value` pairs of the ready line (no secrets: `credentials` is a path)."""
        assert self.nats and self.redis
        fields = {s.name: s.address for s in reversed(self.services)}
        fields.update(
            issuer=self.issuer,
            openai=self.openai,
            console=f"{self.issuer}/console/",
            credentials=str(credentials_path(self.data_dir)),
            metrics=str(self.data_dir / "prometheus" / SCRAPE_TARGETS),
        )
        if self.tls is not None:
            fields["tls_ca"] = str(self.tls.ca)
        fields.update(
            nats=self.nats.public_url,
            redis=self.redis.public_url,
            **(
                {"redis_sentinels": self.redis.sentinel_addresses}
                if isinstance(self.redis, RedisReplicated)
                else {}
            ),
            **(
                {"postgres": f"{self.postgres.host}:{self.postgres.port}"}
                if self.postgres is not None
                else {}
            ),
            **({"s3": self.objects.endpoint} if self.objects is not None else {}),
            data_dir=str(self.data_dir),
            logs=str(self.log_dir),
        )
        return fields

    async def _wait_serving(self) -> None:
        deadline = time.monotonic() + self.options.ready_timeout_s
        pending = {s.name: s for s in self.services}
        operator = operator_identity(self.data_dir / "secrets", "launcher")
        while pending:
            for name, service in list(pending.items()):
                assert service.proc is not None
                if service.proc.poll() is not None:
                    raise StackError(
                        f"{name} exited with code {service.proc.returncode} while starting; "
                        f"last log lines:\n{service.log_tail()}"
                    )
                state, _ = await check_health(
                    service.address,
                    timeout_s=1.0,
                    tls_ca=service.tls_ca,
                    identity=None if name == "gateway" else operator,
                    server=name,
                )
                if state == SERVING:
                    del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"not SERVING after {self.options.ready_timeout_s:g}s: {', '.join(pending)}"
                )
            await asyncio.sleep(0.2)

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart crashed services until `stop` is set; give up on a crash loop."""
        while not stop.is_set():
            for service in self.services:
                assert service.proc is not None
                code = service.proc.poll()
                if code is None:
                    continue
                now = time.monotonic()
                service.crashes.append(now)
                while service.crashes and now - service.crashes[0] > CRASH_WINDOW_S:
                    service.crashes.popleft()
                if len(service.crashes) >= CRASH_LIMIT:
                    raise StackError(
                        f"{service.name} crashed {len(service.crashes)} times in "
                        f"{CRASH_WINDOW_S:g}s; last log lines:\n{service.log_tail()}"
                    )
                log.warning("%s exited with code %s; restarting", service.name, code)
                service.end_leftovers()
                service.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)

    def stop(self) -> None:
        """Stop services in reverse start order, then the servers they used."""
        grace = self.options.shutdown_grace_s + 20.0  # the worker also stops Triton
        for service in reversed(self.services):
            if service.proc is not None:
                code = service.stop(grace)
                if code not in (0, -15):
                    log.warning("%s exited with code %s on stop", service.name, code)
        for server in (self.objects, self.postgres, self.redis, self.nats):
            if server is not None:
                server.stop()
        (self.data_dir / STACK_FILE).unlink(missing_ok=True)

"""LLM OS as three hosts on one machine (issue 22): network namespaces joined by virtual
links (tools/netns.py), each with its own address, ports and data directory; the trust
directory (internal CA, every user's credentials) is the one thing they share, as an
operator would hand it to each machine.

  host A  the gateway, the scheduler, the audit log, Redis and NATS node 0
  host B  an inference worker, a trainer and NATS node 1
  host C  a second inference worker, storage (its blobs in SeaweedFS's S3, its metadata
          in PostgreSQL, both on C) and NATS node 2

NATS is one cluster of the three nodes, every stream on all three; every service is
given all three and moves to another when its own goes. Each service listens on, and
advertises, its host's address, so the others dial it across the links. Used by
tests/e2e/test_multinode.py and `make bench-cluster`.
"""

from __future__ import annotations

import contextlib
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.auth.bootstrap import credentials_path
from llmos.model.names import DEFAULT_MODEL
from llmos.ports import free_port
from tools.devstack.cluster import NatsCluster, start_nats_cluster
from tools.devstack.infra import RedisServer, nats_binary, spawn, start_redis, wait_until
from tools.devstack.shared_storage import (
    ObjectStoreServer,
    PostgresServer,
    start_object_store,
    start_postgres,
)
from tools.devstack.tls import ensure_dev_tls
from tools.harness import NotReady, Process, python_env, serving, start_process
from tools.netns import Network

#: host -> the services it runs (workers may be fewer: `HostsOptions.workers`)
LAYOUT: dict[str, tuple[str, ...]] = {
    "a": ("scheduler", "audit", "gateway"),
    "b": ("inference-worker", "trainer"),
    "c": ("storage", "inference-worker"),
}
MODULES = {
    "gateway": "gateway",
    "scheduler": "services.scheduler",
    "audit": "services.audit",
    "storage": "services.storage",
    "trainer": "services.trainer",
    "inference-worker": "services.inference_worker",
}
#: NATS node i runs on host NATS_HOSTS[i]
NATS_HOSTS = ("a", "b", "c")


@dataclass
class HostsOptions:
    """What to run: where the model is, which hosts run a worker, extra environment."""

    data_dir: Path
    models_dir: Path
    workers: tuple[str, ...] = ("b", "c")
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 180.0


@dataclass
class ServiceOnHost:
    """A service process and the host it runs on."""

    host: str
    service: str
    process: Process


class Hosts:
    """The three hosts and everything running on them; `stop()` ends it all."""

    def __init__(self, options: HostsOptions) -> None:
        self.options = options
        self.data_dir = options.data_dir.resolve()
        self.secrets_dir = self.data_dir / "secrets"
        self.network = Network(tuple(LAYOUT))
        self.nats: NatsCluster | None = None
        self.redis: RedisServer | None = None
        self.postgres: PostgresServer | None = None
        self.objects: ObjectStoreServer | None = None
        self.services: list[ServiceOnHost] = []
        self.fields: dict[str, str] = {}

    def address(self, host: str) -> str:
        return self.network[host].address

    def start(self) -> Hosts:
        """Namespaces, then NATS, Redis and storage's backends, then every service at
        once; return when all say SERVING (everything started is stopped on failure)."""
        try:
            self.network.create()
            self._start_infra()
            for host, services in LAYOUT.items():
                for service in services:
                    if service != "inference-worker" or host in self.options.workers:
                        self.start_service(host, service, wait=False)
            self.wait_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_infra(self) -> None:
        data, secrets = self.data_dir, self.secrets_dir
        self.nats = start_nats_cluster(
            data / "nats",
            secrets_dir=secrets,
            hosts=[self.address(h) for h in NATS_HOSTS],
            place=lambda index: self.network.entered(NATS_HOSTS[index]),
        )
        with self.network.entered("a") as a:
            self.redis = start_redis(data / "redis", a.address, secrets_dir=secrets)
        with self.network.entered("c") as c:
            self.postgres = start_postgres(data / "postgres", secrets, c.address)
            self.objects = start_object_store(data / "s3", secrets, c.address)

    def _env(self, host: str, service: str) -> dict[str, str]:
        assert self.nats and self.redis and self.postgres and self.objects
        address = self.address(host)
        env = python_env(
            LLMOS_DATA_DIR=str(self.data_dir / f"host-{host}"),
            LLMOS_SECRETS_DIR=str(self.secrets_dir),
            LLMOS_NATS_URL=self.nats.public_url,
            LLMOS_REDIS_URL=self.redis.public_url,
            LLMOS_ADVERTISE_HOST=address,
            LLMOS_HEARTBEAT_S="0.5",
            LLMOS_SHUTDOWN_GRACE_S="2",
            LLMOS_MODELS_DIR=str(self.options.models_dir),
            LLMOS_MODELS=DEFAULT_MODEL,
            LLMOS_MAX_CONTEXT="512",
            LLMOS_WORKER_WARMUP_S="0",
        )
        if service == "gateway":
            tls = ensure_dev_tls(self.data_dir / "tls", [address])
            env.update(
                LLMOS_AUTH_HTTP_ADDR=f"{address}:{free_port(address)}",
                LLMOS_TLS_CERT=str(tls.cert),
                LLMOS_TLS_KEY=str(tls.key),
                LLMOS_TLS_CA=str(tls.ca),
                # this machine, outside the hosts, is where clients call from
                LLMOS_INTRUSION_ALLOWLIST=f"127.0.0.1,{self.network.client_address}",
            )
        elif service == "storage":
            env.update(
                LLMOS_STORAGE_DATABASE_URL=self.postgres.url("storage"),
                LLMOS_STORAGE_S3_ENDPOINT=self.objects.endpoint,
                LLMOS_STORAGE_S3_BUCKET="llmos",
            )
        return {**env, **self.options.env}

    def start_service(self, host: str, service: str, wait: bool = True) -> Process:
        """`service` on `host` (again, after a crash), listening on the host's address."""
        with self.network.entered(host) as place:
            env = self._env(host, service)
            listen = f"{place.address}:{free_port(place.address)}"
            env["LLMOS_LISTEN_ADDR"] = listen
            if service == "gateway":
                self.fields.update(self._gateway_fields(env, listen))
            logs = self.data_dir / "logs" / f"host-{host}"
            process = start_process(
                service, [sys.executable, "-m", MODULES[service]], env, logs, address=listen
            )
        self.services.append(ServiceOnHost(host, service, process))
        if wait:
            self.wait_serving()
        return process

    def _gateway_fields(self, env: dict[str, str], listen: str) -> dict[str, str]:
        """What clients need (tools/devstack/access.py): the gateway, its issuer and CA,
        the bootstrap admin's credentials file."""
        issuer = f"https://{env['LLMOS_AUTH_HTTP_ADDR']}"
        credentials = credentials_path(Path(env["LLMOS_DATA_DIR"]))
        return {
            "gateway": listen,
            "issuer": issuer,
            "openai": f"{issuer}/v1",
            "tls_ca": env["LLMOS_TLS_CA"],
            "credentials": str(credentials),
        }

    def wait_serving(self) -> None:
        """Until every live service's health check says SERVING."""
        deadline = time.monotonic() + self.options.ready_timeout_s
        pending = [s for s in self.services if s.process.alive()]
        while pending:
            for entry in list(pending):
                process = entry.process
                if not process.alive():
                    raise NotReady(
                        f"{entry.service} on host {entry.host} exited with code "
                        f"{process.proc.returncode}; its log ends:\n{process.log_tail()}"
                    )
                tls_ca = None
                if entry.service == "gateway":
                    tls_ca = Path(self.fields["tls_ca"]).read_bytes()
                if serving(process.address, tls_ca, entry.service, self.secrets_dir):
                    pending.remove(entry)
            if pending and time.monotonic() > deadline:
                names = ", ".join(f"{s.service}@{s.host}" for s in pending)
                raise NotReady(f"not SERVING after {self.options.ready_timeout_s:g}s: {names}")
            time.sleep(0.2)

    def kill(self, host: str) -> list[int]:
        """kill -9 of every process on `host` (it lost power); their ids."""
        return self.network.kill(host)

    def restart_nats(self, index: int) -> None:
        """NATS node `index` again, on its host, ports and store (after a kill): it
        rejoins the cluster and catches up; returns once it reports itself current."""
        assert self.nats is not None
        node = self.nats.nodes[index]
        node.stop(2)  # reaped, or ended if still running
        config = self.data_dir / "nats" / f"nats-{index}" / "nats.conf"
        args = [str(nats_binary()), "-c", str(config), "-a", node.host, "-p", str(node.port),
                "-m", str(node.monitor_port)]  # fmt: skip
        with self.network.entered(NATS_HOSTS[index]):
            node.proc = spawn(args, node.log_path)
        wait_until(
            lambda: nats_healthy(node.host, node.monitor_port),
            node.proc,
            f"nats-server {index} (log: {node.log_path})",
            timeout_s=60,
        )

    def on(self, host: str, service: str = "") -> list[Process]:
        """The live processes of `service` (every service) on `host`."""
        return [
            s.process
            for s in self.services
            if s.host == host and (not service or s.service == service) and s.process.alive()
        ]

    def stop(self) -> None:
        """Services (trainers first, they report), then storage's backends, Redis, NATS,
        then the namespaces with whatever still runs in them."""
        ordered = sorted(self.services, key=lambda s: s.service != "trainer")
        for entry in ordered:
            entry.process.signal(15)
        for entry in reversed(ordered):
            entry.process.stop(30)
        for server in (self.objects, self.postgres, self.redis, self.nats):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop(5)
        self.network.remove()


def nats_healthy(host: str, monitor_port: int) -> bool:
    """Whether the node says it is healthy: up, and its JetStream streams current."""
    try:
        url = f"http://{host}:{monitor_port}/healthz"
        with urllib.request.urlopen(url, timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def running_hosts(options: HostsOptions) -> Iterator[Hosts]:
    """The three hosts, started, and stopped on exit."""
    hosts = Hosts(options)
    hosts.start()
    try:
        yield hosts
    finally:
        hosts.stop()

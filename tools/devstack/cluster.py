"""`--cluster`: NATS as three clustered servers with every stream kept on all three, and
Redis as a primary, a replica and three Sentinels that promote the replica when the
primary goes (issue 22). The servers are the single-node ones of infra.py, with the
same users, TLS choice and configuration files, plus what joins them.

Each NATS node has its own JetStream store and name; nodes find each other through
routes that log in as a route user of their own. The Redis replica copies the primary
as the `replica` ACL user; the Sentinels watch both as the `sentinel` user, know each
other as it too, and answer services, who log in to them as their own users and may only
ask where the primary is (llmos/redis_acl.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from llmos.config import Secret
from llmos.keyfiles import write_private
from llmos.ports import LOCALHOST, free_port
from llmos.redis_acl import (
    REPLICA_USER,
    SENTINEL_USER,
    USERS,
    replication_acl_lines,
    sentinel_acl_lines,
)
from llmos.trust import SETUP_USER, ensure_credentials
from tools.devstack.infra import (
    InfraError,
    NatsServer,
    RedisServer,
    _in_thread,
    create_streams,
    nats_binary,
    nats_ready,
    redis_answers,
    redis_binary,
    spawn,
    wait_until,
    write_nats_config,
    write_redis_config,
)

#: the user NATS nodes log in to each other's cluster port as (never a client user)
ROUTE_USER = "nats-route"
#: how many servers keep each stream, and how many NATS nodes `--cluster` starts
CLUSTER_SIZE = 3
#: the name the Sentinels know the primary by (LLMOS_REDIS_MASTER's default)
MASTER_NAME = "llmos"


def cluster_block(name: str, listen: str, routes: list[str], password: str) -> str:
    """nats.conf lines joining a node named `name` to the cluster: it listens for routes
    on `listen` (host:port) and dials `routes` (host:port, its own included: NATS skips
    it), each side logging in as ROUTE_USER."""
    urls = ", ".join(f'"nats-route://{ROUTE_USER}:{password}@{route}"' for route in routes)
    # `$POD_NAME` unquoted: nats-server reads it from the environment (Kubernetes)
    shown = name if name.startswith("$") else f'"{name}"'
    return (
        f"server_name: {shown}\n"
        "cluster {\n"
        '  name: "llmos"\n'
        f'  listen: "{listen}"\n'
        f'  authorization {{ user: "{ROUTE_USER}", password: "{password}" }}\n'
        f"  routes: [{urls}]\n"
        "}\n"
    )


@dataclass
class NatsCluster:
    """Three nats-servers in one cluster; the streams on all three."""

    nodes: list[NatsServer]

    @property
    def url(self) -> str:
        """Every node, logging in as the setup user (a secret)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def public_url(self) -> str:
        """Every node, comma-separated (LLMOS_NATS_URL), safe to print."""
        return ",".join(node.public_url for node in self.nodes)

    @property
    def secrets_dir(self) -> Path:
        """The trust directory its users' credentials are in."""
        return self.nodes[0].secrets_dir

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every node (those already killed are skipped)."""
        for node in self.nodes:
            node.stop(grace_s)


def start_nats_cluster(
    data_dir: Path,
    host: str = LOCALHOST,
    secrets_dir: Path | None = None,
    size: int = CLUSTER_SIZE,
    hosts: Sequence[str] = (),
    place: Callable[[int], AbstractContextManager[object]] | None = None,
) -> NatsCluster:
    """Start `size` clustered nats-servers under `data_dir/nats-<i>` and create the
    streams replicated on `size` of them, once the cluster has elected its JetStream
    leader. Node i listens on `hosts[i]` (default: `host` for all), its ports picked and
    its process started inside `place(i)` (a machine of its own: tools/netns.py)."""
    secrets_dir = secrets_dir or data_dir / "secrets"
    binary = nats_binary()
    route_password = ensure_credentials(secrets_dir / "nats", ROUTE_USER).password.reveal()
    hosts = list(hosts) or [host] * size
    where = place or (lambda _: contextlib.nullcontext())
    ports = []
    for index in range(size):
        with where(index):
            ports.append(tuple(free_port(hosts[index]) for _ in range(3)))
    routes = [f"{hosts[i]}:{route}" for i, (_, route, _) in enumerate(ports)]
    nodes: list[NatsServer] = []
    try:
        for index, (port, route, monitor) in enumerate(ports):
            host = hosts[index]
            store = data_dir / f"nats-{index}"
            store.mkdir(parents=True, exist_ok=True)
            config = store / "nats.conf"
            joined = cluster_block(f"llmos-nats-{index}", f"{host}:{route}", routes, route_password)
            users = write_nats_config(secrets_dir, store / "jetstream", config, cluster=joined)
            log_path = data_dir / "logs" / f"nats-{index}.log"
            args = [str(binary), "-c", str(config), "-a", host, "-p", str(port), "-m", str(monitor)]
            with where(index):
                proc = spawn(args, log_path)
            setup = users[SETUP_USER].password
            nodes.append(NatsServer(host, port, setup, proc, log_path, secrets_dir, monitor))
        for node in nodes:
            wait_until(
                lambda node=node: nats_ready(node.host, node.monitor_port),
                node.proc,
                f"nats-server (log: {node.log_path})",
                timeout_s=30,
            )
        cluster = NatsCluster(nodes)
        _create_replicated_streams(cluster.url, size)
    except BaseException:
        for node in nodes:
            node.stop(2)
        raise
    return cluster


def _create_replicated_streams(url: str, replicas: int, timeout_s: float = 30.0) -> None:
    """Create the streams, retrying while the cluster still elects its meta leader
    (JetStream answers "no suitable peers" or times out until then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _in_thread(create_streams(url, replicas=replicas))
            return
        except InfraError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@dataclass
class RedisReplicated:
    """A Redis primary, one replica and three Sentinels watching them."""

    primary: RedisServer
    replica: RedisServer
    sentinels: list[RedisServer] = field(default_factory=list)
    master: str = MASTER_NAME

    @property
    def public_url(self) -> str:
        """A URL naming the database (the host is the Sentinels' to say)."""
        return self.primary.public_url

    @property
    def sentinel_addresses(self) -> str:
        """LLMOS_REDIS_SENTINELS: every Sentinel's host:port."""
        return ",".join(f"{s.host}:{s.port}" for s in self.sentinels)

    def env(self) -> dict[str, str]:
        """What a service needs to find the primary through the Sentinels."""
        return {
            "LLMOS_REDIS_URL": self.public_url,
            "LLMOS_REDIS_SENTINELS": self.sentinel_addresses,
            "LLMOS_REDIS_MASTER": self.master,
        }

    def stop(self, grace_s: float = 10.0) -> None:
        """Sentinels first (so that stopping the primary starts no failover), then the
        servers."""
        for server in [*self.sentinels, self.replica, self.primary]:
            server.stop(grace_s)


def redis_passwords(secrets_dir: Path) -> dict[str, str]:
    """Every Redis user's password, the replica's and the Sentinels' too (created on
    first use)."""
    names = [*USERS, REPLICA_USER, SENTINEL_USER]
    return {n: ensure_credentials(secrets_dir / "redis", n).password.reveal() for n in names}


def _start_redis_node(
    data_dir: Path, name: str, host: str, secrets_dir: Path, extra: tuple[str, ...]
) -> RedisServer:
    store = data_dir / name
    store.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    passwords = write_redis_config(secrets_dir, store, host, port, store / "redis.conf", extra)
    args = [str(store / "redis.conf")]
    return _spawn_redis(data_dir, secrets_dir, name, (host, port), args, passwords)


def _spawn_redis(
    data_dir: Path,
    secrets_dir: Path,
    name: str,
    address: tuple[str, int],
    args: list[str],
    passwords: dict[str, str],
) -> RedisServer:
    host, port = address
    log_path = data_dir / "logs" / f"{name}.log"
    proc = spawn([str(redis_binary()), *args], log_path, env={**os.environ})
    setup = passwords[SETUP_USER]
    server = RedisServer(host, port, Secret(setup), proc, log_path, secrets_dir)
    try:
        wait_until(
            lambda: redis_answers(host, port, SETUP_USER, setup),
            proc,
            f"valkey {name} (log: {log_path})",
            timeout_s=30,
        )
    except InfraError:
        server.stop(2)
        raise
    return server


def sentinel_config(
    host: str,
    port: int,
    store: Path,
    primary: tuple[str, int],
    passwords: dict[str, str],
    master: str = MASTER_NAME,
    down_after_ms: int = 5000,
    failover_timeout_ms: int = 60000,
    hostnames: bool = False,
) -> str:
    """A Sentinel's configuration: it watches `primary` under `master` with a quorum of
    two, as SENTINEL_USER, and knows its peers as that user too; with `hostnames`, the
    primary is named by DNS (a StatefulSet's pod) rather than by address."""
    secret = passwords[SENTINEL_USER]
    names = ["sentinel resolve-hostnames yes", "sentinel announce-hostnames yes"]
    lines = [
        f"bind {host}",
        f"port {port}",
        f"dir {store}",
        "daemonize no",
        *(names if hostnames else []),
        f"sentinel monitor {master} {primary[0]} {primary[1]} 2",
        f"sentinel auth-user {master} {SENTINEL_USER}",
        f"sentinel auth-pass {master} {secret}",
        f"sentinel down-after-milliseconds {master} {down_after_ms}",
        f"sentinel failover-timeout {master} {failover_timeout_ms}",
        f"sentinel parallel-syncs {master} 1",
        f"sentinel sentinel-user {SENTINEL_USER}",
        f"sentinel sentinel-pass {secret}",
        *sentinel_acl_lines(passwords),
        "",
    ]
    return "\n".join(lines)


def start_redis_replicated(
    data_dir: Path,
    host: str = LOCALHOST,
    secrets_dir: Path | None = None,
    down_after_ms: int = 5000,
    failover_timeout_ms: int = 60000,
    ready_timeout_s: float = 30.0,
) -> RedisReplicated:
    """Start a primary, a replica of it and three Sentinels under `data_dir`, and wait
    until the Sentinels see the replica in sync and each other (a failover needs both)."""
    secrets_dir = secrets_dir or data_dir / "secrets"
    passwords = redis_passwords(secrets_dir)
    # both servers may copy the other: after a failover the old primary returns a replica
    replication = (
        *replication_acl_lines(passwords),
        f"masteruser {REPLICA_USER}",
        f"masterauth {passwords[REPLICA_USER]}",
    )
    started: list[RedisServer] = []
    try:
        primary = _start_redis_node(data_dir, "redis-0", host, secrets_dir, replication)
        started.append(primary)
        follow = (*replication, f"replicaof {host} {primary.port}")
        replica = _start_redis_node(data_dir, "redis-1", host, secrets_dir, follow)
        started.append(replica)
        cluster = RedisReplicated(primary, replica)
        for index in range(3):
            store = data_dir / f"sentinel-{index}"
            store.mkdir(parents=True, exist_ok=True)
            port = free_port(host)
            config = store / "sentinel.conf"  # Sentinel rewrites it: what it learnt
            text = sentinel_config(
                host,
                port,
                store,
                (host, primary.port),
                passwords,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
            )
            write_private(config, text)
            args = [str(config), "--sentinel"]
            name = f"sentinel-{index}"
            sentinel = _spawn_redis(data_dir, secrets_dir, name, (host, port), args, passwords)
            started.append(sentinel)
            cluster.sentinels.append(sentinel)
        wait_until(
            lambda: sentinels_agree(cluster),
            cluster.sentinels[0].proc,
            "Redis Sentinels seeing the replica and each other",
            timeout_s=ready_timeout_s,
        )
    except BaseException:
        for server in reversed(started):
            server.stop(2)
        raise
    return cluster


def sentinel_client(sentinel: RedisServer) -> redis.Redis:
    """A client of `sentinel` as the setup user (close it)."""
    return redis.Redis(
        host=sentinel.host,
        port=sentinel.port,
        username=SETUP_USER,
        password=sentinel.secret.reveal(),
        socket_timeout=1,
        socket_connect_timeout=1,
        decode_responses=True,
    )


def sentinels_agree(cluster: RedisReplicated) -> bool:
    """Whether every Sentinel knows the other two and a replica whose link is up."""
    try:
        for sentinel in cluster.sentinels:
            with contextlib.closing(sentinel_client(sentinel)) as client:
                view = client.sentinel_master(cluster.master)  # type: ignore[no-untyped-call]
                replicas = client.sentinel_slaves(cluster.master)  # type: ignore[no-untyped-call]
            if int(view.get("num-other-sentinels", 0)) < len(cluster.sentinels) - 1:
                return False
            if not any(r.get("master-link-status") == "ok" for r in replicas):
                return False
    except redis.RedisError:
        return False
    return True

"""`python -m tools.devstack.setup`: the setup identity, for deployments that start NATS
and Redis themselves (compose): the same trust material `make run` creates.

    init --secrets DIR          the internal CA, the assertion keys, every NATS and Redis
                                user's credentials, and the servers' configuration files
                                (all 0600); with --nats-routes, NATS nodes joined in a
                                cluster, with --redis-primary, Redis replicated and watched
                                by Sentinels (Kubernetes: deploy/kubernetes/base)
    run nats|redis|sentinel --secrets DIR
                                exec the bundled server with that configuration; `redis`
                                with --replica-of HOST copies HOST unless this pod is the
                                StatefulSet's first
    streams --secrets DIR --nats URL[,URL...] [--replicas N]
                                create the JetStream streams as the setup user (retries
                                until NATS answers)
    check nats|redis|sentinel --secrets DIR
                                exit 0 when the server answers (container health checks)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets as secrets_module
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llmos.keyfiles import make_private_tree, new_private_file, private_dir, write_private
from llmos.redis_acl import REPLICA_USER, replication_acl_lines
from llmos.trust import SETUP_USER, credentials_file, ensure_credentials, read_credentials
from tools.devstack.cluster import ROUTE_USER, cluster_block, redis_passwords, sentinel_config
from tools.devstack.infra import (
    NATS_CLIENT_PORT,
    NATS_MONITOR_PORT,
    REDIS_PORT,
    create_streams,
    nats_binary,
    nats_ready,
    redis_answers,
    redis_binary,
    write_nats_config,
    write_redis_config,
)

#: where the servers keep their data inside their containers (compose's volumes)
NATS_STORE = Path("/data/nats")
REDIS_STORE = Path("/data/redis")
SENTINEL_STORE = Path("/data/sentinel")
#: where NATS nodes take their peers' routes, and Sentinels their clients
NATS_ROUTE_PORT = 6222
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class Layout:
    """Where the servers keep their data and listen (compose's defaults)."""

    nats_store: Path = NATS_STORE
    redis_store: Path = REDIS_STORE
    nats_port: int = NATS_CLIENT_PORT
    nats_monitor_port: int = NATS_MONITOR_PORT
    redis_port: int = REDIS_PORT
    #: every NATS node's route address (host:port, its own too): the nodes form a cluster
    nats_routes: tuple[str, ...] = ()
    #: the host of the first Redis primary: Redis is replicated and Sentinels watch it
    redis_primary: str = ""


def _nats_config(secrets: Path) -> Path:
    return secrets / "nats" / "nats.conf"


def _redis_config(secrets: Path) -> Path:
    return secrets / "redis" / "redis.conf"


#: inside a container the servers listen on every interface of its private network
ANY = "0.0.0.0"


def init(secrets: Path, layout: Layout) -> None:
    """Everything the services and servers need, created once (kept on later runs)."""
    for store in (layout.nats_store, layout.redis_store):
        private_dir(store)
        make_private_tree(store)  # what an earlier version left open to others
    make_private_tree(secrets)
    # monitoring (plain HTTP) only inside the container, for its health check
    monitor = f"127.0.0.1:{layout.nats_monitor_port}"
    joined = ""
    if layout.nats_routes:
        password = ensure_credentials(secrets / "nats", ROUTE_USER).password.reveal()
        listen = f"{ANY}:{NATS_ROUTE_PORT}"
        joined = cluster_block("$POD_NAME", listen, list(layout.nats_routes), password)
    write_nats_config(
        secrets,
        layout.nats_store,
        _nats_config(secrets),
        tls=True,
        monitor=monitor,
        cluster=joined,
    )
    replication: tuple[str, ...] = ()
    if layout.redis_primary:
        passwords = redis_passwords(secrets)
        replication = (
            *replication_acl_lines(passwords),
            f"masteruser {REPLICA_USER}",
            f"masterauth {passwords[REPLICA_USER]}",
        )
        primary = (layout.redis_primary, layout.redis_port)
        text = sentinel_config(
            ANY, SENTINEL_PORT, SENTINEL_STORE, primary, passwords, hostnames=True
        )
        write_private(_sentinel_config(secrets), text)
    write_redis_config(
        secrets, layout.redis_store, ANY, layout.redis_port, _redis_config(secrets), replication
    )
    _triton_token(secrets)


def _sentinel_config(secrets: Path) -> Path:
    return secrets / "redis" / "sentinel.conf"


def _triton_token(secrets: Path) -> None:
    """The token an NGC Triton (compose profile `gpu`) answers to, and its workers send."""
    token = secrets / "triton" / "access-token"
    if token.exists():
        return
    private_dir(token.parent)
    with new_private_file(token) as file:
        file.write(secrets_module.token_urlsafe(32))


def run(server: str, secrets: Path, layout: Layout, replica_of: str = "") -> None:
    """Become the server (exec: it gets the container's signals directly)."""
    if server == "nats":
        binary = str(nats_binary())
        config = str(_nats_config(secrets))
        os.execv(binary, [binary, "-c", config, "-a", ANY, "-p", str(layout.nats_port)])
    binary = str(redis_binary())
    if server == "sentinel":
        # a Sentinel rewrites its configuration with what it learns: its own copy
        private_dir(SENTINEL_STORE)
        own = SENTINEL_STORE / "sentinel.conf"
        if not own.exists():
            shutil.copyfile(_sentinel_config(secrets), own)
            own.chmod(0o600)
        os.execv(binary, [binary, str(own), "--sentinel"])
    args = [binary, str(_redis_config(secrets))]
    if replica_of and not socket.gethostname().endswith("-0"):
        # the StatefulSet's first pod starts as the primary, the others copy it; after a
        # failover the Sentinels reconfigure whichever comes back
        args += ["--replicaof", replica_of, str(layout.redis_port)]
    os.execv(binary, args)


def streams(secrets: Path, url: str, replicas: int = 1, timeout_s: float = 120.0) -> None:
    from tools.standin import nats_login_as

    login = nats_login_as(secrets, SETUP_USER)
    with_user = ",".join(
        f"{scheme}://{login['user']}:{login['password']}@{rest}"
        for scheme, _, rest in (one.strip().partition("://") for one in url.split(","))
    )
    ca = (secrets / "ca" / "ca.pem").read_bytes()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            asyncio.run(create_streams(with_user, ca, replicas))
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def check(server: str, secrets: Path, layout: Layout) -> bool:
    if server == "nats":
        return nats_ready("127.0.0.1", layout.nats_monitor_port, timeout_s=2)

    setup = read_credentials(credentials_file(secrets / "redis", SETUP_USER))
    port = SENTINEL_PORT if server == "sentinel" else layout.redis_port
    return redis_answers("127.0.0.1", port, setup.user, setup.password.reveal())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("init", "run", "streams", "check"))
    parser.add_argument("server", nargs="?", choices=("nats", "redis", "sentinel"))
    parser.add_argument("--secrets", type=Path, required=True)
    parser.add_argument("--nats", default="tls://nats:4222", help="NATS, for `streams`")
    parser.add_argument("--nats-store", type=Path, default=NATS_STORE)
    parser.add_argument("--redis-store", type=Path, default=REDIS_STORE)
    parser.add_argument("--nats-port", type=int, default=NATS_CLIENT_PORT)
    parser.add_argument("--nats-monitor-port", type=int, default=NATS_MONITOR_PORT)
    parser.add_argument("--redis-port", type=int, default=REDIS_PORT)
    parser.add_argument(
        "--nats-routes", default="", help="init: every NATS node's host:port, comma-separated"
    )
    parser.add_argument("--redis-primary", default="", help="init: the first primary's host")
    parser.add_argument("--replica-of", default="", help="run redis: the primary's host")
    parser.add_argument("--replicas", type=int, default=1, help="streams: servers per stream")
    args = parser.parse_args(argv)
    routes = tuple(r.strip() for r in args.nats_routes.split(",") if r.strip())
    layout = Layout(
        args.nats_store,
        args.redis_store,
        args.nats_port,
        args.nats_monitor_port,
        args.redis_port,
        routes,
        args.redis_primary,
    )
    if args.action in ("run", "check") and args.server is None:
        parser.error(f"{args.action} needs a server: nats or redis")
    if args.action == "init":
        init(args.secrets, layout)
    elif args.action == "run":
        run(args.server, args.secrets, layout, args.replica_of)
    elif args.action == "streams":
        streams(args.secrets, args.nats, args.replicas)
    else:
        return 0 if check(args.server, args.secrets, layout) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

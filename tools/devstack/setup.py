"""`python -m tools.devstack.setup`: the setup identity, for deployments that start NATS
and Redis themselves (compose): the same trust material `make run` creates.

    init --secrets DIR          the internal CA, the assertion keys, every NATS and Redis
                                user's credentials, and the servers' configuration files
                                (all 0600)
    run nats|redis --secrets DIR
                                exec the bundled server with that configuration
    streams --secrets DIR --nats URL
                                create the JetStream streams as the setup user (retries
                                until NATS answers)
    check nats|redis --secrets DIR
                                exit 0 when the server answers (container health checks)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets as secrets_module
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llmos.keyfiles import make_private_tree, new_private_file, private_dir
from llmos.trust import SETUP_USER, credentials_file, read_credentials
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


@dataclass(frozen=True)
class Layout:
    """Where the servers keep their data and listen (compose's defaults)."""

    nats_store: Path = NATS_STORE
    redis_store: Path = REDIS_STORE
    nats_port: int = NATS_CLIENT_PORT
    nats_monitor_port: int = NATS_MONITOR_PORT
    redis_port: int = REDIS_PORT


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
    write_nats_config(secrets, layout.nats_store, _nats_config(secrets), tls=True, monitor=monitor)
    write_redis_config(secrets, layout.redis_store, ANY, layout.redis_port, _redis_config(secrets))
    _triton_token(secrets)


def _triton_token(secrets: Path) -> None:
    """The token an NGC Triton (compose profile `gpu`) answers to, and its workers send."""
    token = secrets / "triton" / "access-token"
    if token.exists():
        return
    private_dir(token.parent)
    with new_private_file(token) as file:
        file.write(secrets_module.token_urlsafe(32))


def run(server: str, secrets: Path, layout: Layout) -> None:
    """Become the server (exec: it gets the container's signals directly)."""
    if server == "nats":
        binary = str(nats_binary())
        config = str(_nats_config(secrets))
        os.execv(binary, [binary, "-c", config, "-a", ANY, "-p", str(layout.nats_port)])
    binary = str(redis_binary())
    os.execv(binary, [binary, str(_redis_config(secrets))])


def streams(secrets: Path, url: str, timeout_s: float = 120.0) -> None:
    from tools.standin import nats_login_as

    login = nats_login_as(secrets, SETUP_USER)
    scheme, _, rest = url.partition("://")
    with_user = f"{scheme}://{login['user']}:{login['password']}@{rest}"
    ca = (secrets / "ca" / "ca.pem").read_bytes()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            asyncio.run(create_streams(with_user, ca))
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def check(server: str, secrets: Path, layout: Layout) -> bool:
    if server == "nats":
        return nats_ready("127.0.0.1", layout.nats_monitor_port, timeout_s=2)

    setup = read_credentials(credentials_file(secrets / "redis", SETUP_USER))
    return redis_answers("127.0.0.1", layout.redis_port, setup.user, setup.password.reveal())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("init", "run", "streams", "check"))
    parser.add_argument("server", nargs="?", choices=("nats", "redis"))
    parser.add_argument("--secrets", type=Path, required=True)
    parser.add_argument("--nats", default="tls://nats:4222", help="NATS, for `streams`")
    parser.add_argument("--nats-store", type=Path, default=NATS_STORE)
    parser.add_argument("--redis-store", type=Path, default=REDIS_STORE)
    parser.add_argument("--nats-port", type=int, default=NATS_CLIENT_PORT)
    parser.add_argument("--nats-monitor-port", type=int, default=NATS_MONITOR_PORT)
    parser.add_argument("--redis-port", type=int, default=REDIS_PORT)
    args = parser.parse_args(argv)
    layout = Layout(
        args.nats_store, args.redis_store, args.nats_port, args.nats_monitor_port, args.redis_port
    )
    if args.action in ("run", "check") and args.server is None:
        parser.error(f"{args.action} needs a server: nats or redis")
    if args.action == "init":
        init(args.secrets, layout)
    elif args.action == "run":
        run(args.server, args.secrets, layout)
    elif args.action == "streams":
        streams(args.secrets, args.nats)
    else:
        return 0 if check(args.server, args.secrets, layout) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

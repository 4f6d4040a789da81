"""Redis, the shared hot state (registry, leases, counters): connecting as the service's
own ACL user (llmos/redis_acl.py), with patience; to one server, or to whichever server
the Sentinels name the primary, followed through a failover (issue 22)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmos.config import HostPort, Secret
from llmos.errors import Unavailable
from llmos.redis_sentinel import primary_client, sync_primary_client
from llmos.trust import url_with_credentials

log = logging.getLogger("llmos.hotstate")


def service_redis_url(url: Secret[str], secrets_dir: Path, service: str) -> Secret[str]:
    """The URL `service` connects with: `url` itself when it carries credentials (the
    operator's choice), else `url` with the service's own user from
    `<secrets_dir>/redis/<service>.json`; ValueError naming that file (never its content)."""
    return url_with_credentials(url, secrets_dir / "redis", service)


def redis_client(
    url: Secret[str], sentinels: tuple[HostPort, ...] = (), master: str = "llmos"
) -> aioredis.Redis:
    """A client of the server `url` names, or, with `sentinels`, of the primary they
    monitor under `master` (llmos/redis_sentinel.py)."""
    if sentinels:
        return primary_client(url, sentinels, master)
    client: aioredis.Redis = aioredis.Redis.from_url(
        url.reveal(), socket_connect_timeout=2, health_check_interval=10
    )
    return client


def sync_redis_client(
    url: Secret[str], sentinels: tuple[HostPort, ...] = (), master: str = "llmos"
) -> redis.Redis:
    """`redis_client` for code that is not async (the gateway's identity store)."""
    if sentinels:
        return sync_primary_client(url, sentinels, master)
    return redis.Redis.from_url(url.reveal())


async def connect_redis(
    url: Secret[str],
    timeout_s: float,
    sentinels: tuple[HostPort, ...] = (),
    master: str = "llmos",
) -> aioredis.Redis:
    """Connect and PING, retrying until `timeout_s`; the URL (with any password) is never
    logged. With `sentinels`, to the primary they name (see `redis_client`)."""
    client = redis_client(url, sentinels, master)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.ping()  # type: ignore[misc]  # redis-py types sync|async
            return client
        except (RedisError, OSError) as exc:
            if time.monotonic() >= deadline:
                await client.aclose()
                raise Unavailable(f"cannot reach Redis within {timeout_s:g}s") from exc
            log.info("waiting for Redis")
            await asyncio.sleep(0.5)

"""Redis, the shared hot state (registry, leases, counters): connecting as the service's
own ACL user (llmos/redis_acl.py), with patience."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmos.config import Secret
from llmos.errors import Unavailable
from llmos.trust import credentials_file, read_credentials

log = logging.getLogger("llmos.hotstate")


def service_redis_url(url: Secret[str], secrets_dir: Path, service: str) -> Secret[str]:
    """The URL `service` connects with: `url` itself when it carries credentials (the
    operator's choice), else `url` with the service's own user from
    `<secrets_dir>/redis/<service>.json`; ValueError naming that file (never its content)."""
    parts = urlsplit(url.reveal())
    if parts.username or parts.password:
        return url
    found = read_credentials(credentials_file(secrets_dir / "redis", service))
    user, password = quote(found.user, safe=""), quote(found.password.reveal(), safe="")
    return Secret(urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}")))


async def connect_redis(url: Secret[str], timeout_s: float) -> aioredis.Redis:
    """Connect and PING, retrying until `timeout_s`; the URL (with any password) is never logged."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url.reveal(), socket_connect_timeout=2, health_check_interval=10
    )
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

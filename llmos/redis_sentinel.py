"""Redis through Sentinel: clients of whichever server the Sentinels name the primary,
followed through a failover (issue 22).

redis-py's Sentinel-managed connections ask the Sentinels where the primary is only
in `connect()`; a connection that a failover broke reconnects inside a command through
`connect_check_health()`, to the address it had, and so retries the dead primary until
its retries run out (redis-py 7.1). The connection classes here reconnect through
`connect()`, which asks again.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.retry
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmos.config import HostPort, Secret

#: a command is retried over a failover: Sentinels wait their down-after time (5 s in
#: the deployment files), then elect a leader and promote; these retries span ~19 s
FAILOVER_RETRIES = 12
FAILOVER_BACKOFF = {"cap": 2.0, "base": 0.1}
#: what a failover shows a client: the primary's connection gone, or none named yet
FAILOVER_ERRORS: list[type[Exception]] = [RedisConnectionError, RedisTimeoutError]


class FollowingConnection(redis.asyncio.sentinel.SentinelManagedConnection):
    """A connection that asks the Sentinels where the primary is whenever it reconnects."""

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        """Reconnect through the Sentinels (`connect`), except when `connect` itself
        dials the address they named (`retry_socket_connect=False`)."""
        if retry_socket_connect and not self.is_connected:
            await self.connect()  # type: ignore[no-untyped-call]
            return
        await super().connect_check_health(check_health, retry_socket_connect)


class FollowingSyncConnection(redis.sentinel.SentinelManagedConnection):
    """`FollowingConnection` for the blocking client."""

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        """As `FollowingConnection.connect_check_health`."""
        if retry_socket_connect and not self._sock:
            self.connect()  # type: ignore[no-untyped-call]
            return
        super().connect_check_health(check_health, retry_socket_connect)


def redis_login(url: Secret[str]) -> dict[str, Any]:
    """The user, password and database of a Redis URL (with Sentinels, where the primary
    is is theirs to say; the service logs in to them as the same user)."""
    parts = urlsplit(url.reveal())
    if parts.scheme == "rediss":
        raise ValueError("TLS to Redis through Sentinel is not supported yet")
    database = parts.path.lstrip("/")
    return {
        "username": parts.username,
        "password": parts.password,
        "db": int(database) if database else 0,
    }


def _sentinel_kwargs(login: dict[str, Any]) -> dict[str, Any]:
    return {
        "username": login["username"],
        "password": login["password"],
        "socket_connect_timeout": 2,
        "socket_timeout": 2,
    }


def primary_client(
    url: Secret[str], sentinels: tuple[HostPort, ...], master: str
) -> aioredis.Redis:
    """A client of the primary the `sentinels` monitor under `master`, logging in as
    `url`'s user; a command cut off by a failover is retried until one is promoted."""
    login = redis_login(url)
    watch = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        [(s.host, s.port) for s in sentinels], sentinel_kwargs=_sentinel_kwargs(login)
    )
    retry = redis.asyncio.retry.Retry(ExponentialBackoff(**FAILOVER_BACKOFF), FAILOVER_RETRIES)
    client: aioredis.Redis = watch.master_for(
        master,
        connection_class=FollowingConnection,
        socket_connect_timeout=2,
        health_check_interval=10,
        retry=retry,
        retry_on_error=FAILOVER_ERRORS,
        **login,
    )
    return client


def sync_primary_client(
    url: Secret[str], sentinels: tuple[HostPort, ...], master: str
) -> redis.Redis:
    """`primary_client` for code that is not async."""
    login = redis_login(url)
    watch = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        [(s.host, s.port) for s in sentinels], sentinel_kwargs=_sentinel_kwargs(login)
    )
    retry = redis.retry.Retry(ExponentialBackoff(**FAILOVER_BACKOFF), FAILOVER_RETRIES)
    client: redis.Redis = watch.master_for(  # type: ignore[no-untyped-call]
        master,
        connection_class=FollowingSyncConnection,
        socket_connect_timeout=2,
        retry=retry,
        retry_on_error=FAILOVER_ERRORS,
        **login,
    )
    return client

"""NATS and JetStream: connecting, declaring the durable streams, publishing events."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import (
    BadRequestError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)

from llmos import subjects
from llmos.errors import Unavailable
from llmos.natsperms import inbox_prefix
from llmos.trust import Credentials
from llmos.v1 import events_pb2

log = logging.getLogger("llmos.messaging")

DAY_S = 24 * 3600.0

#: The durable streams LLM OS relies on. Declared idempotently by every service at start.
STREAMS = (
    StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.ALL_EVENTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * DAY_S,
        max_bytes=1 << 30,
        discard=DiscardPolicy.OLD,
        duplicate_window=120.0,
    ),
    StreamConfig(
        name=subjects.AUDIT_STREAM,
        subjects=[subjects.ALL_AUDIT],
        # a record stays until the audit service has committed and acknowledged it; the
        # limits only bound the backlog while the audit service is down
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=30 * DAY_S,
        max_bytes=8 << 30,
        discard=DiscardPolicy.NEW,  # never drop audit records silently: publishers see an error
        duplicate_window=120.0,
    ),
    StreamConfig(
        name=subjects.WITNESS_STREAM,
        subjects=[subjects.ALL_WITNESS],
        # the newest checkpoint per log is what verification needs; a few more for forensics
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs_per_subject=16,
        discard=DiscardPolicy.OLD,
        duplicate_window=120.0,
    ),
)


#: the name in NATS's certificate (issued by the internal CA), which clients check
NATS_SERVER_NAME = "nats.llmos.internal"


def nats_servers(url: str) -> list[str]:
    """The servers a NATS URL names: one, or a cluster's, comma-separated (the client
    connects to any and moves to another when it goes)."""
    return [part.strip() for part in url.split(",") if part.strip()]


def nats_tls(url: str, ca: bytes) -> dict[str, Any]:
    """`nats.connect` arguments for a `tls://` URL: trust the internal CA, check the
    server is NATS; none for a plaintext URL."""
    if not url.startswith("tls://"):
        return {}
    return {
        "tls": ssl.create_default_context(cadata=ca.decode()),
        "tls_hostname": NATS_SERVER_NAME,
    }


async def connect_nats(
    url: str,
    name: str,
    timeout_s: float,
    credentials: Credentials | None = None,
    ca: bytes | None = None,
) -> NATS:
    """Connect, retrying until `timeout_s` so services may start before NATS does; as
    the user `credentials` name (replies then come to that user's private inboxes); over
    TLS checked against the internal CA `ca` for a `tls://` URL. `url` may list a
    cluster's servers, comma-separated: when the one in use goes, the client reconnects
    to another for ever, resending its subscriptions (JetStream consumers resume where
    their acknowledgements left off)."""
    deadline = time.monotonic() + timeout_s
    login: dict[str, Any] = nats_tls(url, ca) if ca is not None else {}
    if credentials is not None:
        login |= {
            "user": credentials.user,
            "password": credentials.password.reveal(),
            "inbox_prefix": inbox_prefix(credentials.user),
        }
    while True:
        try:
            return await nats.connect(
                servers=nats_servers(url),
                name=name,
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                **login,
            )
        except Exception as exc:  # nats raises several unrelated types for "not there yet"
            if time.monotonic() >= deadline:
                raise Unavailable(f"cannot reach NATS within {timeout_s:g}s: {exc}") from exc
            log.info("waiting for NATS", extra={"error": str(exc)})
            await asyncio.sleep(0.5)


async def require_streams(js: JetStreamContext) -> None:
    """Fail (Unavailable, naming it) when a stream LLM OS needs does not exist: services
    may not create streams; the setup identity does (`ensure_streams`)."""
    for config in STREAMS:
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            raise Unavailable(
                f"NATS has no stream {config.name}; the setup identity creates the streams "
                "(`make run` and `tools.devstack.infra.start_nats` do)"
            ) from None


#: how long stream creation retries while JetStream answers with a server error: right
#: after a restart on an existing store it does until its streams are recovered
STREAMS_SETTLE_S = 15.0


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    """Create the streams LLM OS needs, or bring an existing one to the current config
    (the setup identity only: service users may not); each kept on `replicas` servers
    (3 in a cluster: a stream survives the loss of one)."""
    deadline = time.monotonic() + STREAMS_SETTLE_S
    for config in (dataclasses.replace(c, num_replicas=replicas) for c in STREAMS):
        try:
            while True:
                try:
                    await js.add_stream(config)
                    break
                except (ServerError, ServiceUnavailableError):  # JetStream still recovering
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.25)
        except BadRequestError:
            try:
                await js.update_stream(config)
            except Exception as exc:  # e.g. a retention policy, which cannot change in place
                log.error(
                    "stream keeps its earlier configuration; recreate it to adopt this one",
                    extra={"stream": config.name, "error": str(exc)},
                )


class EventPublisher:
    """Publishes protobuf events on JetStream; the event id deduplicates retries."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def publish(self, subject: str, event: events_pb2.Event, timeout_s: float = 5.0) -> None:
        """Publish and wait for the stream's acknowledgement (durably stored)."""
        await self._js.publish(
            subject,
            event.SerializeToString(),
            timeout=timeout_s,
            headers={"Nats-Msg-Id": event.id},
        )

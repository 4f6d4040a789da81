"""The service runner: one way every LLM OS process starts, serves and stops.

Start: read config (fail fast) -> identity (llmos.identity) -> Redis -> NATS + streams
-> gRPC server with health, reflection and the call interceptor -> register + heartbeat
-> `started` event. Internal servers speak mutual TLS only and run the caller policy
(llmos.callers); the public one (the gateway) brings its own TLS and guard.
Stop (SIGTERM/SIGINT): health NOT_SERVING -> deregister -> `server.stop(grace)` ->
`stopped` event -> drain NATS -> close Redis. Resources live in one AsyncExitStack, so
each is released exactly once and in reverse order, whatever fails.

A service may give the main thread to a `Foreground` loop (the inference worker's torch
compute loop, which runs faster there); its asyncio side then runs on a second thread
and signals are forwarded to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from redis.exceptions import RedisError

import llmos
from llmos import subjects, tracing
from llmos.assertions import AssertionVerifier
from llmos.auditing import AuditPublisher
from llmos.callers import InternalGuard
from llmos.config import ConfigError, EnvReader, Secret, ServiceSettings, read_service_settings
from llmos.errors import Unavailable
from llmos.events import Phase, now, phase_word, service_lifecycle
from llmos.health import ExplainedHealth, HealthMonitor
from llmos.hotstate import connect_redis, service_redis_url
from llmos.identity import ServiceIdentity
from llmos.keyfiles import private_files
from llmos.links import Links
from llmos.log import configure_logging
from llmos.messaging import EventPublisher, connect_nats, nats_servers, require_streams
from llmos.metrics import serve_metrics
from llmos.natsperms import SLOTTED
from llmos.registry import ServiceRegistry
from llmos.rpc import CallContextInterceptor, CallGuard, server_options
from llmos.slots import Slot, claim_slot
from llmos.trust import Credentials, credentials_file, read_credentials
from llmos.usage import UsageSampler
from llmos.v1 import common_pb2, scheduler_pb2

log = logging.getLogger("llmos.runner")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


@dataclass
class ServiceContext:
    """Everything a service's transport layer may use, built by the runner."""

    settings: ServiceSettings
    instance: common_pb2.ServiceInstance
    nats: NATS
    js: JetStreamContext
    redis: aioredis.Redis
    events: EventPublisher
    registry: ServiceRegistry
    #: who this instance is (its certificate), and how it reaches the other services
    identity: ServiceIdentity
    links: Links
    #: this service's audit records (`llmos.audit.<service>`)
    audit: AuditPublisher
    options: Any = None  # what the service's own `configure` read
    runtime: Any = None  # what the service's own `prepare` built
    #: for workers and trainers: their slots and models now; the runner adds capacity and
    #: sampled use and publishes it every heartbeat for the scheduler
    status: Callable[[], scheduler_pb2.WorkerStatus] | None = None
    usage: UsageSampler = field(default_factory=UsageSampler)
    #: what this service needs to work (NATS and Redis; a service adds its own): health
    #: answers NOT_SERVING, with the reason, while one is lost
    health: HealthMonitor = field(default_factory=lambda: HealthMonitor(ExplainedHealth()))


@dataclass(frozen=True)
class Prepared:
    """What a service's `prepare` hands the runner before the gRPC server is built."""

    runtime: Any
    guard: CallGuard | None = None
    #: requests larger than this are refused (RESOURCE_EXHAUSTED) after the guard ran
    max_request_bytes: int | None = None
    #: PEM certificate chain and private key: serve gRPC over TLS
    tls: tuple[bytes, bytes] | None = None


Prepare = Callable[[ServiceContext, AsyncExitStack], Awaitable[Prepared]]


#: Adds a service's servicers to the server; returns their full names (for health and
#: reflection). Background work it starts goes on the exit stack so it ends before NATS drains.
Attach = Callable[[ServiceContext, grpc.aio.Server, AsyncExitStack], Awaitable[Sequence[str]]]


class Foreground(Protocol):
    """Work that must own the process's main thread."""

    def run(self) -> None:
        """Block until stop() is called."""
        ...

    def stop(self) -> None:
        """Make run() return (callable from any thread)."""
        ...


@dataclass(frozen=True)
class ServiceDefinition:
    """A service's name and how to attach its API to the shared server skeleton."""

    name: str
    attach: Attach
    foreground: Foreground | None = None
    #: reads the service's own variables (errors collected in the reader, reported with
    #: the common ones before anything connects)
    configure: Callable[[EnvReader], Any] | None = None
    #: builds the service's runtime (and optional call guard, size limit, TLS) once
    #: Redis and NATS are connected
    prepare: Prepare | None = None
    #: serves the outside world (the gateway): its own TLS and guard instead of mutual
    #: TLS and the internal caller policy
    public: bool = False


class StopSignal:
    """A stop request that may arrive (from a signal) before or after the loop exists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self.reason = ""

    def bind(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        """Deliver requests to `event` from now on (and one that came early)."""
        with self._lock:
            self._loop, self._event = loop, event
            if self.reason:
                loop.call_soon_threadsafe(event.set)

    def request(self, reason: str) -> None:
        """Ask the service to stop (thread- and signal-safe)."""
        with self._lock:
            self.reason = self.reason or reason
            if self._loop is not None and self._event is not None:
                self._loop.call_soon_threadsafe(self._event.set)


def main(definition: ServiceDefinition, environ: Mapping[str, str] | None = None) -> int:
    """Run a service until SIGTERM/SIGINT; return the process exit code."""
    private_files()
    env = EnvReader(environ, service=definition.name)
    settings = read_service_settings(definition.name, env)
    options = definition.configure(env) if definition.configure else None
    try:
        redis_url = service_redis_url(settings.redis_url, settings.secrets_dir, definition.name)
        settings = replace(settings, redis_url=redis_url)
    except ValueError as exc:
        env.errors.append(f"LLMOS_REDIS_URL carries no credentials and {exc}")
    try:
        env.raise_if_invalid()
    except ConfigError as exc:
        print(f"llmos {definition.name}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(definition.name, settings.log_level, settings.log_format)
    stop = StopSignal()
    launch = _Launch(definition, settings, options, stop)
    if definition.foreground is None:
        return _run_service(launch, on_main_thread=True)
    return _run_beside_foreground(launch, definition.foreground)


@dataclass(frozen=True)
class _Launch:
    definition: ServiceDefinition
    settings: ServiceSettings
    options: Any
    stop: StopSignal


def _run_service(launch: _Launch, on_main_thread: bool) -> int:
    try:
        return asyncio.run(_serve(launch, on_main_thread))
    except Unavailable as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE


def _run_beside_foreground(launch: _Launch, foreground: Foreground) -> int:
    """Main thread: the foreground loop; second thread: the asyncio service."""
    code = [EXIT_FAILURE]

    def service() -> None:
        try:
            code[0] = _run_service(launch, on_main_thread=False)
        finally:
            foreground.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: launch.stop.request(signal.Signals(number).name))
    thread = threading.Thread(target=service, name=f"{launch.definition.name}-service")
    thread.start()
    foreground.run()
    thread.join()
    return code[0]


def _new_instance(settings: ServiceSettings, nats_user: str) -> common_pb2.ServiceInstance:
    """This process's instance; its id starts with its NATS user when that is its own
    (a worker's slot: the subjects addressed to it name that user, see llmos.subjects)."""
    prefix = nats_user if nats_user.startswith(f"{settings.service}-") else settings.service
    return common_pb2.ServiceInstance(
        service=settings.service,
        instance_id=f"{prefix}-{uuid.uuid4().hex[:12]}",
        started_at=now(),
        version=llmos.__version__,
        pid=os.getpid(),
        hostname=socket.gethostname(),
    )


async def _serve(launch: _Launch, on_main_thread: bool) -> int:
    definition, settings, signal_ = launch.definition, launch.settings, launch.stop
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signal_.bind(loop, stop)
    if on_main_thread:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signal_.request, sig.name)

    slot = _claim_slot(settings)
    async with AsyncExitStack() as stack:
        if slot is not None:
            stack.callback(slot.release)
        if settings.metrics_listen is not None:
            serve_metrics(settings.metrics_listen, stack)
        instance = _new_instance(settings, slot.user if slot else _url_user(settings))
        tracing.configure(settings.service, instance.instance_id)
        identity = _identity(settings, instance)
        redis_client = await connect_redis(
            settings.redis_url,
            settings.connect_timeout_s,
            settings.redis_sentinels,
            settings.redis_master,
        )
        stack.push_async_callback(redis_client.aclose)
        url, login = nats_login(settings, slot)
        nc = await connect_nats(
            url, instance.instance_id, settings.connect_timeout_s, login, identity.material.ca
        )
        stack.push_async_callback(_drain, nc)
        js = nc.jetstream()
        await require_streams(js)
        audit = AuditPublisher(js, settings.service)
        audit.start()
        stack.push_async_callback(audit.close)
        renewal = asyncio.create_task(identity.keep_fresh(), name="identity-renewal")
        stack.callback(renewal.cancel)
        registry = ServiceRegistry(redis_client, ttl_s=settings.heartbeat_s * 3)

        ctx = ServiceContext(
            settings=settings,
            instance=instance,
            nats=nc,
            js=js,
            redis=redis_client,
            events=EventPublisher(js),
            registry=registry,
            identity=identity,
            links=Links(registry, identity),
            audit=audit,
            options=launch.options,
        )
        ctx.health.watch("nats", lambda: _nats_problem(nc))
        ctx.health.watch("redis", lambda: _redis_problem(redis_client))
        ctx.health.on_change(lambda: report_status(ctx))
        prepared = await definition.prepare(ctx, stack) if definition.prepare else Prepared(None)
        ctx.runtime = prepared.runtime
        guard = prepared.guard
        if not definition.public:
            verifier = AssertionVerifier(settings.secrets_dir, settings.service)
            guard = InternalGuard(settings.service, verifier, audit)
        interceptor = CallContextInterceptor(guard, prepared.max_request_bytes)
        core_limit = 2 * prepared.max_request_bytes if prepared.max_request_bytes else None
        server = grpc.aio.server(
            interceptors=[interceptor],
            options=server_options(core_limit) if core_limit else server_options(),
        )
        health_servicer = ctx.health.servicer
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        # bound before the service attaches: what it starts (an embedded Triton picking
        # free ports) cannot take the port it was told to listen on
        try:
            if not definition.public:
                port = server.add_secure_port(str(settings.listen), identity.server_credentials())
                instance.tls = True
            elif prepared.tls:
                credentials = grpc.ssl_server_credentials([(prepared.tls[1], prepared.tls[0])])
                port = server.add_secure_port(str(settings.listen), credentials)
                instance.tls = True
            else:
                port = server.add_insecure_port(str(settings.listen))
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen on {settings.listen}: {exc}") from exc
        instance.address = f"{settings.advertise_host}:{port}"
        names = list(await definition.attach(ctx, server, stack))
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        await server.start()
        try:
            await ctx.health.start(names)
            watching = asyncio.create_task(ctx.health.run(), name="health")
            stack.callback(watching.cancel)  # however the start below ends
            await ctx.registry.register(instance)
            heartbeat = asyncio.create_task(_heartbeat(ctx, settings.heartbeat_s))
            stack.callback(heartbeat.cancel)
            await report_status(ctx)
            await _announce(ctx, Phase.PHASE_STARTED)
            log.info(
                "serving", extra={"address": instance.address, "instance": instance.instance_id}
            )
            await stop.wait()
            log.info("stopping", extra={"reason": signal_.reason})
            heartbeat.cancel()
            watching.cancel()
        finally:
            await health_servicer.enter_graceful_shutdown()
            with contextlib.suppress(Exception):
                await ctx.registry.deregister(instance)
            await server.stop(settings.shutdown_grace_s)
            await _announce(ctx, Phase.PHASE_STOPPED, signal_.reason or "shutdown")
    log.info("stopped")
    return EXIT_OK


def _claim_slot(settings: ServiceSettings) -> Slot | None:
    """A worker's or trainer's own NATS user, claimed before its instance id is made
    (the id starts with it); none when the URL logs in itself (an operator's choice)."""
    if settings.service not in SLOTTED or urllib.parse.urlsplit(settings.nats_url).username:
        return None
    return claim_slot(settings.secrets_dir / "nats", settings.service)


def _url_login(settings: ServiceSettings) -> tuple[str, Credentials] | None:
    """The NATS URL without the user and password it names, and those (None when it
    names none: a bare URL, or a token, which stays in the URL)."""
    servers = [urllib.parse.urlsplit(url) for url in nats_servers(settings.nats_url)]
    parts = servers[0]  # a cluster's servers all name the same user, if any
    if parts.username is None or parts.password is None:
        return None
    bare = ",".join(p._replace(netloc=p.netloc.rpartition("@")[2]).geturl() for p in servers)
    user = urllib.parse.unquote(parts.username)
    return bare, Credentials(user, Secret(urllib.parse.unquote(parts.password)))


def _url_user(settings: ServiceSettings) -> str:
    """The NATS user the URL names ("" if none): a worker's own, when an operator gives it."""
    named = _url_login(settings)
    return named[1].user if named else ""


def nats_login(settings: ServiceSettings, slot: Slot | None) -> tuple[str, Credentials | None]:
    """The NATS URL without credentials, and the user to connect as: the one the URL
    names, else the claimed slot's, else `<secrets>/nats/<service>.json`."""
    if (named := _url_login(settings)) is not None:
        return named
    if urllib.parse.urlsplit(settings.nats_url).username is not None:  # a token
        return settings.nats_url, None
    path = credentials_file(settings.secrets_dir / "nats", slot.user if slot else settings.service)
    try:
        return settings.nats_url, read_credentials(path)
    except ValueError as exc:
        raise Unavailable(f"no NATS credentials for {settings.service}: {exc}") from None


def _identity(settings: ServiceSettings, instance: common_pb2.ServiceInstance) -> ServiceIdentity:
    """The operator's certificate files, or one issued here from the secrets dir's CA."""
    try:
        if settings.identity_files is not None:
            cert, key, ca = settings.identity_files
            return ServiceIdentity.from_files(cert, key, ca, settings.service, instance.instance_id)
        return ServiceIdentity.self_issued(
            settings.secrets_dir,
            settings.service,
            instance.instance_id,
            settings.identity_ttl_s,
        )
    except (OSError, ValueError) as exc:
        raise Unavailable(f"cannot load this instance's identity: {exc}") from exc


async def _heartbeat(ctx: ServiceContext, every_s: float) -> None:
    """Keep the registry entry alive and report worker status; a Redis or NATS hiccup is
    logged, not fatal."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await ctx.registry.heartbeat(ctx.instance)
        except Exception as exc:
            log.warning("registry heartbeat failed", extra={"error": str(exc)})
        await report_status(ctx)


async def report_status(ctx: ServiceContext) -> None:
    """Publish a worker's status (capacity, sampled use, slots, models) on NATS: every
    heartbeat, and at once when what it serves changed."""
    if ctx.status is None:
        return
    try:
        status = ctx.status()
        status.unhealthy = ctx.health.reason
        status.instance.CopyFrom(ctx.instance)
        status.capacity.CopyFrom(ctx.instance.capacity)
        status.in_use.CopyFrom(ctx.usage.sample())
        status.heartbeat_at.GetCurrentTime()
        status.heartbeat_interval_s = ctx.settings.heartbeat_s
        subject = subjects.heartbeat(ctx.instance.service, ctx.instance.instance_id)
        await ctx.nats.publish(subject, status.SerializeToString())
    except Exception as exc:
        log.warning("status heartbeat failed", extra={"error": str(exc)})


async def _nats_problem(nc: NATS) -> str:
    return "" if nc.is_connected else "lost NATS (reconnecting)"


async def _redis_problem(client: aioredis.Redis) -> str:
    try:
        await client.ping()  # type: ignore[misc]  # redis-py types sync|async
    except (RedisError, OSError):
        return "lost Redis"
    return ""


async def _announce(ctx: ServiceContext, phase: Phase, reason: str = "") -> None:
    """Publish a lifecycle event; failing to announce must not stop a service from running."""
    event = service_lifecycle(ctx.instance, phase, reason)
    try:
        await ctx.events.publish(
            subjects.service_lifecycle(ctx.instance.service, phase_word(phase)), event
        )
    except Exception as exc:
        log.warning("could not publish %s event", phase_word(phase), extra={"error": str(exc)})


async def _drain(nc: NATS) -> None:
    """Flush pending publishes and close the NATS connection."""
    with contextlib.suppress(Exception):
        await nc.drain()

"""Typed configuration read once from the environment.

A bad value fails the process at start with a sentence naming the variable, never
later in the middle of serving. Every problem is reported at once, not one per restart.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

PREFIX = "LLMOS_"

#: Where each service listens when nothing else is configured.
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 50051,
    "scheduler": 50052,
    "storage": 50053,
    "audit": 50054,
    "trainer": 50055,
    "inference-worker": 50056,
}

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")


class ConfigError(Exception):
    """One or more environment variables hold values the service cannot use."""


class Secret(Generic[T]):
    """A value that must never appear in logs, reprs or error messages."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """Return the wrapped value; call only where it is handed to a client library."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclass(frozen=True)
class HostPort:
    """A host and TCP port; port 0 asks the OS for a free one."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_host_port(text: str) -> HostPort:
    """Parse `host:port` (or `[v6]:port`); raise ValueError with the reason."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    return HostPort(host, port)


class EnvReader:
    """Reads `LLMOS_*` variables, collecting every error before failing."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self.errors: list[str] = []

    def _get(
        self, name: str, default: T, convert: Callable[[str], T], *, sensitive: bool = False
    ) -> T:
        key = PREFIX + name
        raw = self._environ.get(key)
        if raw is None or raw == "":
            return default
        try:
            return convert(raw)
        except ValueError as exc:
            shown = key if sensitive else f"{key}={raw!r}"
            self.errors.append(f"{shown} is invalid: {exc}")
            return default

    def text(self, name: str, default: str) -> str:
        """A free-form string."""
        return self._get(name, default, str)

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        """A float within [minimum, maximum]."""

        def convert(raw: str) -> float:
            value = float(raw)
            if not minimum <= value <= maximum:
                raise ValueError(f"must be between {minimum:g} and {maximum:g}")
            return value

        return self._get(name, default, convert)

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        """An int within [minimum, maximum]."""

        def convert(raw: str) -> int:
            value = int(raw)
            if not minimum <= value <= maximum:
                raise ValueError(f"must be between {minimum} and {maximum}")
            return value

        return self._get(name, default, convert)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """One of a fixed set of words (case-insensitive)."""

        def convert(raw: str) -> str:
            value = raw.strip().lower()
            if value not in choices:
                raise ValueError(f"must be one of {', '.join(choices)}")
            return value

        return self._get(name, default, convert)

    def address(self, name: str, default: HostPort) -> HostPort:
        """A HOST:PORT pair."""
        return self._get(name, default, parse_host_port)

    def url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        """A URL whose scheme is one of `schemes`; never echoed, as URLs may carry passwords."""

        def convert(raw: str) -> str:
            scheme, sep, _ = raw.partition("://")
            if not sep or scheme not in schemes:
                raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}")
            return raw

        return self._get(name, default, convert, sensitive=True)

    def raise_if_invalid(self) -> None:
        """Fail with every collected problem in one message."""
        if self.errors:
            raise ConfigError("; ".join(self.errors))


@dataclass(frozen=True)
class ServiceSettings:
    """What every LLM OS service needs to start: where it listens and what it connects to."""

    service: str
    data_dir: Path
    listen: HostPort
    advertise_host: str
    nats_url: str
    redis_url: Secret[str]
    log_level: str
    log_format: str
    shutdown_grace_s: float
    heartbeat_s: float
    connect_timeout_s: float


def load_service_settings(
    service: str, environ: Mapping[str, str] | None = None
) -> ServiceSettings:
    """Read the common settings of `service`; raise ConfigError naming each bad variable."""
    env = EnvReader(environ)
    settings = read_service_settings(service, env)
    env.raise_if_invalid()
    return settings


def read_service_settings(service: str, env: EnvReader) -> ServiceSettings:
    """The common settings, collecting errors in `env` (the caller raises them)."""
    listen = env.address("LISTEN_ADDR", HostPort("127.0.0.1", DEFAULT_PORTS[service]))
    settings = ServiceSettings(
        service=service,
        data_dir=Path(env.text("DATA_DIR", "var")).resolve(),
        listen=listen,
        advertise_host=env.text("ADVERTISE_HOST", _advertised(listen.host)),
        nats_url=env.url("NATS_URL", "nats://127.0.0.1:4222", ("nats", "tls")),
        redis_url=Secret(env.url("REDIS_URL", "redis://127.0.0.1:6379/0", ("redis", "rediss"))),
        log_level=env.choice("LOG_LEVEL", "info", LOG_LEVELS),
        log_format=env.choice("LOG_FORMAT", "json", LOG_FORMATS),
        shutdown_grace_s=env.number("SHUTDOWN_GRACE_S", 5.0, minimum=0.0, maximum=600.0),
        heartbeat_s=env.number("HEARTBEAT_S", 2.0, minimum=0.1, maximum=60.0),
        connect_timeout_s=env.number("CONNECT_TIMEOUT_S", 30.0, minimum=0.5, maximum=3600.0),
    )
    return settings


def _advertised(listen_host: str) -> str:
    """The host others should dial: a wildcard bind is reachable by this machine's name."""
    if listen_host in ("0.0.0.0", "::", ""):
        import socket

        return socket.gethostname()
    return listen_host


def environment_without_llmos() -> dict[str, str]:
    """This process's environment minus LLMOS_* — for child processes, so neither a
    developer's settings nor the service's own credentials leak into them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}

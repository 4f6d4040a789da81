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

#: What `LLMOS_MODELS_DIR` means, for each service that reads it.
MODELS_DIR_DOC = "where model folders live (a cache of the registry)"

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


@dataclass(frozen=True)
class Variable:
    """One environment variable as people should read about it (the README's table)."""

    name: str  #: the full name, `LLMOS_...`
    default: str  #: the default as shown to people (markdown)
    doc: str  #: what it means, one line
    service: str  #: who reads it ("" when the reader was not told)


def shown(default: object) -> str:
    """A default as the configuration table shows it (`none` for an empty one)."""
    if default == "":
        return "none"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{default}`"


class EnvReader:
    """Reads `LLMOS_*` variables, collecting every error before failing.

    Every read names what the variable means (`doc`), and may say how its default reads to
    people (`default_shown`: `<data dir>/models`, `4 x MAX_BATCH`) where the computed one
    means little; `reads` keeps them, so the README's table is generated from this code
    (`python -m tools.envdoc`).
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *, service: str = "") -> None:
        self._environ = os.environ if environ is None else environ
        self.service = service
        self.errors: list[str] = []
        self.reads: list[Variable] = []

    def _get(
        self,
        name: str,
        default: T,
        convert: Callable[[str], T],
        *,
        doc: str,
        default_shown: str | None,
        sensitive: bool = False,
    ) -> T:
        key = PREFIX + name
        self.reads.append(
            Variable(
                key,
                shown(default) if default_shown is None else default_shown,
                doc,
                self.service,
            )
        )
        raw = self._environ.get(key)
        if raw is None or raw == "":
            return default
        try:
            return convert(raw)
        except ValueError as exc:
            shown_raw = key if sensitive else f"{key}={raw!r}"
            self.errors.append(f"{shown_raw} is invalid: {exc}")
            return default

    def text(self, name: str, default: str, *, doc: str, default_shown: str | None = None) -> str:
        """A free-form string."""
        return self._get(name, default, str, doc=doc, default_shown=default_shown)

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float,
        maximum: float,
        doc: str,
        default_shown: str | None = None,
    ) -> float:
        """A float within [minimum, maximum]."""

        def convert(raw: str) -> float:
            value = float(raw)
            if not minimum <= value <= maximum:
                raise ValueError(f"must be between {minimum:g} and {maximum:g}")
            return value

        return self._get(name, default, convert, doc=doc, default_shown=default_shown)

    def integer(
        self,
        name: str,
        default: int,
        *,
        minimum: int,
        maximum: int,
        doc: str,
        default_shown: str | None = None,
    ) -> int:
        """An int within [minimum, maximum]."""

        def convert(raw: str) -> int:
            value = int(raw)
            if not minimum <= value <= maximum:
                raise ValueError(f"must be between {minimum} and {maximum}")
            return value

        return self._get(name, default, convert, doc=doc, default_shown=default_shown)

    def choice(
        self,
        name: str,
        default: str,
        choices: tuple[str, ...],
        *,
        doc: str,
        default_shown: str | None = None,
    ) -> str:
        """One of a fixed set of words (case-insensitive); the table lists them."""

        def convert(raw: str) -> str:
            value = raw.strip().lower()
            if value not in choices:
                raise ValueError(f"must be one of {', '.join(choices)}")
            return value

        listed = f"{doc} ({', '.join(f'`{c}`' for c in choices)})"
        return self._get(name, default, convert, doc=listed, default_shown=default_shown)

    def address(
        self, name: str, default: HostPort, *, doc: str, default_shown: str | None = None
    ) -> HostPort:
        """A HOST:PORT pair."""
        return self._get(name, default, parse_host_port, doc=doc, default_shown=default_shown)

    def optional_address(self, name: str, *, doc: str) -> HostPort | None:
        """A HOST:PORT pair, or None when unset (the feature is off)."""
        found: HostPort | None = self._get(
            name, None, parse_host_port, doc=doc, default_shown="off"
        )
        return found

    def url(
        self,
        name: str,
        default: str,
        schemes: tuple[str, ...],
        *,
        doc: str,
        default_shown: str | None = None,
        several: bool = False,
    ) -> str:
        """A URL whose scheme is one of `schemes` (with `several`, one or more of them,
        comma-separated: a cluster's servers); never echoed, as URLs may carry passwords."""

        def convert(raw: str) -> str:
            for one in raw.split(",") if several else [raw]:
                scheme, sep, _ = one.strip().partition("://")
                if not sep or scheme not in schemes:
                    starts = " or ".join(s + "://" for s in schemes)
                    raise ValueError(f"each URL must start with {starts}")
            return raw

        return self._get(
            name, default, convert, doc=doc, default_shown=default_shown, sensitive=True
        )

    def addresses(self, name: str, *, doc: str) -> tuple[HostPort, ...]:
        """Comma-separated HOST:PORT pairs; none when unset."""

        def convert(raw: str) -> tuple[HostPort, ...]:
            return tuple(parse_host_port(part.strip()) for part in raw.split(",") if part.strip())

        found: tuple[HostPort, ...] = self._get(name, (), convert, doc=doc, default_shown="none")
        return found

    def raise_if_invalid(self) -> None:
        """Fail with every collected problem in one message."""
        if self.errors:
            raise ConfigError("; ".join(self.errors))


@dataclass(frozen=True)
class ServiceSettings:
    """What every LLM OS service needs to start: where it listens and what it connects to."""

    service: str
    data_dir: Path
    #: the trust material this process was given (internal CA, its NATS and Redis
    #: credentials, the assertion verification key): see llmos.trust
    secrets_dir: Path
    #: the operator's certificate, key and CA for this instance (None: issue one from the
    #: CA under the secrets dir)
    identity_files: tuple[Path, Path, Path] | None
    #: lifetime of a certificate issued here (renewed at half of it)
    identity_ttl_s: float
    listen: HostPort
    advertise_host: str
    #: one NATS URL, or a cluster's, comma-separated
    nats_url: str
    redis_url: Secret[str]
    log_level: str
    log_format: str
    shutdown_grace_s: float
    heartbeat_s: float
    connect_timeout_s: float
    #: where Prometheus scrapes this service's /metrics (None: not served)
    metrics_listen: HostPort | None = None
    #: Redis Sentinels to ask where the primary is (none: `redis_url`'s host is it)
    redis_sentinels: tuple[HostPort, ...] = ()
    #: the name the Sentinels monitor the primary under
    redis_master: str = "llmos"


def load_service_settings(
    service: str, environ: Mapping[str, str] | None = None
) -> ServiceSettings:
    """Read the common settings of `service`; raise ConfigError naming each bad variable."""
    env = EnvReader(environ, service=service)
    settings = read_service_settings(service, env)
    env.raise_if_invalid()
    return settings


def read_service_settings(service: str, env: EnvReader) -> ServiceSettings:
    """The common settings, collecting errors in `env` (the caller raises them)."""
    listen = env.address(
        "LISTEN_ADDR",
        HostPort("127.0.0.1", DEFAULT_PORTS[service]),
        doc="gRPC listen address (`:0`: any free port)",
        default_shown="`127.0.0.1:<service port>`",
    )
    data_dir = Path(env.text("DATA_DIR", "var", doc="where all state lives")).resolve()
    identity = [
        env.text(
            f"IDENTITY_{part.upper()}",
            "",
            doc=f"this instance's internal {what} (PEM); all three or none",
        )
        for part, what in (
            ("cert", "certificate"),
            ("key", "private key"),
            ("ca", "CA to trust"),
        )
    ]
    if any(identity) and not all(identity):
        env.errors.append(
            "LLMOS_IDENTITY_CERT, LLMOS_IDENTITY_KEY and LLMOS_IDENTITY_CA go together"
        )
    settings = ServiceSettings(
        service=service,
        data_dir=data_dir,
        secrets_dir=Path(
            env.text(
                "SECRETS_DIR",
                str(data_dir / "secrets"),
                doc="trust material: internal CA, NATS and Redis credentials, assertion key",
                default_shown="`<data dir>/secrets`",
            )
        ).resolve(),
        identity_files=(
            (Path(identity[0]), Path(identity[1]), Path(identity[2])) if all(identity) else None
        ),
        identity_ttl_s=env.number(
            "IDENTITY_TTL_S",
            6 * 3600.0,
            minimum=10.0,
            maximum=30 * 86400.0,
            doc="lifetime of an internal certificate issued from the secrets dir's CA",
        ),
        listen=listen,
        metrics_listen=env.optional_address(
            "METRICS_ADDR",
            doc="where /metrics is served for Prometheus (HOST:PORT; `:0`: any free port)",
        ),
        advertise_host=env.text(
            "ADVERTISE_HOST",
            _advertised(listen.host),
            doc="host others should dial (registry, events)",
            default_shown="the listen host (this machine's name for a wildcard)",
        ),
        nats_url=env.url(
            "NATS_URL",
            "nats://127.0.0.1:4222",
            ("nats", "tls"),
            doc="NATS (may carry a token); a cluster's servers comma-separated, the client"
            " moving to another when one goes",
            several=True,
        ),
        redis_url=Secret(
            env.url(
                "REDIS_URL",
                "redis://127.0.0.1:6379/0",
                ("redis", "rediss"),
                doc="Redis; with no user and password in it, the service's own ACL user"
                " from `<secrets dir>/redis/<service>.json`; with Sentinels, only its user,"
                " password and database count",
            )
        ),
        redis_sentinels=env.addresses(
            "REDIS_SENTINELS",
            doc="Redis Sentinels (HOST:PORT, comma-separated) that say which server is the"
            " primary, followed through a failover; none: `LLMOS_REDIS_URL`'s host",
        ),
        redis_master=env.text(
            "REDIS_MASTER", "llmos", doc="the name the Redis Sentinels monitor the primary under"
        ),
        log_level=env.choice("LOG_LEVEL", "info", LOG_LEVELS, doc="least severe log level"),
        log_format=env.choice("LOG_FORMAT", "json", LOG_FORMATS, doc="log line format"),
        shutdown_grace_s=env.number(
            "SHUTDOWN_GRACE_S",
            5.0,
            minimum=0.0,
            maximum=600.0,
            doc="seconds in-flight calls get to finish on stop",
        ),
        heartbeat_s=env.number(
            "HEARTBEAT_S",
            2.0,
            minimum=0.1,
            maximum=60.0,
            doc="seconds between heartbeats (an instance missing 3 is taken for dead)",
        ),
        connect_timeout_s=env.number(
            "CONNECT_TIMEOUT_S",
            30.0,
            minimum=0.5,
            maximum=3600.0,
            doc="seconds to wait for NATS and Redis at start",
        ),
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


#: Variables the `llmos` command reads itself (a client, not a service: it reads them when
#: a command needs them, not through an EnvReader); declared here, so the configuration
#: table lists them with the services' own.
CLI_VARIABLES: tuple[Variable, ...] = (
    Variable(
        "LLMOS_GATEWAY",
        default="from `stack.json`, else `127.0.0.1:50051`",
        doc="the gateway to call (`--gateway`)",
        service="CLI",
    ),
    Variable(
        "LLMOS_DATA_DIR",
        default="`var`",
        doc="where to find the dev stack's `stack.json` (and where `models import` writes)",
        service="CLI",
    ),
    Variable(
        "LLMOS_ISSUER",
        default="from `stack.json`",
        doc="the OAuth issuer `llmos login` signs in with (`--issuer`)",
        service="CLI",
    ),
    Variable(
        "LLMOS_TLS_CA",
        default="from `stack.json`",
        doc="the CA that signed the gateway's certificate (`--ca-file`)",
        service="CLI",
    ),
    Variable(
        "LLMOS_INSECURE",
        default="off",
        doc="`1`: allow credentials in plaintext to a gateway or issuer on this machine "
        "(`--insecure`)",
        service="CLI",
    ),
    Variable(
        "LLMOS_TOKEN",
        default="none",
        doc="an access token to send as is (`--token`)",
        service="CLI",
    ),
    Variable(
        "LLMOS_CREDENTIALS",
        default="none",
        doc="a program's client id and secret, a JSON file (`--credentials`)",
        service="CLI",
    ),
    Variable(
        "LLMOS_SESSION",
        default="`~/.config/llmos/session.json`",
        doc="where `llmos login` keeps the session",
        service="CLI",
    ),
    Variable(
        "LLMOS_DEBUG",
        default="off",
        doc="`1`: a failure prints its Python traceback after the one-line error",
        service="CLI",
    ),
)

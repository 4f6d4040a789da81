"""The one way tests (and benchmarks) start things and wait for them.

- `start_service(module, env, log_dir)`: an LLM OS service as its own process on a free
  port, returned once its gRPC health check says SERVING;
- `start_process(name, argv, env, log_dir)`: any other process (a trainer's program, a
  launcher) — with `ready=` to wait for something;
- `nats_server` / `redis_server`: the real servers, started by the same code `make run`
  uses (`tools.devstack.infra`);
- `eventually(condition, timeout)`: poll until `condition()` returns something truthy.

Every process runs in a session of its own with its output in a log file. A process
that exits or does not become ready in time fails the test with the tail of its log, and
a test that fails shows the tails of the processes alive during it (see
`tests/conftest.py`). `stop()` sends SIGTERM, then SIGKILL after a grace period, then ends
whatever the process left in its process group, each by its id (Triton's stubs outlive a
worker that died).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from llmos.config import environment_without_llmos
from llmos.health import SERVING, check_health
from llmos.identity import ServiceIdentity, operator_identity
from llmos.keyfiles import PRIVATE_UMASK
from llmos.ports import free_port
from llmos.processes import kill_group
from llmos.services import SERVICE_MODULES
from tools.devstack import infra
from tools.standin import internal_channel

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

#: the harness's own certificate is issued again when less than this is left
RENEW_OPERATOR = datetime.timedelta(minutes=10)

#: processes started and not yet stopped, for the failure report
RUNNING: list[Process] = []


class NotReady(AssertionError):
    """A process exited, or did not become ready in time, while a test waited for it."""


def eventually(
    condition: Callable[[], T | None],
    timeout: float = 30.0,
    *,
    what: str = "",
    interval: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """`condition()`'s first truthy value, polled every `interval` seconds; an
    AssertionError naming `what` after `timeout` seconds. Exceptions of the `ignoring`
    types count as "not yet" (the last one is reported)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = condition()
        except ignoring as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what or condition, timeout, last))
        time.sleep(interval)


async def eventually_async(
    condition: Callable[[], Awaitable[T | None] | T | None],
    timeout: float = 30.0,  # noqa: ASYNC109 - a polling bound, like `eventually`'s
    *,
    what: str = "",
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """`eventually` for a test's event loop: `condition` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
        except ignoring as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what or condition, timeout, last))
        await asyncio.sleep(interval)


def _timed_out(what: object, timeout: float, last: BaseException | None) -> str:
    said = f"{what} did not happen within {timeout:g}s"
    return f"{said}; last error: {last!r}" if last is not None else said


@dataclass
class Process:
    """A process a test started: its log, its address (services), and how to end it."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    address: str = ""
    stopped: bool = field(default=False, init=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The end of its log (what it said before a failure)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def secrets_dir(self) -> Path:
        """The trust directory the process was given (LLMOS_SECRETS_DIR)."""
        return secrets_dir_of(self.env)

    def channel(self, max_message: int = 16 << 20) -> grpc.Channel:
        """A channel to the service's gRPC port standing in for the gateway (mutual TLS,
        an assertion for the tenant each request names: `tools.standin`)."""
        return internal_channel(
            self.address, service_of(self.name), self.secrets_dir, max_message=max_message
        )

    def wait_ready(self, ready: Callable[[], object], timeout: float) -> None:
        """Return once `ready()` is truthy; NotReady, with the log's tail, if the process
        exits first or takes longer than `timeout` (it is stopped then)."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive():
                self.stop()
                raise NotReady(
                    f"{self.name} exited with code {self.proc.returncode} while starting; "
                    f"its log ends:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise NotReady(
                    f"{self.name} was not ready within {timeout:g}s; its log ends:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def signal(self, number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, number)

    def kill(self) -> None:
        """kill -9 of the process alone (a crash): what it started stays, as it would."""
        self.signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM, SIGKILL after `grace_s`, then its process group's leftovers; the exit
        code (None if it was already stopped)."""
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        with contextlib.suppress(ValueError):
            RUNNING.remove(self)
        code = infra.terminate(self.proc, grace_s)
        # its group's leftovers; a pid reused by another process since (it was reaped
        # long ago) cannot also name a group that still has members
        if not Path(f"/proc/{self.pid}").exists():
            kill_group(self.pid)
        return code


def start_process(
    name: str,
    argv: list[str],
    env: dict[str, str],
    log_dir: Path,
    *,
    ready: Callable[[], object] | None = None,
    timeout: float = 90.0,
    address: str = "",
) -> Process:
    """Start `argv` in a session of its own, logging to `log_dir`; with `ready`, return
    once `ready()` is truthy (NotReady, with the log's tail, if it exits first or takes
    longer than `timeout`)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=PRIVATE_UMASK,
        )
    process = Process(name, proc, log_path, env, address)
    RUNNING.append(process)
    if ready is not None:
        process.wait_ready(ready, timeout)
    return process


def service_of(name: str) -> str:
    """The service a module (or its last part) starts."""
    tail = name.rsplit(".", 1)[-1]
    return next((s for s, m in SERVICE_MODULES.items() if m.rsplit(".", 1)[-1] == tail), tail)


def secrets_dir_of(env: dict[str, str]) -> Path:
    """The trust directory a service started with `env` reads (LLMOS_SECRETS_DIR)."""
    if env.get("LLMOS_SECRETS_DIR"):
        return Path(env["LLMOS_SECRETS_DIR"])
    return Path(env.get("LLMOS_DATA_DIR", "var")) / "secrets"


@functools.cache
def _issued_operator(secrets: Path) -> ServiceIdentity:
    return operator_identity(secrets, "harness")


def _operator(secrets: Path) -> ServiceIdentity:
    """The harness's operator identity for one secrets dir, issued once and again near
    its end (a start polls health every 0.1 s)."""
    identity = _issued_operator(secrets)
    if identity.material.not_after - datetime.datetime.now(datetime.UTC) < RENEW_OPERATOR:
        identity.refresh()
    return identity


def serving(
    address: str, tls_ca: bytes | None = None, service: str = "", secrets: Path | None = None
) -> bool:
    """Whether the gRPC server at `address` answers its health check with SERVING (an
    internal `service` over mutual TLS, with an operator identity from `secrets`)."""
    identity = _operator(secrets) if secrets and service != "gateway" else None
    state, _ = asyncio.run(
        check_health(address, timeout_s=1, tls_ca=tls_ca, identity=identity, server=service)
    )
    return state == SERVING


def start_service(
    module: str,
    env: dict[str, str],
    log_dir: Path,
    *,
    address: str = "",
    timeout: float = 90.0,
    wait: bool = True,
    tls_ca: bytes | None = None,
) -> Process:
    """`python -m module` listening on `address` (default: a free port), returned once
    SERVING (unless `wait=False`; over TLS trusting `tls_ca` when given)."""
    address = address or f"127.0.0.1:{free_port()}"
    name = module.rsplit(".", 1)[-1]
    service, secrets = service_of(name), secrets_dir_of(env)
    return start_process(
        name,
        [sys.executable, "-m", module],
        {**env, "LLMOS_LISTEN_ADDR": address},
        log_dir,
        ready=(lambda: serving(address, tls_ca, service, secrets)) if wait else None,
        timeout=timeout,
        address=address,
    )


Server = TypeVar("Server", bound=infra.ManagedServer)


@contextlib.contextmanager
def _running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


def nats_server(
    data_dir: Path, secrets_dir: Path | None = None
) -> contextlib.AbstractContextManager[infra.NatsServer]:
    """A real nats-server with JetStream on a free port, stopped on exit; its users'
    credentials in `secrets_dir` (default `data_dir/secrets`)."""
    return _running(infra.start_nats(data_dir, secrets_dir=secrets_dir))


def redis_server(
    data_dir: Path, secrets_dir: Path | None = None
) -> contextlib.AbstractContextManager[infra.RedisServer]:
    """A real redis-server (per-service ACL users) on a free port, stopped on exit; its
    users' credentials in `secrets_dir` (default `data_dir/secrets`)."""
    return _running(infra.start_redis(data_dir, secrets_dir=secrets_dir))


#: torch threads per process a test starts. The suite runs two test workers on two cores,
#: and an OpenMP pool as wide as the machine stalls at every barrier while other
#: processes hold the cores: a failover test that takes 8 s alone took 143 s beside the
#: training tests, and 19 s with one thread per engine.
TEST_THREADS = {"OMP_NUM_THREADS": "1"}


def python_env(**extra: str) -> dict[str, str]:
    """This environment without any LLMOS_* variable (a developer's own settings must
    not leak into a test), one torch thread (TEST_THREADS), plus `extra`."""
    return {**environment_without_llmos(), **TEST_THREADS, **extra}


def failure_report() -> list[tuple[str, str]]:
    """(title, log tail) of each process started and not stopped, for a failed test."""
    return [(f"log of {p.name} (pid {p.pid})", p.log_tail()) for p in list(RUNNING)]

"""Fixtures shared by every test: real infrastructure on free ports, stopped in `finally`;
the report of a failed test (the logs of the processes it ran with); and how the suite
is spread over the machine's cores.

`make test` runs pytest-xdist with two workers. A work unit is a test module (its module
fixtures start once), or a whole package listed in SHARED_UNITS (its modules share a
package fixture, e.g. one whole stack); long units are handed out first. (xdist's own
`xdist_group` marks do nothing with pytest 9, whose node ids xdist cannot suffix.)
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos.model.names import DEFAULT_MODEL
from tools import harness
from tools.devstack.infra import NatsServer, RedisServer

ROOT = harness.ROOT

#: packages whose modules are one work unit: they share a package-scoped fixture
SHARED_UNITS = ("tests/e2e/shared/",)
#: work units that take longest, started first so that none is left alone at the end
LONG_UNITS = (
    "tests/integration/test_training_jobs.py",
    "tests/e2e/shared/",
    "tests/e2e/test_failover.py",
    "tests/e2e/test_multinode.py",
    "tests/integration/test_storage.py",
    "tests/integration/test_engine.py",
    "tests/integration/test_audit_ingest.py",
    "tests/integration/test_audit_integrity.py",
    "tests/integration/test_jobs.py",
    "tests/integration/test_models_from_registry.py",
    "tests/integration/test_service_lifecycle.py",
    "tests/integration/test_storage_registry.py",
    "tests/integration/test_gateway_attacks.py",
    "tests/integration/test_cluster_infra.py",
)


@pytest.fixture(scope="session")
def infra_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for the session's NATS and Redis."""
    return tmp_path_factory.mktemp("infra")


@pytest.fixture(scope="session")
def secrets_dir(infra_dir: Path) -> Path:
    """The session's trust directory (LLMOS_SECRETS_DIR): the internal CA and every NATS
    and Redis user's credentials, shared by all servers and services a test starts."""
    return infra_dir / "secrets"


@pytest.fixture(scope="session")
def nats_server(infra_dir: Path, secrets_dir: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free port."""
    with harness.nats_server(infra_dir, secrets_dir) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(infra_dir: Path, secrets_dir: Path) -> Iterator[RedisServer]:
    """A real Redis (Valkey) server, one ACL user per service, on a free port."""
    with harness.redis_server(infra_dir, secrets_dir) as server:
        yield server


@pytest.fixture
def service_env(
    nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path, model_folder: Path
) -> dict[str, str]:
    """Environment for starting one service process against the session infrastructure."""
    return harness.python_env(
        LLMOS_DATA_DIR=str(tmp_path / "data"),
        LLMOS_SECRETS_DIR=str(nats_server.secrets_dir),
        LLMOS_NATS_URL=nats_server.public_url,
        LLMOS_REDIS_URL=redis_server.public_url,
        LLMOS_LISTEN_ADDR="127.0.0.1:0",
        LLMOS_AUTH_HTTP_ADDR="127.0.0.1:0",
        LLMOS_HEARTBEAT_S="0.5",
        LLMOS_SHUTDOWN_GRACE_S="2",
        LLMOS_MODELS_DIR=str(model_folder.parent),
        # the LLM only: the entity model's own Triton model is tested on the shared stack,
        # which runs every default (tests/e2e/shared/test_apps.py)
        LLMOS_MODELS=DEFAULT_MODEL,
        LLMOS_MAX_CONTEXT="512",
    )


def run_python(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python ARGS` from the repository root and capture its output."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The default model imported from its GGUF file once per test run (xdist workers
    share it: the first imports it under a lock, the others wait and reuse it)."""
    from llmos.model.default import ensure_default_model

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent
    models = shared / "models"
    models.mkdir(exist_ok=True)
    with (shared / "models.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_default_model(models)


@pytest.fixture(autouse=True)
def _end_what_crashed_processes_left() -> Iterator[None]:
    """A process a test started and that exited during it (killed, crashed) has what it
    left in its process group ended when the test ends. Live ones may belong to a module
    fixture (a restarted scheduler): their owner stops them, or the session does."""
    before = set(map(id, harness.RUNNING))
    yield
    for process in [p for p in harness.RUNNING if id(p) not in before and not p.alive()]:
        process.stop()


# -- reporting -------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report carries the end of the log of every process it ran with."""
    report = yield
    if report.failed:
        for title, tail in harness.failure_report():
            report.sections.append((title, tail))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Nothing a test started outlives the run: processes whose fixture never got to stop
    them (an interrupted run, a setup that timed out) are stopped here, and what the
    embedded Triton of a killed worker left is ended (only directories whose worker is
    dead are touched)."""
    from services.inference_worker.leftovers import sweep

    for process in reversed(list(harness.RUNNING)):
        process.stop(10)
    sweep(Path(tempfile.gettempdir()))


# -- spreading the suite over the cores (pytest-xdist) -------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long work units first; within a unit, the order of the files."""

    def rank(item: pytest.Item) -> int:
        unit = unit_of(item)
        return LONG_UNITS.index(unit) if unit in LONG_UNITS else len(LONG_UNITS)

    items.sort(key=rank)


def unit_of(item: pytest.Item) -> str:
    """The work unit a test belongs to."""
    return unit_of_nodeid(item.nodeid)


def unit_of_nodeid(nodeid: str) -> str:
    """A package of SHARED_UNITS, or the test's module."""
    return next((p for p in SHARED_UNITS if nodeid.startswith(p)), nodeid.split("::", 1)[0])


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Schedule whole work units (see the module docstring)."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return unit_of_nodeid(nodeid)

    return WorkUnitScheduling(config, log)

"""The whole LLM OS as a user runs it: the same launcher `make run` uses, and the `llmos`
CLI. (A crash of a service, and a stop that leaves nothing behind: test_failover.py,
which has a stack of its own to kill.)"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from llmos.ports import port_open
from llmos.services import REQUIRED_SERVICES
from tests.e2e.conftest import RunningStack

pytestmark = pytest.mark.e2e


def test_ready_line_names_every_service_and_the_infrastructure(stack: RunningStack) -> None:
    for name in REQUIRED_SERVICES:
        host, port = stack.fields[name].rsplit(":", 1)
        assert port_open(host, int(port))
    assert stack.fields["nats"].startswith("nats://")
    assert stack.fields["redis"].startswith("redis://")
    assert Path(stack.fields["data_dir"]) == stack.data_dir.resolve()


def test_llmos_status_shows_all_six_serving(stack: RunningStack) -> None:
    result = stack.cli("--gateway", stack.gateway, "status")
    assert result.returncode == 0, result.stderr
    rows = {
        line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:] if line.strip()
    }
    for name in REQUIRED_SERVICES:
        assert rows[name] == "SERVING"
    assert "LLM OS is ready" in result.stdout


def test_cli_finds_the_gateway_from_the_data_dir(stack: RunningStack) -> None:
    result = stack.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ready"] is True


def test_generated_secrets_are_private_and_never_printed(stack: RunningStack) -> None:
    secrets_dir = stack.data_dir / "secrets"
    credentials = sorted(p for p in secrets_dir.rglob("*.json") if p.is_file())
    keys = [secrets_dir / "ca" / "ca-key.pem", *(secrets_dir / "assertions").glob("*.key")]
    secret_files = [*credentials, *keys]
    names = {str(p.relative_to(secrets_dir)) for p in secret_files}
    users = {"setup", "gateway", "scheduler", "storage", "audit", "trainer-1", "inference-worker-1"}
    assert names >= {f"nats/{user}.json" for user in users}
    assert names >= {f"redis/{user}.json" for user in ("setup", "gateway", "inference-worker")}
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    printed = "".join(stack.output) + "".join(
        p.read_text(errors="replace") for p in (stack.data_dir / "logs").iterdir()
    )
    for path in secret_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() not in printed


def test_nothing_under_the_data_dir_is_open_to_other_users(stack: RunningStack) -> None:
    """Redis' append-only file holds password hashes and cached outputs, storage's
    metadata and blobs hold training text: no file or directory any service, Redis, NATS
    or Triton made under the data directory may be read by group or others."""
    stack.cli("status", "--json")  # something has been written by now: logs, AOF, blobs
    found = [stack.data_dir, *stack.data_dir.rglob("*")]
    open_to_others = [
        f"{path.relative_to(stack.data_dir)} {stat.filemode(path.lstat().st_mode)}"
        for path in found
        if not path.is_symlink() and path.lstat().st_mode & 0o077
    ]
    assert len(found) > 20
    assert any(p.name == "appendonly.aof" or p.suffix == ".aof" for p in found)
    assert any(p.name == "metadata.sqlite" for p in found)
    assert open_to_others == []

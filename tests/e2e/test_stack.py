"""The whole LLM OS as a user runs it: the same launcher `make run` uses, the `llmos`
CLI, a crash of a service, and a clean stop that leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from llmos.ports import port_open
from llmos.services import REQUIRED_SERVICES
from llmos.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc
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
    secret_files = sorted(secrets_dir.iterdir())
    assert {p.name for p in secret_files} >= {"nats.token", "redis.password"}
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    printed = "".join(stack.output) + "".join(
        p.read_text(errors="replace") for p in (stack.data_dir / "logs").iterdir()
    )
    for path in secret_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() not in printed


def test_a_killed_service_is_restarted_and_announced(stack: RunningStack) -> None:
    """kill -9 of the scheduler: the supervisor restarts it and subscribers see it come back."""
    status = stack.status()
    (scheduler,) = [
        s["instance"] for s in status["services"] if s["instance"]["service"] == "scheduler"
    ]
    with stack.channel() as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        events = stub.SubscribeEvents(
            gateway_pb2.SubscribeEventsRequest(kinds=["service"]), timeout=60
        )
        time.sleep(0.5)  # let the subscription reach NATS before the crash
        os.kill(int(scheduler["pid"]), signal.SIGKILL)
        for event in events:
            lifecycle = event.service_lifecycle
            if (
                lifecycle.phase == events_pb2.ServiceLifecycle.PHASE_STARTED
                and lifecycle.instance.service == "scheduler"
            ):
                assert lifecycle.instance.instance_id != scheduler["instance_id"]
                break
        events.cancel()
    deadline = time.monotonic() + 30
    while not stack.status().get("ready") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stack.status()["ready"] is True


def test_sigterm_stops_everything_and_leaves_nothing_listening(stack: RunningStack) -> None:
    # A crashed instance stays listed (UNREACHABLE) until its heartbeat expires: skip it.
    serving = [s for s in stack.status()["services"] if s["state"] == "STATE_SERVING"]
    pids = [int(s["instance"]["pid"]) for s in serving]
    assert sorted(s["instance"]["service"] for s in serving) == sorted(REQUIRED_SERVICES)
    assert stack.launcher.stop() == 0
    assert any("LLM OS stopped" in line for line in stack.output)
    for key, address in stack.fields.items():
        if key in ("data_dir", "logs", "credentials", "tls_ca"):
            continue
        host, port = address.split("://")[-1].split("/")[0].rsplit(":", 1)
        assert not port_open(host, int(port)), f"{key} still listening on {address}"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    leftovers = [
        p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).find(str(stack.data_dir)) >= 0
    ]
    assert leftovers == [], "nats-server or redis-server survived the stop"
    assert not (stack.data_dir / "stack.json").exists()


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""

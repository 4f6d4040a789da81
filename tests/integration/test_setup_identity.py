"""The setup identity as compose runs it (`python -m tools.devstack.setup`): it creates
the trust material once, the bundled NATS and Valkey run from its configuration, it
creates the streams, and a service started with nothing but the secrets dir and
credential-less URLs serves, reachable only over mutual TLS; NATS speaks only TLS."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from pathlib import Path

import nats

from llmos.ports import free_port
from tools.harness import ROOT, python_env, start_process, start_service
from tools.standin import nats_login_as

SETUP = [sys.executable, "-m", "tools.devstack.setup"]


async def _plaintext_refused(url: str, secrets: Path) -> bool:
    """Whether NATS refuses a client (with the right password) that will not do TLS."""
    try:
        nc = await nats.connect(
            url,
            **nats_login_as(secrets, "setup"),
            connect_timeout=2,
            max_reconnect_attempts=0,
            allow_reconnect=False,
        )
    except Exception:
        return True
    await nc.close()
    return False


def test_a_service_runs_on_what_the_setup_identity_created(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    nats_port, monitor_port, redis_port = free_port(), free_port(), free_port()
    layout = [
        "--secrets", str(secrets),
        "--nats-store", str(tmp_path / "nats"), "--redis-store", str(tmp_path / "redis"),
        "--nats-port", str(nats_port), "--nats-monitor-port", str(monitor_port),
        "--redis-port", str(redis_port),
    ]  # fmt: skip
    env = python_env(PYTHONPATH=str(ROOT))
    subprocess.run([*SETUP, "init", *layout], env=env, cwd=ROOT, check=True, timeout=60)
    before = {p: p.read_bytes() for p in secrets.rglob("*") if p.is_file()}
    subprocess.run([*SETUP, "init", *layout], env=env, cwd=ROOT, check=True, timeout=60)
    assert {p: p.read_bytes() for p in secrets.rglob("*") if p.is_file()} == before  # kept
    for path in before:  # all private but the CA's certificate, which everyone trusts
        assert path.name == "ca.pem" or stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700

    def ready(server: str) -> bool:
        check = [*SETUP, "check", server, *layout]
        return subprocess.run(check, env=env, cwd=ROOT, timeout=30).returncode == 0

    logs = tmp_path / "logs"
    nats = start_process("nats", [*SETUP, "run", "nats", *layout], env, logs)
    redis = start_process("redis", [*SETUP, "run", "redis", *layout], env, logs)
    try:
        nats.wait_ready(lambda: ready("nats"), 60)
        redis.wait_ready(lambda: ready("redis"), 60)
        nats_url = f"tls://127.0.0.1:{nats_port}"
        assert asyncio.run(_plaintext_refused(f"nats://127.0.0.1:{nats_port}", secrets))
        subprocess.run(
            [*SETUP, "streams", *layout, "--nats", nats_url],
            env=env,
            cwd=ROOT,
            check=True,
            timeout=120,
        )
        service_env = python_env(
            PYTHONPATH=str(ROOT),
            LLMOS_DATA_DIR=str(tmp_path / "data"),
            LLMOS_SECRETS_DIR=str(secrets),
            LLMOS_NATS_URL=nats_url,
            LLMOS_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        )
        storage = start_service("services.storage", service_env, logs)  # SERVING over mTLS
        try:
            probe = [sys.executable, "-m", "llmos.probe", storage.address]
            probe_env = {**env, "LLMOS_SECRETS_DIR": str(secrets)}
            as_operator = subprocess.run(
                [*probe, "storage"], env=probe_env, cwd=ROOT, capture_output=True, timeout=30
            )
            assert as_operator.returncode == 0, as_operator.stderr
            plaintext = subprocess.run(
                probe, env=probe_env, cwd=ROOT, capture_output=True, timeout=30
            )
            assert plaintext.returncode == 1
        finally:
            storage.stop()
    finally:
        redis.stop()
        nats.stop()
    said = "".join(p.read_text(errors="replace") for p in logs.iterdir())
    for credentials in secrets.rglob("*.json"):
        assert json.loads(credentials.read_text())["password"] not in said

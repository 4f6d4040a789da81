"""The whole stack, started exactly as `make run` starts it. The modules that only use it
share one (`tests/e2e/shared/`, one work unit on one worker: see tests/conftest.py); the
modules that kill or reconfigure things start their own."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmos.oauthclient import Issuer
from llmos.v1 import admin_pb2, admin_pb2_grpc
from tests.conftest import ROOT
from tools.devstack.access import admin_token, gateway_channel
from tools.devstack.process import StackProcess
from tools.harness import TEST_THREADS, python_env

LLMOS = str(Path(sys.executable).parent / "llmos")


@dataclass
class RunningStack:
    launcher: StackProcess
    fields: dict[str, str]
    data_dir: Path

    @property
    def gateway(self) -> str:
        return self.fields["gateway"]

    @property
    def output(self) -> list[str]:
        return self.launcher.output

    @property
    def ca(self) -> Path:
        return Path(self.fields["tls_ca"])

    def admin_token(self, scope: str = "") -> str:
        """A token for the bootstrap admin client (client credentials grant)."""
        return admin_token(self.fields, scope)

    def client_token(self, tenant: str, scopes: list[str], **quota: int) -> str:
        """A token of a new client (in `tenant`, created if needed) with those scopes."""
        with self.channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            try:
                admin.CreateTenant(
                    admin_pb2.CreateTenantRequest(name=tenant, quota=admin_pb2.Quota(**quota)),
                    timeout=10,
                )
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
            created = admin.CreateClient(
                admin_pb2.CreateClientRequest(tenant=tenant, name="e2e", scopes=scopes),
                timeout=10,
            )
        issuer = Issuer(self.fields["issuer"], self.ca)
        token = issuer.client_credentials(created.client.client_id, created.client_secret)
        return str(token["access_token"])

    def channel(self, token: str | None = None) -> grpc.Channel:
        """A TLS channel to the gateway carrying `token` (default: the admin's)."""
        return gateway_channel(self.fields, token or self.admin_token())

    def cli_env(self, **extra: str) -> dict[str, str]:
        """Environment in which `llmos` finds this stack (gateway, CA, dev credentials)
        and no one's personal session."""
        defaults = {
            "LLMOS_DATA_DIR": str(self.data_dir),
            "LLMOS_SESSION": str(self.data_dir / "test-session.json"),
        }
        return python_env(**{**defaults, **extra})

    def cli(self, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LLMOS, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.cli_env(**env),
            timeout=120,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--json")
        return dict(json.loads(result.stdout))


@contextlib.contextmanager
def running_stack(
    tmp_path_factory: pytest.TempPathFactory,
    model_folder: Path,
    via_make: bool = False,
    **env: str,
) -> Iterator[RunningStack]:
    """The launcher (or `make run`) with `env` added; the worker reads the session's
    imported model."""
    data_dir = tmp_path_factory.mktemp("stack") / "var"
    launcher = StackProcess(
        data_dir,
        env={"LLMOS_MODELS_DIR": str(model_folder.parent), **TEST_THREADS, **env},
        cwd=ROOT,
        via_make=via_make,
    )
    try:
        yield RunningStack(launcher, launcher.start(), data_dir)
    finally:
        launcher.stop()

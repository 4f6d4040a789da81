"""The official `openai` SDK against a running stack, with API keys made by the CLI."""

from __future__ import annotations

import json
import ssl
from typing import Any

import grpc
import openai

from llmos.v1 import admin_pb2, admin_pb2_grpc
from tests.e2e.conftest import RunningStack


def _tenant(stack: RunningStack, name: str, **quota: int) -> None:
    with stack.channel() as channel:
        try:
            admin_pb2_grpc.AdminStub(channel).CreateTenant(
                admin_pb2.CreateTenantRequest(name=name, quota=admin_pb2.Quota(**quota)),
                timeout=10,
            )
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS


def api_key(stack: RunningStack, tenant: str, *scopes: str, **options: str) -> dict[str, Any]:
    """A new API key of `tenant`, made as an operator would (the CLI)."""
    _tenant(stack, tenant)
    flags = [f"--{name}={value}" for name, value in options.items()]
    made = stack.cli(
        "admin", "api-key", "create", "--tenant", tenant,
        *(f"--scope={s}" for s in scopes), *flags,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return dict(json.loads(made.stdout))


def client(stack: RunningStack, key: str) -> openai.OpenAI:
    """The SDK as the README shows it, trusting the stack's CA; no retries, so a refusal
    is seen as it was sent."""
    return openai.OpenAI(
        base_url=stack.fields["openai"],
        api_key=key,
        http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=stack.ca)),
        max_retries=0,
    )

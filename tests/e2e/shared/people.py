"""People for the console's tests: each signs in with password and one-time code. A
code works once per 30-second step, so every test signs in a person of its own."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from llmos.v1 import admin_pb2, admin_pb2_grpc
from tests.e2e.conftest import RunningStack

EVERY_SCOPE = [
    "inference", "models:read", "models:write", "training", "datasets", "audit:read",
    "events:read", "cluster:read", "admin",
]  # fmt: skip


@dataclass(frozen=True)
class Person:
    username: str
    password: str
    totp_secret: str
    tenant: str


def new_person(stack: RunningStack, scopes: list[str], tenant: str = "") -> Person:
    """A new user (in the system tenant unless `tenant` names another) with `scopes`."""
    username = f"p-{uuid.uuid4().hex[:10]}"
    password = f"pw-{uuid.uuid4().hex}"
    with stack.channel() as channel:
        created = admin_pb2_grpc.AdminStub(channel).CreateUser(
            admin_pb2.CreateUserRequest(
                tenant=tenant, username=username, password=password, scopes=scopes
            ),
            timeout=30,
        )
    return Person(username, password, created.totp_secret, created.user.tenant)

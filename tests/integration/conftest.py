"""Fixtures for gateway tests: a gateway process with its own fresh Redis (identities are
per Redis, and the bootstrap admin is created once per Redis), audit capture, tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from llmos.v1 import audit_pb2
from tests.integration.storage_client import (
    LOCAL,
    Backend,
    Shared,
    StorageProcess,
    shared_backend,
    start_storage,
)
from tools.devstack.gateway_process import GatewayProcess, start_gateway
from tools.devstack.infra import NatsServer, RedisServer
from tools.harness import ROOT, eventually_async, nats_server, python_env, redis_server


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path) -> Iterator[RedisServer]:
    """A Redis only this module's gateways use."""
    with redis_server(tmp_path_factory.mktemp("redis"), secrets_dir) as server:
        yield server


def gateway_env(nats: NatsServer, redis: RedisServer) -> dict[str, str]:
    """Environment of a service (any of them) on the given NATS and Redis."""
    return python_env(
        LLMOS_SECRETS_DIR=str(nats.secrets_dir),
        LLMOS_NATS_URL=nats.public_url,
        LLMOS_REDIS_URL=redis.public_url,
        LLMOS_HEARTBEAT_S="0.5",
        LLMOS_SHUTDOWN_GRACE_S="2",
        LLMOS_LOGIN_MAX_FAILURES="3",
        LLMOS_LOGIN_LOCKOUT_S="120",
        PYTHONPATH=str(ROOT),
    )


@pytest.fixture(scope="module")
def gw(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway hosting the built-in issuer."""
    gateway = start_gateway(
        gateway_env(nats_server, own_redis), tmp_path_factory.mktemp("gw") / "data"
    )
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def own_nats(tmp_path: Path, secrets_dir: Path) -> Iterator[NatsServer]:
    """A NATS of this test only: its streams hold exactly what the test published."""
    with nats_server(tmp_path / "nats", secrets_dir) as server:
        yield server


@pytest.fixture(scope="module")
def storage_env(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment of the module's storage services."""
    data = tmp_path_factory.mktemp("storage-data")
    return {**gateway_env(nats_server, own_redis), "LLMOS_DATA_DIR": str(data)}


@pytest.fixture(scope="module")
def storage(
    storage_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StorageProcess]:
    """One storage service for the module's tests."""
    process = start_storage(storage_env, tmp_path_factory.mktemp("store") / "root")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def shared_servers(tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path) -> Iterator[Shared]:
    """One PostgreSQL and one SeaweedFS for the session's tests (each storage process a
    database and a bucket of its own on them), started when first asked for."""
    with shared_backend(tmp_path_factory.mktemp("shared"), secrets_dir) as shared:
        yield shared


@pytest.fixture(scope="module", params=["local", "s3+postgresql"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Files and SQLite (the embedded default), then real PostgreSQL and SeaweedFS: a
    module using it runs each of its tests on both."""
    if request.param == "local":
        return LOCAL
    shared: Shared = request.getfixturevalue("shared_servers")
    return shared


@pytest.fixture(scope="module")
def storage_on_each_backend(
    storage_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, backend: Backend
) -> Iterator[StorageProcess]:
    """One storage service per backend for the module's tests."""
    process = start_storage(storage_env, tmp_path_factory.mktemp("store") / "root", backend)
    try:
        yield process
    finally:
        process.stop()


class AuditTap:
    """Audit records the gateway publishes, as a subscriber sees them."""

    def __init__(self, url: str, subject: str = "llmos.audit.gateway") -> None:
        self._url = url
        self._subject = subject
        self.records: list[audit_pb2.AuditRecord] = []
        self._nc: Any = None

    async def __aenter__(self) -> AuditTap:
        self._nc = await nats.connect(self._url)

        async def on_record(msg: Any) -> None:
            self.records.append(audit_pb2.AuditRecord.FromString(msg.data))

        await self._nc.subscribe(self._subject, cb=on_record)
        await self._nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._nc.close()

    async def wait_for(self, timeout_s: float = 10.0, **fields: Any) -> audit_pb2.AuditRecord:
        """The first record whose fields equal `fields`."""

        def found() -> audit_pb2.AuditRecord | None:
            return next(
                (r for r in self.records if all(getattr(r, k) == v for k, v in fields.items())),
                None,
            )

        return await eventually_async(found, timeout_s, what=f"an audit record with {fields}")


def signing_key(gateway: GatewayProcess) -> tuple[str, RSAKey]:
    """The gateway's current token-signing key, read from its data directory."""
    newest = sorted((gateway.data_dir / "gateway" / "keys").glob("*.pem"))[-1]
    return newest.stem, RSAKey.import_key(newest.read_bytes())


def claims_for(gateway: GatewayProcess, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": gateway.issuer.url,
        "aud": "llmos",
        "sub": "mallory",
        "client_id": "mallory",
        "tenant": "system",
        "scope": "models:read cluster:read admin inference",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def forge(
    gateway: GatewayProcess,
    key: RSAKey | None = None,
    kid: str | None = None,
    typ: str = "at+jwt",
    **claims: Any,
) -> str:
    """A token signed with `key` (default: the gateway's real key) and these claims."""
    real_kid, real_key = signing_key(gateway)
    header = {"alg": "RS256", "kid": kid or real_kid, "typ": typ}
    return jwt.encode(header, claims_for(gateway, **claims), key or real_key)


def login_from(
    gateway: GatewayProcess, source: str, username: str, password: str, code: str
) -> tuple[int, dict[str, Any]]:
    """A password + TOTP sign-in sent from the local address `source` (a loopback
    address other than 127.0.0.1 is another client as the gateway sees it): status, body."""
    form = {
        "grant_type": "password",
        "client_id": "llmos-cli",
        "username": username,
        "password": password,
        "totp": code,
    }
    connection = http.client.HTTPConnection(
        "127.0.0.1", gateway.http_port, timeout=30, source_address=(source, 0)
    )
    try:
        connection.request(
            "POST",
            "/token",
            urllib.parse.urlencode(form),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        reply = connection.getresponse()
        return reply.status, dict(json.loads(reply.read()))
    finally:
        connection.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unsigned(gateway: GatewayProcess) -> str:
    """`alg: none`: claims with no signature at all."""
    header = _b64(json.dumps({"alg": "none", "kid": signing_key(gateway)[0]}).encode())
    return f"{header}.{_b64(json.dumps(claims_for(gateway)).encode())}."


def hs256_with_public_key(gateway: GatewayProcess) -> str:
    """The classic key-confusion attack: HMAC keyed with the issuer's public key."""
    kid, key = signing_key(gateway)
    public_pem = key.as_pem(private=False)
    header = _b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
    payload = _b64(json.dumps(claims_for(gateway)).encode())
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(mac)}"


def key_files(gateway: GatewayProcess) -> list[Path]:
    return sorted((gateway.data_dir / "gateway" / "keys").glob("*.pem"))

"""Gateways as they are deployed: several replicas sharing one limit, an external IdP in
place of the built-in issuer, TLS; and the rate limiter's arithmetic against real Redis."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway.auth.identities import Limits
from gateway.auth.principal import Principal
from gateway.firewall import Allowlist, Firewall
from gateway.limits import Admission
from llmos.errors import ResourceExhausted
from llmos.oauthclient import Issuer
from llmos.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import gateway_env
from tools.devstack.access import tls_channel
from tools.devstack.gateway_process import GatewayProcess, bearer, start_gateway
from tools.devstack.infra import NatsServer, RedisServer
from tools.devstack.tls import ensure_dev_tls


@pytest.fixture(scope="module")
def replicas(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two gateways on one Redis: the first hosts the issuer, the second trusts it (with
    the operators' `system` tenant too: it is this deployment's own issuer)."""
    env = gateway_env(nats_server, own_redis)
    first = start_gateway(env, tmp_path_factory.mktemp("replica-a") / "data")
    second = start_gateway(
        env,
        tmp_path_factory.mktemp("replica-b") / "data",
        {"LLMOS_AUTH_ISSUER": first.issuer.url, "LLMOS_AUTH_ISSUER_MAY_GRANT_SYSTEM": "on"},
    )
    try:
        yield first, second
    finally:
        second.stop()
        first.stop()


def _client_with_quota(gateway: GatewayProcess, tenant: str, rpm: int) -> str:
    """A token of a new client in a new tenant limited to `rpm` requests per minute."""
    with grpc.insecure_channel(gateway.address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        system = bearer(gateway.admin_token())
        admin.CreateTenant(
            admin_pb2.CreateTenantRequest(
                name=tenant, quota=admin_pb2.Quota(requests_per_minute=rpm)
            ),
            metadata=system,
        )
        created = admin.CreateClient(
            admin_pb2.CreateClientRequest(tenant=tenant, name="app", scopes=["models:read"]),
            metadata=system,
        )
    token = gateway.issuer.client_credentials(created.client.client_id, created.client_secret)
    return str(token["access_token"])


def test_two_replicas_together_allow_exactly_the_limit(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    token = _client_with_quota(replicas[0], "shared-limit", rpm=10)
    channels = [grpc.insecure_channel(g.address) for g in replicas]
    stubs = [gateway_pb2_grpc.GatewayStub(c) for c in channels]

    def call(index: int) -> tuple[int, grpc.StatusCode, dict[str, Any]]:
        try:
            stubs[index % 2].ListModels(
                gateway_pb2.ListModelsRequest(), metadata=bearer(token), timeout=30
            )
        except grpc.RpcError as exc:
            return index % 2, exc.code(), dict(exc.trailing_metadata() or ())
        return index % 2, grpc.StatusCode.OK, {}

    try:
        with ThreadPoolExecutor(12) as pool:  # concurrently, half through each replica
            outcomes = list(pool.map(call, range(40)))
    finally:
        for channel in channels:
            channel.close()
    allowed = [o for o in outcomes if o[1] == grpc.StatusCode.OK]
    refused = [o for o in outcomes if o[1] != grpc.StatusCode.OK]
    assert len(allowed) == 10
    assert {o[1] for o in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert {o[0] for o in refused} == {0, 1}  # both replicas enforce the shared count
    assert all(0 < float(o[2]["retry-after"]) <= 60 for o in refused)


def test_a_replica_without_the_issuer_refuses_to_rotate_keys(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    first, second = replicas
    with (
        grpc.insecure_channel(second.address) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        admin_pb2_grpc.AdminStub(channel).RotateSigningKey(
            admin_pb2.RotateSigningKeyRequest(), metadata=bearer(first.admin_token())
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not host the built-in issuer" in (caught.value.details() or "")


class _IndependentIdP:
    """A stand-in for Keycloak/Okta: its own EC key (ES256), its own claim names (`org`
    for the tenant, `scp` as a list, `azp` for the client, several audiences), served
    over plain HTTP from a thread."""

    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256", parameters={"kid": "idp-key-1"})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}/realms/llmos"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.endswith("/.well-known/openid-configuration"):
                    body: dict[str, Any] = {
                        "issuer": idp.url,
                        "jwks_uri": f"{idp.url}/protocol/openid-connect/certs",
                    }
                elif self.path.endswith("/certs"):
                    public = idp.key.as_dict(private=False)
                    body = {"keys": [{**public, "use": "sig", "alg": "ES256"}]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def token(self, typ: str = "at+jwt", **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": ["account", "llmos"],
            "sub": "f3b1c2d4-user",
            "azp": "web-portal",
            "org": "acme-corp",
            "scp": ["models:read", "inference"],
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            **overrides,
        }
        return jwt.encode({"alg": "ES256", "kid": "idp-key-1", "typ": typ}, claims, self.key)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_an_external_idp_replaces_the_built_in_issuer(
    nats_server: NatsServer,
    own_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    idp = _IndependentIdP()
    env = gateway_env(nats_server, own_redis)
    gateway = start_gateway(
        env,
        tmp_path_factory.mktemp("idp-gw") / "data",
        {"LLMOS_AUTH_ISSUER": idp.url, "LLMOS_AUTH_TENANT_CLAIM": "org"},
    )
    try:
        assert not gateway.credentials_file.exists()  # no built-in issuer, no bootstrap
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=bearer(idp.token()))
            for token, sentence in [
                (replicas[0].admin_token(), "unknown key"),  # signed by the built-in issuer
                (idp.token(aud="account"), "does not include 'llmos'"),
                (idp.token(org=None), "no 'org' claim"),
                (idp.token(typ="JWT", nonce="n-0S6"), "token is not an access token"),  # ID token
                (idp.token(org="system"), "names the 'system' tenant, which this issuer is not"),
                (idp.token(org="acme*"), "token claim 'org' is not a tenant name"),
            ]:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=bearer(token))
                assert sentence in (caught.value.details() or "")
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetSystemStatus(
                    gateway_pb2.GetSystemStatusRequest(), metadata=bearer(idp.token())
                )
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        gateway.stop()
        idp.close()


def test_tls_serves_grpc_and_oauth_and_refuses_plaintext(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data_dir = tmp_path_factory.mktemp("tls-gw") / "data"
    files = ensure_dev_tls(data_dir / "tls", ["127.0.0.1"])
    env = gateway_env(nats_server, own_redis)
    env["LLMOS_REDIS_URL"] = own_redis.url.replace("/0", "/5")
    tls = {
        "LLMOS_TLS_CERT": str(files.cert),
        "LLMOS_TLS_KEY": str(files.key),
        "LLMOS_TLS_CA": str(files.ca),
    }
    gateway = start_gateway(env, data_dir, tls)
    try:
        assert gateway.issuer.url.startswith("https://")
        assert gateway.issuer.metadata()["token_endpoint"].startswith("https://")
        with pytest.raises(OSError):  # an https issuer is not trusted without its CA
            Issuer(gateway.issuer.url).metadata()
        token = gateway.admin_token()
        with tls_channel(gateway.address, files.ca, token) as channel:
            status = gateway_pb2_grpc.GatewayStub(channel).GetSystemStatus(
                gateway_pb2.GetSystemStatusRequest(), timeout=10
            )
        (own,) = [s for s in status.services if s.instance.service == "gateway"]
        assert own.instance.tls
        assert own.state == gateway_pb2.ServiceStatus.STATE_SERVING  # its TLS health check
        with (
            grpc.insecure_channel(gateway.address) as plaintext,
            pytest.raises(grpc.RpcError) as caught,
        ):
            gateway_pb2_grpc.GatewayStub(plaintext).ListModels(
                gateway_pb2.ListModelsRequest(), metadata=bearer(token), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        gateway.stop()


# -- the limiter's arithmetic, against real Redis ------------------------------------------


def _principal(name: str) -> Principal:
    return Principal(
        subject=name, tenant=f"tenant-{name}", client_id=f"client-{name}", scopes=frozenset()
    )


async def test_admission_allows_exactly_the_limit_and_says_when_to_retry(
    own_redis: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(own_redis.url)
    admission = Admission(client, Limits(), Firewall(client, Allowlist(())))
    who = _principal(uuid.uuid4().hex[:8])
    await client.hset(
        f"llmos:auth:tenant:{who.tenant}",
        "limits",
        json.dumps({"requests_per_minute": 3, "tokens_per_minute": 0}),
    )
    for _ in range(3):
        await admission.admit(who, None)
    with pytest.raises(ResourceExhausted) as caught:
        await admission.admit(who, None)
    assert f"tenant '{who.tenant}' may use 3 requests per minute" in str(caught.value)
    assert caught.value.retry_after_s is not None and 55 <= caught.value.retry_after_s <= 60
    await client.aclose()


async def test_token_quota_admits_until_spent_then_refuses(own_redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(own_redis.url)
    admission = Admission(client, Limits(), Firewall(client, Allowlist(())))
    who, other = _principal(uuid.uuid4().hex[:8]), _principal(uuid.uuid4().hex[:8])
    for principal in (who, other):
        record = {"limits": {"requests_per_minute": 0, "tokens_per_minute": 100}}
        await client.set(f"llmos:auth:client:{principal.client_id}", json.dumps(record))
    await admission.admit(who, None)
    await admission.charge_tokens(who, 60)
    await admission.admit(who, None)  # 60 of 100 used: still room
    await admission.charge_tokens(who, 60)
    with pytest.raises(ResourceExhausted) as caught:
        await admission.admit(who, None)
    assert f"client '{who.client_id}' may use 100 model tokens per minute" in str(caught.value)
    await admission.admit(other, None)  # others are unaffected
    await client.aclose()

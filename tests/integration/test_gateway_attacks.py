"""Every way in that should not work: each refused with the right status code and a
sentence saying why, each audited, none crashing or stalling the gateway for others.
A real gateway process, real NATS and Redis; tokens forged with real keys where the
attack needs them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pyotp
import pytest
from joserfc.jwk import RSAKey

from gateway.auth.grants import WRONG_CREDENTIALS
from llmos.oauthclient import OAuthError
from llmos.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import (
    AuditTap,
    forge,
    gateway_env,
    hs256_with_public_key,
    login_from,
    unsigned,
)
from tools.devstack.gateway_process import GatewayProcess, bearer, start_gateway
from tools.devstack.infra import NatsServer, RedisServer

Forger = Callable[[GatewayProcess], str]
HOUR = 3600


@pytest.fixture(scope="module")
def gw(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway; every attack here comes from 127.0.0.1, far more often than intrusion
    detection allows, so that address is on its allowlist: these tests are about each
    refusal, test_intrusion.py about blocking the attacker."""
    gateway = start_gateway(
        gateway_env(nats_server, own_redis),
        tmp_path_factory.mktemp("gw") / "data",
        extra={"LLMOS_INTRUSION_ALLOWLIST": "127.0.0.1"},
    )
    try:
        yield gateway
    finally:
        gateway.stop()


def _revoked(gw: GatewayProcess) -> str:
    token = gw.admin_token()
    client_id, secret = gw.admin_credentials()
    gw.issuer.revoke(token, basic=(client_id, secret))
    return token


ATTACKS: list[tuple[str, Forger, grpc.StatusCode, str]] = [
    ("no token", lambda gw: "", grpc.StatusCode.UNAUTHENTICATED, "no bearer token"),
    ("malformed", lambda gw: "not-a-jwt", grpc.StatusCode.UNAUTHENTICATED, "malformed token"),
    (
        "garbage header",
        lambda gw: "%%%.e30.sig",
        grpc.StatusCode.UNAUTHENTICATED,
        "malformed token",
    ),
    (
        "expired",
        lambda gw: forge(gw, exp=int(time.time()) - HOUR, iat=int(time.time()) - 2 * HOUR),
        grpc.StatusCode.UNAUTHENTICATED,
        "token expired at",
    ),
    (
        "not yet valid",
        lambda gw: forge(gw, nbf=int(time.time()) + HOUR),
        grpc.StatusCode.UNAUTHENTICATED,
        "not valid before",
    ),
    (
        "wrong signature",
        lambda gw: forge(gw, key=RSAKey.generate_key(2048)),
        grpc.StatusCode.UNAUTHENTICATED,
        "signature is invalid",
    ),
    ("alg none", unsigned, grpc.StatusCode.UNAUTHENTICATED, "algorithm 'none' is not accepted"),
    (
        "HS256 keyed with the public key",
        hs256_with_public_key,
        grpc.StatusCode.UNAUTHENTICATED,
        "algorithm 'HS256' is not accepted",
    ),
    (
        "unknown kid",
        lambda gw: forge(gw, key=RSAKey.generate_key(2048), kid="made-up-key"),
        grpc.StatusCode.UNAUTHENTICATED,
        "unknown key",
    ),
    (
        "wrong issuer",
        lambda gw: forge(gw, iss="https://evil.example"),
        grpc.StatusCode.UNAUTHENTICATED,
        "issuer 'https://evil.example' is not trusted",
    ),
    (
        "wrong audience",
        lambda gw: forge(gw, aud="some-other-api"),
        grpc.StatusCode.UNAUTHENTICATED,
        "audience 'some-other-api' does not include 'llmos'",
    ),
    (
        "ID token (typ JWT)",
        lambda gw: forge(
            gw, typ="JWT", aud=["llmos", "llmos-cli"], azp="llmos-cli", nonce="n-0S6", at_hash="x"
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "token is not an access token (header typ 'JWT'; RFC 9068 requires 'at+jwt')",
    ),
    ("revoked", _revoked, grpc.StatusCode.UNAUTHENTICATED, "token has been revoked"),
    (
        "missing scope",
        lambda gw: gw.admin_token(scope="datasets"),
        grpc.StatusCode.PERMISSION_DENIED,
        "needs scope 'models:read'",
    ),
    (
        "no tenant",
        lambda gw: forge(gw, tenant=None),
        grpc.StatusCode.PERMISSION_DENIED,
        "no 'tenant' claim",
    ),
    (
        "tenant that is a pattern",
        lambda gw: forge(gw, tenant="x*"),
        grpc.StatusCode.PERMISSION_DENIED,
        "token claim 'tenant' is not a tenant name",
    ),
]


@pytest.mark.parametrize(
    ("attack", "forger", "code", "sentence"), ATTACKS, ids=[a[0] for a in ATTACKS]
)
async def test_bad_tokens_are_refused_explained_and_audited(
    gw: GatewayProcess,
    nats_server: NatsServer,
    attack: str,
    forger: Forger,
    code: grpc.StatusCode,
    sentence: str,
) -> None:
    token = forger(gw)
    request_id = f"attack-{uuid.uuid4().hex[:12]}"
    metadata = [("x-request-id", request_id), *(bearer(token) if token else ())]
    async with AuditTap(nats_server.url) as audit:
        with grpc.insecure_channel(gw.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=metadata, timeout=10)
        assert caught.value.code() == code
        assert sentence in (caught.value.details() or "")
        record = await audit.wait_for(request_id=request_id)
    assert record.outcome == code.name
    assert record.action == "/llmos.v1.Gateway/ListModels"
    assert sentence in record.detail
    assert record.client_address.startswith("ipv4:127.0.0.1")
    assert token == "" or token not in record.SerializeToString().decode(errors="replace")


async def test_another_tenants_resources_are_out_of_reach(
    gw: GatewayProcess, nats_server: NatsServer
) -> None:
    """A tenant admin cannot list, change or delete another tenant's clients."""
    async with AuditTap(nats_server.url) as audit:
        b_client_id = _try_other_tenant(gw)
        record = await audit.wait_for(
            action="/llmos.v1.Admin/DeleteClient", resource=f"client/{b_client_id}"
        )
    assert record.outcome == "PERMISSION_DENIED"
    assert record.tenant == "tenant-a"
    assert "belongs to tenant 'tenant-b'" in record.detail


def _try_other_tenant(gw: GatewayProcess) -> str:
    """Tenant a's admin tries tenant b's objects; returns b's client id."""
    with grpc.insecure_channel(gw.address) as channel:
        root = admin_pb2_grpc.AdminStub(channel)
        system = bearer(gw.admin_token())
        for name in ("tenant-a", "tenant-b"):
            root.CreateTenant(admin_pb2.CreateTenantRequest(name=name), metadata=system)
        a_admin = root.CreateClient(
            admin_pb2.CreateClientRequest(
                tenant="tenant-a", name="a admin", scopes=["admin", "models:read"]
            ),
            metadata=system,
        )
        b_client = root.CreateClient(
            admin_pb2.CreateClientRequest(tenant="tenant-b", name="b app", scopes=["inference"]),
            metadata=system,
        ).client
        token = gw.issuer.client_credentials(a_admin.client.client_id, a_admin.client_secret)
        as_a = bearer(str(token["access_token"]))
        refusals: list[Callable[[], object]] = [
            lambda: root.DeleteClient(
                admin_pb2.DeleteClientRequest(client_id=b_client.client_id), metadata=as_a
            ),
            lambda: root.ListClients(
                admin_pb2.ListClientsRequest(tenant="tenant-b"), metadata=as_a
            ),
            lambda: root.SetQuota(
                admin_pb2.SetQuotaRequest(
                    client_id=b_client.client_id, quota=admin_pb2.Quota(requests_per_minute=1)
                ),
                metadata=as_a,
            ),
            lambda: root.CreateClient(
                admin_pb2.CreateClientRequest(tenant="tenant-b", name="x", scopes=["inference"]),
                metadata=as_a,
            ),
        ]
        for refuse in refusals:
            with pytest.raises(grpc.RpcError) as caught:
                refuse()
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "tenant 'tenant-b'" in (caught.value.details() or "")
        # escalation: tenant-a's admin cannot grant a scope it does not hold
        with pytest.raises(grpc.RpcError) as caught:
            root.CreateClient(
                admin_pb2.CreateClientRequest(name="x", scopes=["training"]), metadata=as_a
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "cannot grant scope 'training'" in (caught.value.details() or "")
        # ...and only system admins create tenants
        with pytest.raises(grpc.RpcError) as caught:
            root.CreateTenant(admin_pb2.CreateTenantRequest(name="tenant-c"), metadata=as_a)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # b's client is still there
        listed = root.ListClients(admin_pb2.ListClientsRequest(tenant="tenant-b"), metadata=system)
        assert b_client.client_id in {c.client_id for c in listed.clients}
    return str(b_client.client_id)


async def test_wrong_client_secret_is_refused_and_audited(
    gw: GatewayProcess, nats_server: NatsServer
) -> None:
    client_id, _ = gw.admin_credentials()
    async with AuditTap(nats_server.url) as audit:
        with pytest.raises(OAuthError) as caught:
            gw.issuer.client_credentials(client_id, "not-the-secret")
        record = await audit.wait_for(
            action="oauth.token", client_id=client_id, outcome="invalid_client"
        )
    assert caught.value.status == 401
    assert caught.value.error == "invalid_client"
    assert "not-the-secret" not in record.SerializeToString().decode(errors="replace")


def _new_user(gw: GatewayProcess, username: str) -> tuple[str, pyotp.TOTP]:
    password = f"pw-{uuid.uuid4().hex}"
    with grpc.insecure_channel(gw.address) as channel:
        created = admin_pb2_grpc.AdminStub(channel).CreateUser(
            admin_pb2.CreateUserRequest(
                username=username, password=password, scopes=["models:read"]
            ),
            metadata=bearer(gw.admin_token()),
        )
    return password, pyotp.TOTP(created.totp_secret)


async def test_wrong_and_replayed_totp_codes_are_refused(
    gw: GatewayProcess, nats_server: NatsServer
) -> None:
    password, totp = _new_user(gw, "totp-user")
    wrong = f"{(int(totp.now()) + 1) % 1_000_000:06d}"
    async with AuditTap(nats_server.url) as audit:
        with pytest.raises(OAuthError) as caught:
            gw.issuer.password_login("llmos-cli", "totp-user", password, wrong)
        record = await audit.wait_for(action="oauth.token", principal="totp-user")
    assert caught.value.error == "invalid_grant"
    assert caught.value.description == WRONG_CREDENTIALS
    assert record.outcome == "invalid_grant" and record.detail == WRONG_CREDENTIALS

    code = totp.now()
    token = gw.issuer.password_login("llmos-cli", "totp-user", password, code)
    assert token["refresh_token"]
    with pytest.raises(OAuthError) as caught:
        gw.issuer.password_login("llmos-cli", "totp-user", password, code)
    assert caught.value.description == WRONG_CREDENTIALS  # a replayed code: no hint either

    with pytest.raises(OAuthError) as caught:
        gw.issuer.password_login("llmos-cli", "totp-user", password, "")
    assert caught.value.error == "invalid_request"
    assert "totp" in caught.value.description


def test_a_wrong_code_is_answered_like_a_wrong_password(gw: GatewayProcess) -> None:
    """Otherwise a wrong code would confirm that a guessed password is right."""
    password, totp = _new_user(gw, "two-factor")
    wrong_code = f"{(int(totp.now()) + 1) % 1_000_000:06d}"
    answers = []
    for guess, code in [("not-the-password", totp.now()), (password, wrong_code)]:
        with pytest.raises(OAuthError) as caught:
            gw.issuer.password_login("llmos-cli", "two-factor", guess, code)
        answers.append((caught.value.status, caught.value.error, caught.value.description))
    assert answers[0] == answers[1] == (400, "invalid_grant", WRONG_CREDENTIALS)


async def test_brute_force_locks_the_account_out_of_that_address_only(
    gw: GatewayProcess, nats_server: NatsServer
) -> None:
    """Guesses from one address lock the account for that address: its owner still signs
    in from theirs, so nobody can keep someone else's account locked."""
    password, totp = _new_user(gw, "target")
    other_password, other_totp = _new_user(gw, "bystander")
    attacker = "127.0.0.2"  # the gateway listens on 127.0.0.1; all of 127/8 is loopback
    async with AuditTap(nats_server.url) as audit:
        for attempt in range(3):  # LLMOS_LOGIN_MAX_FAILURES=3 for this gateway
            status, body = login_from(gw, attacker, "target", f"guess-{attempt}", totp.now())
            assert (status, body["error_description"]) == (400, WRONG_CREDENTIALS)
        # now even the right answer is refused from there
        status, body = login_from(gw, attacker, "target", password, totp.now())
        assert status == 429
        assert "Too many failed sign-ins" in body["error_description"]
        record = await audit.wait_for(
            action="oauth.token", principal="target", outcome="invalid_grant"
        )
        assert record.detail == WRONG_CREDENTIALS
        assert record.client_address == attacker
        assert password not in record.SerializeToString().decode(errors="replace")
    # the owner signs in from their own address, and another person normally
    token = gw.issuer.password_login("llmos-cli", "target", password, totp.now())
    assert token["access_token"]
    token = gw.issuer.password_login("llmos-cli", "bystander", other_password, other_totp.now())
    assert token["access_token"]


def test_unknown_user_costs_the_same_as_a_known_one_and_is_refused(gw: GatewayProcess) -> None:
    with pytest.raises(OAuthError) as caught:
        gw.issuer.password_login("llmos-cli", "nobody-here", "whatever-password", "123456")
    assert caught.value.description == WRONG_CREDENTIALS


async def test_oversized_requests_are_refused_and_audited(
    gw: GatewayProcess, nats_server: NatsServer
) -> None:
    request_id = f"big-{uuid.uuid4().hex[:12]}"
    prompt = "x" * (5 * 1024 * 1024)  # the gateway accepts 4 MiB by default
    async with AuditTap(nats_server.url) as audit:
        with grpc.insecure_channel(
            gw.address, options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            call = stub.Generate(
                gateway_pb2.GenerateRequest(prompt=prompt),
                metadata=[("x-request-id", request_id), *bearer(gw.admin_token())],
                timeout=30,
            )
            with pytest.raises(grpc.RpcError) as caught:
                list(call)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "this server accepts at most 4194304" in (caught.value.details() or "")
        record = await audit.wait_for(request_id=request_id)
    assert record.outcome == "RESOURCE_EXHAUSTED"


def test_a_flood_of_bad_tokens_does_not_stop_good_callers(gw: GatewayProcess) -> None:
    good = bearer(gw.admin_token())
    bad_tokens = [forge(gw, key=RSAKey.generate_key(2048), kid=f"k{i}") for i in range(20)]
    with grpc.insecure_channel(gw.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        def bad(index: int) -> grpc.StatusCode:
            try:
                stub.ListModels(
                    gateway_pb2.ListModelsRequest(),
                    metadata=bearer(bad_tokens[index % len(bad_tokens)]),
                    timeout=30,
                )
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        def ok(_: int) -> bool:
            stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=good, timeout=30)
            return True

        with ThreadPoolExecutor(16) as pool:
            refused = pool.map(bad, range(200))
            served = pool.map(ok, range(50))
            assert set(refused) == {grpc.StatusCode.UNAUTHENTICATED}
            assert all(served)
    assert gw.alive()

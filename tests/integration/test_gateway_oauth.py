"""The built-in authorization server and the resource server, as clients and operators
see them: discovery, bootstrap, tokens for programs and people, refresh, revocation,
introspection, key rotation, tenancy of events, and the audit trail of every call."""

from __future__ import annotations

import asyncio
import json
import stat
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import nats
import pyotp
import pytest
import redis
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from llmos.oauthclient import OAuthError
from llmos.v1 import admin_pb2, admin_pb2_grpc, events_pb2, gateway_pb2, gateway_pb2_grpc
from tests.conftest import run_python
from tests.integration.conftest import AuditTap, gateway_env, key_files
from tools.devstack.gateway_process import GatewayProcess, bearer, start_gateway
from tools.devstack.infra import NatsServer, RedisServer


def _admin(gw: GatewayProcess, channel: grpc.Channel) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(channel)


def test_metadata_describes_the_issuer(gw: GatewayProcess) -> None:
    metadata = gw.issuer.metadata()
    issuer = gw.issuer.url
    assert metadata["issuer"] == issuer
    assert metadata["token_endpoint"] == f"{issuer}/token"
    assert metadata["jwks_uri"] == f"{issuer}/jwks"
    assert metadata["revocation_endpoint"] == f"{issuer}/revoke"
    assert metadata["introspection_endpoint"] == f"{issuer}/introspect"
    assert set(metadata["grant_types_supported"]) == {
        "client_credentials",
        "password",
        "refresh_token",
        "authorization_code",
    }
    assert metadata["authorization_endpoint"] == f"{issuer}/authorize"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert "inference" in metadata["scopes_supported"]
    assert gw.issuer.get("/.well-known/oauth-authorization-server") == metadata
    jwks = gw.issuer.get(metadata["jwks_uri"])
    assert all(key["kty"] == "RSA" and "d" not in key for key in jwks["keys"])


def test_bootstrap_credentials_are_private_and_written_once(gw: GatewayProcess) -> None:
    path = gw.credentials_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert {"client_id", "client_secret"} <= document.keys()
    for key in key_files(gw):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((gw.data_dir / "gateway" / "totp.key").stat().st_mode) == 0o600
    assert document["client_secret"] not in gw.log_path.read_text()


def test_generic_clients_discover_the_api_by_reflection_without_a_token(
    gw: GatewayProcess,
) -> None:
    with grpc.insecure_channel(gw.address) as channel:
        reflected = ProtoReflectionDescriptorDatabase(channel)
        assert {"llmos.v1.Gateway", "llmos.v1.Admin"} <= set(reflected.get_services())
        service = reflected.FindFileContainingSymbol("llmos.v1.Gateway").service
        methods = {m.name for s in service if s.name == "Gateway" for m in s.method}
    assert {"Generate", "SubscribeEvents", "GetClusterStatus"} <= methods


def test_a_program_gets_a_token_with_client_credentials(gw: GatewayProcess) -> None:
    client_id, secret = gw.admin_credentials()
    token = gw.issuer.client_credentials(client_id, secret, scope="models:read")
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "models:read"  # narrowed to what was asked
    assert "refresh_token" not in token  # programs re-authenticate instead
    assert 0 < token["expires_in"] <= 900
    with grpc.insecure_channel(gw.address) as channel:
        reply = gateway_pb2_grpc.GatewayStub(channel).ListModels(
            gateway_pb2.ListModelsRequest(), metadata=bearer(token["access_token"]), timeout=10
        )
    assert isinstance(reply, gateway_pb2.ListModelsResponse)


def test_scopes_not_granted_to_the_client_are_not_issued(gw: GatewayProcess) -> None:
    with grpc.insecure_channel(gw.address) as channel:
        created = _admin(gw, channel).CreateClient(
            admin_pb2.CreateClientRequest(name="reader", scopes=["models:read"]),
            metadata=bearer(gw.admin_token()),
        )
    token = gw.issuer.client_credentials(
        created.client.client_id, created.client_secret, scope="models:read admin"
    )
    assert token["scope"] == "models:read"
    with pytest.raises(OAuthError) as caught:
        gw.issuer.client_credentials(created.client.client_id, created.client_secret, "admin")
    assert caught.value.error == "invalid_scope"


def test_secrets_are_stored_only_hashed(gw: GatewayProcess, own_redis: RedisServer) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    with grpc.insecure_channel(gw.address) as channel:
        admin = _admin(gw, channel)
        system = bearer(gw.admin_token())
        client = admin.CreateClient(
            admin_pb2.CreateClientRequest(name="app", scopes=["inference"]), metadata=system
        )
        user = admin.CreateUser(
            admin_pb2.CreateUserRequest(username="hashed", password=password, scopes=["inference"]),
            metadata=system,
        )
    secrets_ = [client.client_secret, password, user.totp_secret, gw.admin_credentials()[1]]
    store = redis.Redis.from_url(own_redis.url)
    dump = b"".join(key + (store.dump(key) or b"") for key in store.scan_iter(match="llmos:auth:*"))
    store.close()
    for secret in secrets_:
        assert secret.encode() not in dump


def test_a_person_signs_in_with_password_and_totp_and_refreshes(gw: GatewayProcess) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    with grpc.insecure_channel(gw.address) as channel:
        created = _admin(gw, channel).CreateUser(
            admin_pb2.CreateUserRequest(
                username="carol", password=password, scopes=["models:read", "inference"]
            ),
            metadata=bearer(gw.admin_token()),
        )
    assert created.totp_uri.startswith("otpauth://totp/LLM%20OS:carol?secret=")
    totp = pyotp.TOTP(created.totp_secret)
    token = gw.issuer.password_login("llmos-cli", "carol", password, totp.now())
    assert set(token["scope"].split()) == {"models:read", "inference"}
    with grpc.insecure_channel(gw.address) as channel:
        gateway_pb2_grpc.GatewayStub(channel).ListModels(
            gateway_pb2.ListModelsRequest(), metadata=bearer(token["access_token"]), timeout=10
        )
    refreshed = gw.issuer.refresh("llmos-cli", token["refresh_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    # revoking the refresh token ends the session: its access token is refused too
    gw.issuer.revoke(refreshed["refresh_token"], client_id="llmos-cli")
    with pytest.raises(OAuthError) as caught:
        gw.issuer.refresh("llmos-cli", refreshed["refresh_token"])
    assert caught.value.error == "invalid_grant"
    _assert_refused(gw, refreshed["access_token"], "token has been revoked")


def _assert_refused(gw: GatewayProcess, access_token: str, sentence: str) -> None:
    with grpc.insecure_channel(gw.address) as channel, pytest.raises(grpc.RpcError) as caught:
        gateway_pb2_grpc.GatewayStub(channel).ListModels(
            gateway_pb2.ListModelsRequest(), metadata=bearer(access_token), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert sentence in (caught.value.details() or "")


def _signed_in(gw: GatewayProcess, username: str) -> dict[str, Any]:
    """A new person's first sign-in: the token response."""
    password = f"pw-{uuid.uuid4().hex}"
    with grpc.insecure_channel(gw.address) as channel:
        created = _admin(gw, channel).CreateUser(
            admin_pb2.CreateUserRequest(
                username=username, password=password, scopes=["models:read"]
            ),
            metadata=bearer(gw.admin_token()),
        )
    code = pyotp.TOTP(created.totp_secret).now()
    return gw.issuer.password_login("llmos-cli", username, password, code)


def test_a_reused_refresh_token_ends_the_whole_sign_in(gw: GatewayProcess) -> None:
    """Two parties hold one refresh token (one of them stole it): the server cannot tell
    which is which, so every token of that sign-in stops working, the newest included."""
    first = _signed_in(gw, "reuser")
    second = gw.issuer.refresh("llmos-cli", first["refresh_token"])
    newest = gw.issuer.refresh("llmos-cli", second["refresh_token"])
    with pytest.raises(OAuthError) as caught:
        gw.issuer.refresh("llmos-cli", first["refresh_token"])
    assert caught.value.error == "invalid_grant"
    with pytest.raises(OAuthError) as caught:
        gw.issuer.refresh("llmos-cli", newest["refresh_token"])
    assert caught.value.error == "invalid_grant"
    _assert_refused(gw, newest["access_token"], "token has been revoked")


def test_of_two_parallel_refreshes_with_one_token_exactly_one_gets_tokens(
    gw: GatewayProcess,
) -> None:
    def refresh(refresh_token: str) -> dict[str, Any] | OAuthError:
        try:
            return gw.issuer.refresh("llmos-cli", refresh_token)
        except OAuthError as exc:
            return exc

    for round_ in range(3):  # the two requests meet at a different point each round
        token = _signed_in(gw, f"racer-{round_}")
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(refresh, [token["refresh_token"]] * 2))
        granted = [a for a in answers if isinstance(a, dict)]
        refused = [a for a in answers if isinstance(a, OAuthError)]
        assert len(granted) == 1 and len(refused) == 1, answers
        assert refused[0].error == "invalid_grant"
        # the second use looks like a replay: the sign-in is over for both
        with pytest.raises(OAuthError):
            gw.issuer.refresh("llmos-cli", granted[0]["refresh_token"])


def test_a_user_created_again_under_a_deleted_name_inherits_no_session(
    gw: GatewayProcess,
) -> None:
    old = _signed_in(gw, "phoenix")
    with grpc.insecure_channel(gw.address) as channel:
        admin = _admin(gw, channel)
        system = bearer(gw.admin_token())
        admin.DeleteUser(admin_pb2.DeleteUserRequest(username="phoenix"), metadata=system)
        admin.CreateUser(
            admin_pb2.CreateUserRequest(
                username="phoenix", password=f"pw-{uuid.uuid4().hex}", scopes=["models:read"]
            ),
            metadata=system,
        )
    with pytest.raises(OAuthError) as caught:
        gw.issuer.refresh("llmos-cli", old["refresh_token"])
    assert caught.value.error == "invalid_grant"


def test_changed_scopes_and_deleted_identities_take_effect(gw: GatewayProcess) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    with grpc.insecure_channel(gw.address) as channel:
        admin = _admin(gw, channel)
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        system = bearer(gw.admin_token())
        app = admin.CreateClient(
            admin_pb2.CreateClientRequest(name="changing", scopes=["inference"]), metadata=system
        )
        user = admin.CreateUser(
            admin_pb2.CreateUserRequest(
                username="leaver", password=password, scopes=["models:read"]
            ),
            metadata=system,
        )
        admin.SetScopes(
            admin_pb2.SetScopesRequest(client_id=app.client.client_id, scopes=["models:read"]),
            metadata=system,
        )
        issued = gw.issuer.client_credentials(app.client.client_id, app.client_secret)
        assert issued["scope"] == "models:read"
        app_token = bearer(str(issued["access_token"]))
        gateway.ListModels(gateway_pb2.ListModelsRequest(), metadata=app_token)
        login = gw.issuer.password_login(
            "llmos-cli", "leaver", password, pyotp.TOTP(user.totp_secret).now()
        )
        admin.DeleteClient(
            admin_pb2.DeleteClientRequest(client_id=app.client.client_id), metadata=system
        )
        admin.DeleteUser(admin_pb2.DeleteUserRequest(username="leaver"), metadata=system)
        for token, whose in [(app_token, "client"), (bearer(login["access_token"]), "user")]:
            with pytest.raises(grpc.RpcError) as caught:
                gateway.ListModels(gateway_pb2.ListModelsRequest(), metadata=token)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert f"the {whose} this token was issued to has been deleted" in (
                caught.value.details() or ""
            )
    with pytest.raises(OAuthError):
        gw.issuer.refresh("llmos-cli", login["refresh_token"])
    with pytest.raises(OAuthError):
        gw.issuer.client_credentials(app.client.client_id, app.client_secret)


def test_introspection_reports_activity_to_whom_it_may_concern(gw: GatewayProcess) -> None:
    admin_id, admin_secret = gw.admin_credentials()
    token = gw.admin_token()
    report = gw.issuer.introspect(token, (admin_id, admin_secret))
    assert report["active"] is True
    assert report["tenant"] == "system"
    assert report["client_id"] == admin_id
    with grpc.insecure_channel(gw.address) as channel:
        other = _admin(gw, channel).CreateClient(
            admin_pb2.CreateClientRequest(name="nosy", scopes=["inference"]),
            metadata=bearer(token),
        )
    # a client without `admin` may not introspect someone else's token
    nosy = gw.issuer.introspect(token, (other.client.client_id, other.client_secret))
    assert nosy == {"active": False}
    gw.issuer.revoke(token, basic=(admin_id, admin_secret))
    assert gw.issuer.introspect(token, (admin_id, admin_secret)) == {"active": False}


def test_key_rotation_keeps_earlier_tokens_valid(gw: GatewayProcess) -> None:
    before = gw.admin_token()
    with grpc.insecure_channel(gw.address) as channel:
        admin = _admin(gw, channel)
        rotated = admin.RotateSigningKey(
            admin_pb2.RotateSigningKeyRequest(), metadata=bearer(before)
        )
        assert rotated.kid in rotated.published
        assert len(rotated.published) >= 2
        after = gw.admin_token()
        header = json.loads(
            __import__("base64").urlsafe_b64decode(after.split(".")[0] + "==").decode()
        )
        assert header["kid"] == rotated.kid
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        for token in (before, after):
            gateway.ListModels(gateway_pb2.ListModelsRequest(), metadata=bearer(token), timeout=10)


async def test_events_reach_only_their_tenant(gw: GatewayProcess, nats_server: NatsServer) -> None:
    """A tenant's subscriber sees its own events; not another tenant's, not system events."""
    with grpc.insecure_channel(gw.address) as channel:
        admin = _admin(gw, channel)
        system = bearer(gw.admin_token())
        admin.CreateTenant(admin_pb2.CreateTenantRequest(name="watchers"), metadata=system)
        created = admin.CreateClient(
            admin_pb2.CreateClientRequest(
                tenant="watchers", name="listener", scopes=["events:read"]
            ),
            metadata=system,
        )
    token = gw.issuer.client_credentials(created.client.client_id, created.client_secret)
    marker = uuid.uuid4().hex

    def subscribe(access_token: str) -> list[events_pb2.Event]:
        received: list[events_pb2.Event] = []
        with grpc.insecure_channel(gw.address) as channel:
            stream = gateway_pb2_grpc.GatewayStub(channel).SubscribeEvents(
                gateway_pb2.SubscribeEventsRequest(kinds=["job"]),
                metadata=bearer(access_token),
                timeout=4,
            )
            try:
                for event in stream:
                    if event.job_state_changed.reason == marker:
                        received.append(event)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        return received

    async def publish() -> None:
        await asyncio.sleep(1.5)
        nc = await nats.connect(nats_server.url)
        for tenant in ("watchers", "someone-else", ""):
            event = events_pb2.Event(id=uuid.uuid4().hex, source="test", tenant=tenant)
            event.job_state_changed.job_id = f"job-{tenant or 'system'}"
            event.job_state_changed.reason = marker
            await nc.publish(
                f"llmos.events.job.job-{tenant or 'system'}", event.SerializeToString()
            )
        await nc.flush()
        await nc.close()

    tenant_view, system_view, _ = await asyncio.gather(
        asyncio.to_thread(subscribe, str(token["access_token"])),
        asyncio.to_thread(subscribe, gw.admin_token()),
        publish(),
    )
    assert [e.tenant for e in tenant_view] == ["watchers"]
    assert sorted(e.tenant for e in system_view) == ["", "someone-else", "watchers"]


async def test_allowed_calls_are_audited_with_who_what_and_how(
    gw: GatewayProcess, nats_server: NatsServer
) -> None:
    request_id = f"ok-{uuid.uuid4().hex[:12]}"
    client_id, _ = gw.admin_credentials()
    async with AuditTap(nats_server.url) as audit:
        with grpc.insecure_channel(gw.address) as channel:
            _admin(gw, channel).ListTenants(
                admin_pb2.ListTenantsRequest(),
                metadata=[("x-request-id", request_id), *bearer(gw.admin_token())],
                timeout=10,
            )
        record = await audit.wait_for(request_id=request_id)
        issued = await audit.wait_for(action="oauth.token", client_id=client_id, outcome="OK")
    assert record.action == "/llmos.v1.Admin/ListTenants"
    assert record.outcome == "OK"
    assert record.principal == client_id
    assert record.client_id == client_id
    assert record.tenant == "system"
    assert record.latency_ms > 0
    assert record.source == "gateway"
    assert record.id and record.time.seconds > time.time() - 60
    assert issued.resource == "grant/client_credentials"


def test_the_clients_people_sign_in_through_cannot_be_deleted(gw: GatewayProcess) -> None:
    with grpc.insecure_channel(gw.address) as channel:
        admin = _admin(gw, channel)
        system = bearer(gw.admin_token())
        for client_id in ("llmos-cli", "llmos-console"):
            with pytest.raises(grpc.RpcError) as refused:
                admin.DeleteClient(
                    admin_pb2.DeleteClientRequest(client_id=client_id), metadata=system
                )
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "is built in" in (refused.value.details() or "")
        listed = admin.ListClients(admin_pb2.ListClientsRequest(tenant="system"), metadata=system)
        assert {"llmos-cli", "llmos-console"} <= {c.client_id for c in listed.clients}


def test_bad_admin_input_names_the_field(gw: GatewayProcess) -> None:
    with grpc.insecure_channel(gw.address) as channel:
        admin = _admin(gw, channel)
        system = bearer(gw.admin_token())
        cases: list[tuple[Callable[[], object], str]] = [
            (
                lambda: admin.CreateTenant(
                    admin_pb2.CreateTenantRequest(name="Bad Name!"), metadata=system
                ),
                "name:",
            ),
            (
                lambda: admin.CreateClient(
                    admin_pb2.CreateClientRequest(name="x", scopes=["superpowers"]), metadata=system
                ),
                "scopes: unknown scope 'superpowers'",
            ),
            (
                lambda: admin.CreateUser(
                    admin_pb2.CreateUserRequest(
                        username="shorty", password="short", scopes=["inference"]
                    ),
                    metadata=system,
                ),
                "password: must be 12 to 256 characters long",
            ),
            (
                lambda: admin.SetQuota(
                    admin_pb2.SetQuotaRequest(
                        tenant="system", quota=admin_pb2.Quota(requests_per_minute=-1)
                    ),
                    metadata=system,
                ),
                "quota.requests_per_minute: must be >= 0",
            ),
        ]
        for call, sentence in cases:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert sentence in (caught.value.details() or "")
        with pytest.raises(grpc.RpcError) as caught:
            admin.CreateTenant(admin_pb2.CreateTenantRequest(name="system"), metadata=system)
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_restart_keeps_identities_keys_and_the_credentials_file(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data_dir = tmp_path_factory.mktemp("restart") / "data"
    env = gateway_env(nats_server, own_redis)
    env["LLMOS_REDIS_URL"] = own_redis.url.replace("/0", "/3")  # its own identity store
    first = start_gateway(env, data_dir)
    try:
        written = first.credentials_file.read_text()
        token = first.admin_token()
    finally:
        first.stop()
    second = start_gateway(env, data_dir, http_port=first.http_port)  # same issuer URL
    try:
        assert second.credentials_file.read_text() == written
        with grpc.insecure_channel(second.address) as channel:
            gateway_pb2_grpc.GatewayStub(channel).ListModels(
                gateway_pb2.ListModelsRequest(), metadata=bearer(token), timeout=10
            )
    finally:
        second.stop()


def test_symmetric_algorithms_are_refused_at_start(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = gateway_env(nats_server, own_redis)
    env["LLMOS_DATA_DIR"] = str(tmp_path_factory.mktemp("badcfg"))
    env["LLMOS_AUTH_ALGORITHMS"] = "RS256,HS256,none"
    result = run_python(["-m", "gateway"], env=env)
    assert result.returncode == 2
    assert "LLMOS_AUTH_ALGORITHMS: HS256, none not allowed" in result.stderr

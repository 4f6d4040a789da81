"""Intrusion detection and the firewall at the door, against a real gateway, NATS and
Redis: brute force from one address blocks that address (on HTTP and gRPC) and nobody
else, admins are told (event + audit record) and can list and lift blocks, a principal
that keeps getting denied is blocked, the allowlist is never blocked, and one address
cannot make the gateway hash secrets faster than its sign-in rate.

Connections from 127.0.0.2 and 127.0.0.3: Linux routes all of 127/8 to the loopback
device, so a client socket bound to 127.0.0.2 reaches the gateway's 127.0.0.1 and the
gateway sees it as another machine. gRPC cannot choose its source address, so its calls
from 127.0.0.2 pass through a small relay that connects from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from llmos.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import AuditTap, gateway_env
from tools.devstack.gateway_process import GatewayProcess, bearer, start_gateway
from tools.devstack.infra import NatsServer, RedisServer

ROOT = Path(__file__).resolve().parents[2]
ATTACKER = "127.0.0.2"
TRUSTED = "127.0.0.3"  # on this gateway's allowlist
THROTTLED = "127.0.0.4"
PROXY = "127.0.0.5"  # a trusted load balancer
ELSEWHERE = "127.0.0.6"  # no proxy: the header it sends means nothing
SIGNIN_RPM = 30


@pytest.fixture(scope="module")
def gw(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway with the default sign-in rule (20 failures in 300 s), principals blocked
    after 5 denials, and 127.0.0.3 allowlisted."""
    gateway = start_gateway(
        gateway_env(nats_server, own_redis),
        tmp_path_factory.mktemp("gw") / "data",
        extra={
            "LLMOS_INTRUSION_RULES": "denied=5/60",
            "LLMOS_INTRUSION_ALLOWLIST": f"{TRUSTED}/32",
            "LLMOS_SIGNIN_RPM_PER_ADDRESS": str(SIGNIN_RPM),
            "LLMOS_TRUSTED_PROXIES": PROXY,
        },
    )
    try:
        yield gateway
    finally:
        gateway.stop()


def token_from(
    gw: GatewayProcess, source: str, client_id: str, secret: str, forwarded_for: str = ""
) -> tuple[int, dict[str, str], dict[str, str]]:
    """POST /token (client credentials) from `source`: status, JSON body, headers."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", gw.http_port, timeout=30, source_address=(source, 0)
    )
    try:
        body = urllib.parse.urlencode(
            {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        )
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        connection.request("POST", "/token", body, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        connection.close()


@contextlib.asynccontextmanager
async def relay_from(source: str, target: str) -> AsyncIterator[str]:
    """A TCP relay on 127.0.0.1 whose connections reach `target` from `source`."""
    host, port = target.rsplit(":", 1)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            host, int(port), local_addr=(source, 0)
        )
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def admin(gw: GatewayProcess) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(grpc.insecure_channel(gw.address))


def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """`llmos ...` as the system admin, in its own process."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "llmos.cli",
            "--insecure",
            "--gateway",
            gw.address,
            "--token",
            gw.admin_token(),
            *args,
        ],
        env=gw.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_brute_force_blocks_the_address_and_only_it(
    gw: GatewayProcess, nats_server: NatsServer
) -> None:
    client_id, secret = gw.admin_credentials()
    admin_token = gw.admin_token()
    with grpc.insecure_channel(gw.address) as channel:
        events = gateway_pb2_grpc.GatewayStub(channel).SubscribeEvents(
            gateway_pb2.SubscribeEventsRequest(kinds=["security"]),
            metadata=bearer(admin_token),
            timeout=120,
        )
        async with AuditTap(nats_server.url) as audit:
            answers = [
                await asyncio.to_thread(token_from, gw, ATTACKER, client_id, f"guess-{n}")
                for n in range(40)
            ]
            record = await audit.wait_for(action="intrusion.block")
        event = await asyncio.to_thread(next, events)
        events.cancel()

    # the first twenty were wrong secrets; then the door shut, before any hashing
    assert [status for status, _, _ in answers[:20]] == [401] * 20
    assert {status for status, _, _ in answers[20:]} == {403}
    assert "address 127.0.0.2 is blocked until" in answers[-1][1]["error_description"]
    assert int(answers[-1][2]["Retry-After"]) > 0

    # the right secret from the attacker's address is refused with the block's sentence
    status, body, _ = token_from(gw, ATTACKER, client_id, secret)
    assert status == 403
    assert body["error"] == "access_denied"
    assert "20 failed sign-ins or token requests within 300 s" in body["error_description"]

    # ... and so is gRPC from there, even with a valid token
    async with (
        relay_from(ATTACKER, gw.address) as relayed,
        grpc.aio.insecure_channel(relayed) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway_pb2_grpc.GatewayStub(channel).ListModels(
                gateway_pb2.ListModelsRequest(), metadata=bearer(admin_token), timeout=30
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "address 127.0.0.2 is blocked until" in (caught.value.details() or "")

    # the same client from another address is not affected
    status, body, _ = token_from(gw, "127.0.0.1", client_id, secret)
    assert status == 200 and body["access_token"]

    # admins were told: an event and an audit record naming the address
    assert event.intrusion.address == ATTACKER
    assert event.intrusion.signal == "signin_failed"
    assert event.intrusion.count == 20
    assert event.tenant == ""  # a system event: system admins only
    assert record.resource == f"address/{ATTACKER}" and record.outcome == "BLOCKED"

    # `llmos admin blocks list` shows it; `unblock` lifts it
    listed = cli(gw, "admin", "blocks", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    blocks = json.loads(listed.stdout)["blocks"]
    assert [b["target"] for b in blocks] == [{"address": ATTACKER}]
    assert blocks[0]["blocked_by"] == "intrusion-detection"
    lifted = cli(gw, "admin", "blocks", "unblock", "--address", ATTACKER)
    assert lifted.returncode == 0, lifted.stderr
    status, body, _ = token_from(gw, ATTACKER, client_id, secret)
    assert status == 200 and body["access_token"]
    again = cli(gw, "admin", "blocks", "unblock", "--address", ATTACKER)
    assert again.returncode == 2 and "was not blocked" in again.stderr


def test_the_allowlist_is_never_blocked(gw: GatewayProcess) -> None:
    client_id, secret = gw.admin_credentials()
    for n in range(25):  # more than the 20 that block anyone else
        assert token_from(gw, TRUSTED, client_id, f"guess-{n}")[0] == 401
    assert token_from(gw, TRUSTED, client_id, secret)[0] == 200
    with pytest.raises(grpc.RpcError) as caught:
        admin(gw).Block(
            admin_pb2.BlockRequest(target=admin_pb2.BlockTarget(address=TRUSTED)),
            metadata=bearer(gw.admin_token()),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "allowlist" in (caught.value.details() or "")


def test_one_address_cannot_make_the_gateway_hash_faster_than_its_rate(
    gw: GatewayProcess,
) -> None:
    client_id, secret = gw.admin_credentials()
    statuses = [token_from(gw, THROTTLED, client_id, secret)[0] for _ in range(SIGNIN_RPM)]
    assert statuses == [200] * SIGNIN_RPM
    status, body, headers = token_from(gw, THROTTLED, client_id, secret)
    assert status == 429
    assert f"at most {SIGNIN_RPM} per minute" in body["error_description"]
    assert int(headers["Retry-After"]) > 0
    assert token_from(gw, "127.0.0.1", client_id, secret)[0] == 200  # others unaffected


async def test_a_principal_that_keeps_being_denied_is_blocked_and_others_are_not(
    gw: GatewayProcess,
) -> None:
    admin_token = gw.admin_token()
    stub = admin(gw)
    made = [
        stub.CreateClient(
            admin_pb2.CreateClientRequest(name=name, scopes=["inference", "models:read"]),
            metadata=bearer(admin_token),
            timeout=30,
        )
        for name in ("prober", "neighbour")
    ]
    prober, neighbour = (
        gw.issuer.client_credentials(m.client.client_id, m.client_secret)["access_token"]
        for m in made
    )
    who = f"client:{made[0].client.client_id}"
    # the prober calls from the allowlisted address: what is blocked is the principal
    async with (
        relay_from(TRUSTED, gw.address) as relayed,
        grpc.aio.insecure_channel(relayed) as channel,
    ):
        for _ in range(5):  # this gateway blocks a principal after 5 denials
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await admin_pb2_grpc.AdminStub(channel).ListTenants(
                    admin_pb2.ListTenantsRequest(), metadata=bearer(prober), timeout=30
                )
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "needs scope 'admin'" in (caught.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway_pb2_grpc.GatewayStub(channel).ListModels(
                gateway_pb2.ListModelsRequest(), metadata=bearer(prober), timeout=30
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"principal {who} is blocked until" in (caught.value.details() or "")

    with grpc.insecure_channel(gw.address) as plain:
        models = gateway_pb2_grpc.GatewayStub(plain)
        models.ListModels(gateway_pb2.ListModelsRequest(), metadata=bearer(neighbour), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:  # blocked from every address
            models.ListModels(gateway_pb2.ListModelsRequest(), metadata=bearer(prober), timeout=30)
        assert f"principal {who} is blocked" in (refused.value.details() or "")
        # ... and gets no new token either
        status, body, _ = token_from(
            gw, "127.0.0.1", made[0].client.client_id, made[0].client_secret
        )
        assert status == 403 and f"principal {who} is blocked" in body["error_description"]
        lifted = stub.Unblock(
            admin_pb2.UnblockRequest(target=admin_pb2.BlockTarget(principal=who)),
            metadata=bearer(admin_token),
            timeout=30,
        )
        assert lifted.removed
        models.ListModels(gateway_pb2.ListModelsRequest(), metadata=bearer(prober), timeout=30)


def test_blocks_are_for_system_admins_and_checked(gw: GatewayProcess) -> None:
    admin_token = gw.admin_token()
    stub = admin(gw)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Block(
            admin_pb2.BlockRequest(target=admin_pb2.BlockTarget(address="not-an-ip")),
            metadata=bearer(admin_token),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "target.address" in (caught.value.details() or "")
    stub.CreateTenant(
        admin_pb2.CreateTenantRequest(name="blockless"), metadata=bearer(admin_token), timeout=30
    )
    made = stub.CreateClient(
        admin_pb2.CreateClientRequest(tenant="blockless", name="tenant-admin", scopes=["admin"]),
        metadata=bearer(admin_token),
        timeout=30,
    )
    tenant_admin = gw.issuer.client_credentials(made.client.client_id, made.client_secret)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListBlocks(
            admin_pb2.ListBlocksRequest(),
            metadata=bearer(tenant_admin["access_token"]),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only admins of tenant 'system'" in (caught.value.details() or "")


def test_behind_a_trusted_proxy_the_client_is_blocked_not_the_proxy(gw: GatewayProcess) -> None:
    client_id, secret = gw.admin_credentials()
    attacker, neighbour = "198.51.100.7", "198.51.100.8"
    for n in range(20):
        status, _, _ = token_from(gw, PROXY, client_id, f"guess-{n}", forwarded_for=attacker)
        assert status == 401
    status, body, _ = token_from(gw, PROXY, client_id, secret, forwarded_for=attacker)
    assert status == 403 and f"address {attacker} is blocked" in body["error_description"]
    # the proxy itself, and the other clients behind it, are not blocked
    assert token_from(gw, PROXY, client_id, secret, forwarded_for=neighbour)[0] == 200
    assert token_from(gw, PROXY, client_id, secret)[0] == 200
    # a caller that is no trusted proxy cannot pass itself off as the blocked client
    assert token_from(gw, ELSEWHERE, client_id, secret, forwarded_for=attacker)[0] == 200


def _page(
    gw: GatewayProcess, source: str, method: str, path: str, form: dict[str, str] | None = None,
    cookie: str = "",
) -> tuple[int, str, dict[str, str]]:  # fmt: skip
    """A browser's request from `source`: status, page, headers."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", gw.http_port, timeout=30, source_address=(source, 0)
    )
    try:
        headers = {"Cookie": cookie} if cookie else {}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        return response.status, response.read().decode(), dict(response.getheaders())
    finally:
        connection.close()


def _sign_in_form(gw: GatewayProcess, source: str) -> tuple[dict[str, str], str]:
    """The console's sign-in form as `source` gets it: its fields (for user "someone")
    and the cookie that goes with its CSRF token."""
    query = urllib.parse.urlencode({
        "response_type": "code", "client_id": "llmos-console", "scope": "inference",
        "redirect_uri": f"http://127.0.0.1:{gw.http_port}/console/callback", "state": "s",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    })  # fmt: skip
    status, page, headers = _page(gw, source, "GET", f"/authorize?{query}")
    assert status == 200, page
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    cookie = headers["Set-Cookie"].split(";")[0]
    return dict(urllib.parse.parse_qsl(query), csrf_token=csrf[1], username="someone"), cookie


def test_guessing_passwords_on_the_sign_in_page_blocks_the_address_from_the_console(
    gw: GatewayProcess,
) -> None:
    guesser = "127.0.0.7"
    form, cookie = _sign_in_form(gw, guesser)
    guesses = [{**form, "password": f"guess-{n}", "totp": "1"} for n in range(21)]
    answers = [_page(gw, guesser, "POST", "/authorize", guess, cookie) for guess in guesses]
    # wrong answers, then the account locked for this address, then the address blocked
    statuses = [status for status, _, _ in answers]
    locked = statuses.index(429)
    assert statuses == [400] * locked + [429] * (20 - locked) + [403], statuses
    assert "Wrong user name, password or one-time code." in answers[0][1]
    assert "Too many failed sign-ins for this account" in answers[locked][1]
    # the console refuses that address too, with a page saying why and until when
    status, page, headers = _page(gw, guesser, "GET", "/console/")
    assert status == 403 and "text/html" in headers["Content-Type"]
    assert "address 127.0.0.7 is blocked until" in page
    assert int(headers["Retry-After"]) > 0
    assert _page(gw, "127.0.0.1", "GET", "/console/")[0] == 302  # nobody else is

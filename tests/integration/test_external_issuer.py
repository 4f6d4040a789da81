"""Tokens of an external IdP, as the gateway's verifier judges them: the real verifier
fetching a real JWKS over HTTP (a small in-process server standing in for the IdP), and
tokens signed with the IdP's key. An IdP's tenant claim may come from a field its users
can edit, so it must be a tenant name, and never the operators' `system` tenant unless
the operator trusts that IdP with it."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.auth.principal import Principal
from gateway.auth.verifier import TokenVerifier, VerifierSettings
from llmos.errors import PermissionDenied, Unauthenticated
from llmos.ports import free_port

ISSUER = "https://idp.example"
KEY = RSAKey.generate_key(2048, parameters={"kid": "idp-key"})


@pytest.fixture(scope="module")
async def jwks_url() -> AsyncIterator[str]:
    """The IdP's published keys."""

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response({"keys": [KEY.as_dict(private=False)]})

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/jwks"
    finally:
        await runner.cleanup()


async def _verify(
    jwks_url: str,
    tenant: str,
    trust_system_tenant: bool = False,
    typ: str = "at+jwt",
    accepted_types: tuple[str, ...] = (),
    **more_claims: str,
) -> Principal:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": "llmos",
        "sub": "someone",
        "tenant": tenant,
        "scope": "models:read admin",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        **more_claims,
    }
    token = jwt.encode({"alg": "RS256", "kid": "idp-key", "typ": typ}, claims, KEY)
    settings = VerifierSettings(
        issuer=ISSUER,
        audience="llmos",
        algorithms=("RS256",),
        leeway_s=30,
        tenant_claim="tenant",
        trust_system_tenant=trust_system_tenant,
        extra_token_types=accepted_types,
        jwks_url=jwks_url,
    )
    verifier = TokenVerifier(settings, None)
    try:
        return await verifier.verify(token)
    finally:
        await verifier.close()


async def test_a_tenant_from_the_idp_is_accepted(jwks_url: str) -> None:
    principal = await _verify(jwks_url, "lab-a")
    assert principal.tenant == "lab-a" and not principal.is_system_admin


async def test_the_system_tenant_from_an_untrusted_idp_is_refused(jwks_url: str) -> None:
    with pytest.raises(PermissionDenied, match="names the 'system' tenant, which this issuer is"):
        await _verify(jwks_url, "system")


async def test_the_system_tenant_is_accepted_from_an_idp_the_operator_trusts_with_it(
    jwks_url: str,
) -> None:
    principal = await _verify(jwks_url, "system", trust_system_tenant=True)
    assert principal.is_system_admin


@pytest.mark.parametrize("tenant", ["x*", "Lab A", "a" * 64, "lab%"])
async def test_a_tenant_claim_that_is_no_tenant_name_is_refused(jwks_url: str, tenant: str) -> None:
    with pytest.raises(PermissionDenied, match="token claim 'tenant' is not a tenant name"):
        await _verify(jwks_url, tenant)


async def test_an_id_token_of_the_idp_is_not_an_access_token(jwks_url: str) -> None:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": "llmos",
        "sub": "someone",
        "tenant": "lab-a",
        "nonce": "n-0S6_WzA2Mj",
        "at_hash": "77QmUPtjPfzWtF2AnpK9RQ",
        "iat": now,
        "exp": now + 300,
    }
    token = jwt.encode({"alg": "RS256", "kid": "idp-key", "typ": "JWT"}, claims, KEY)
    settings = VerifierSettings(ISSUER, "llmos", ("RS256",), 30, "tenant", jwks_url=jwks_url)
    verifier = TokenVerifier(settings, None)
    try:
        with pytest.raises(Unauthenticated, match="token is not an access token"):
            await verifier.verify(token)
    finally:
        await verifier.close()


async def test_an_idp_typing_access_tokens_jwt_is_accepted_once_the_operator_says_so(
    jwks_url: str,
) -> None:
    with pytest.raises(Unauthenticated, match="token is not an access token"):
        await _verify(jwks_url, "lab-a", typ="JWT")
    principal = await _verify(jwks_url, "lab-a", typ="JWT", accepted_types=("jwt",))
    assert principal.tenant == "lab-a"


async def test_its_id_tokens_are_still_refused_then(jwks_url: str) -> None:
    with pytest.raises(Unauthenticated, match="token is an ID token \\(it carries 'nonce'\\)"):
        await _verify(jwks_url, "lab-a", typ="JWT", accepted_types=("jwt",), nonce="n-0S6")

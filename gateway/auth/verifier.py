"""The resource server's half of OAuth: is this bearer token good, and whose is it?

Works against any issuer that publishes RFC 8414 / OpenID metadata and a JWKS, so a
real IdP (Keycloak, Auth0, Okta) can replace the built-in server by configuration. Only
access tokens in the RFC 9068 profile are accepted (header `typ: at+jwt`): an ID token,
signed by the same issuer, is proof of a sign-in to some client, not a grant to call this
API. A tenant claim must be a tenant name, and `system` (the operators' tenant) is believed
only from the built-in issuer unless configured otherwise.
Keys are cached and refetched when a token names an unknown `kid` (at most once per
`refetch_interval_s`, so forged kids cannot make the gateway hammer the issuer).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet

from gateway.auth.identities import TENANT_NAME
from gateway.auth.principal import Principal
from gateway.auth.scopes import SYSTEM_TENANT
from llmos.errors import PermissionDenied, Unauthenticated, Unavailable

#: Algorithms a verifier may ever be configured with: asymmetric only, so the key a
#: verifier holds can never mint tokens (and "none" is never an algorithm).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
CACHE_SIZE = 10_000
#: The `typ` header values of an RFC 9068 access token (section 2.1).
ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
#: claims only an OpenID Connect ID token carries: a token with any of them is refused
#: even where the operator accepts access tokens typed `JWT` (Keycloak, Entra ID)
ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash")
#: how `LLMOS_AUTH_TOKEN_TYPES` names a token with no `typ` header (Okta's)
NO_TYP = "none"


class StaleToken(Unauthenticated):
    """A genuine token that is no longer good: expired, revoked, or of a deleted identity.
    Clients meet these in the normal course of things (and then refresh), so intrusion
    detection does not count them, unlike forged or malformed tokens."""


@dataclass(frozen=True)
class VerifierSettings:
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    leeway_s: float
    tenant_claim: str
    #: whether the issuer may name the `system` tenant (whose admins manage every tenant):
    #: the built-in issuer, or an external one the operator said so of
    trust_system_tenant: bool = False
    #: `typ` headers accepted besides RFC 9068's `at+jwt` (lower case; `none`: no header)
    extra_token_types: tuple[str, ...] = ()
    jwks_url: str = ""  # empty: discovered from the issuer's metadata
    jwks_ttl_s: float = 300.0
    refetch_interval_s: float = 1.0


class TokenVerifier:
    """Validates bearer tokens: signature, algorithm, time, issuer, audience, revocation."""

    def __init__(self, settings: VerifierSettings, ssl_context: ssl.SSLContext | None) -> None:
        self._s = settings
        self._ssl = ssl_context
        self._keys: KeySet | None = None
        self._kids: set[str] = set()
        self._fetched_at = 0.0
        self._fetch_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._verified: OrderedDict[str, Principal] = OrderedDict()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def verify(self, token: str) -> Principal:
        """The principal behind `token`; Unauthenticated with the reason otherwise.
        (Revocation is checked at admission, in the same Redis round trip as the limits.)"""
        principal = self._verified.get(token)
        if principal is None:
            principal = await self._verify_signed(token)
            self._remember(token, principal)
        if time.time() > principal.expires_at + self._s.leeway_s:
            raise StaleToken(f"token expired at {_iso(principal.expires_at)}")
        return principal

    async def _verify_signed(self, token: str) -> Principal:
        header = _header(token)
        alg = header.get("alg")
        if alg not in self._s.algorithms:
            raise Unauthenticated(
                f"token algorithm {alg!r} is not accepted; allowed: {', '.join(self._s.algorithms)}"
            )
        typ = header.get("typ")
        typ_word = typ.lower() if isinstance(typ, str) else NO_TYP if typ is None else ""
        rfc9068 = typ_word in ACCESS_TOKEN_TYPES
        if not rfc9068 and (not typ_word or typ_word not in self._s.extra_token_types):
            raise Unauthenticated(
                f"token is not an access token (header typ {typ!r}; RFC 9068 requires "
                "'at+jwt'): ID tokens and other JWTs are not accepted"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("token header has no 'kid' naming its signing key")
        keys = await self._keys_with(kid)
        try:
            claims = jwt.decode(token, keys, algorithms=[alg]).claims
        except BadSignatureError:
            raise Unauthenticated("token signature is invalid") from None
        except (JoseError, ValueError) as exc:
            raise Unauthenticated(f"malformed token: {exc}") from None
        id_claims = [name for name in ID_TOKEN_CLAIMS if name in claims]
        if id_claims:
            raise Unauthenticated(
                f"token is an ID token (it carries {id_claims[0]!r}), not an access token"
            )
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        now = time.time()
        leeway = self._s.leeway_s
        if claims.get("iss") != self._s.issuer:
            raise Unauthenticated(
                f"token issuer {claims.get('iss')!r} is not trusted (expected {self._s.issuer!r})"
            )
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self._s.audience not in audiences:
            raise Unauthenticated(
                f"token audience {audience!r} does not include {self._s.audience!r}"
            )
        exp = _number(claims, "exp", required=True)
        if now > exp + leeway:
            raise StaleToken(f"token expired at {_iso(exp)}")
        nbf = _number(claims, "nbf", required=False)
        if nbf and now + leeway < nbf:
            raise Unauthenticated(f"token is not valid before {_iso(nbf)}")
        tenant = self._tenant(claims)
        scope = claims.get("scope", claims.get("scp", ""))
        scopes = scope.split() if isinstance(scope, str) else [str(s) for s in scope or ()]
        subject = str(claims.get("sub", ""))
        return Principal(
            subject=subject,
            tenant=tenant,
            client_id=str(claims.get("client_id", claims.get("azp", subject))),
            scopes=frozenset(scopes),
            token_id=str(claims.get("jti", "")),
            expires_at=exp,
            is_user="amr" in claims,
        )

    def _tenant(self, claims: dict[str, Any]) -> str:
        """The tenant claim, if it names a tenant this issuer may name."""
        name = self._s.tenant_claim
        tenant = claims.get(name)
        if not isinstance(tenant, str) or not tenant:
            raise PermissionDenied(
                f"token has no {name!r} claim; every principal must belong to a tenant"
            )
        if not TENANT_NAME.match(tenant):
            raise PermissionDenied(
                f"token claim {name!r} is not a tenant name (1-63 lowercase letters, digits or '-')"
            )
        if tenant == SYSTEM_TENANT and not self._s.trust_system_tenant:
            raise PermissionDenied(
                f"token claim {name!r} names the {SYSTEM_TENANT!r} tenant, which this issuer is "
                "not trusted to grant (LLMOS_AUTH_ISSUER_MAY_GRANT_SYSTEM)"
            )
        return tenant

    def _remember(self, token: str, principal: Principal) -> None:
        self._verified[token] = principal
        if len(self._verified) > CACHE_SIZE:
            self._verified.popitem(last=False)

    # -- keys ------------------------------------------------------------------------------

    async def _keys_with(self, kid: str) -> KeySet:
        """The key set, refetched if it is stale or lacks `kid`. Refetches happen at most
        once per `refetch_interval_s`: a request naming an unknown kid waits for the next
        allowed fetch (shared by every waiter), so forged kids cost one fetch per interval."""
        stale = time.monotonic() - self._fetched_at > self._s.jwks_ttl_s
        if self._keys is None or stale or kid not in self._kids:
            asked_at = time.monotonic()
            async with self._fetch_lock:
                if self._fetched_at < asked_at and (
                    self._keys is None or stale or kid not in self._kids
                ):
                    wait = self._fetched_at + self._s.refetch_interval_s - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await self._fetch()
        if self._keys is None or kid not in self._kids:
            raise Unauthenticated(f"token is signed by an unknown key (kid {kid[:64]!r})")
        return self._keys

    async def _fetch(self) -> None:
        url = self._s.jwks_url or (await self._get_json(_metadata_url(self._s.issuer)))["jwks_uri"]
        document = await self._get_json(str(url))
        keys = [k for k in document.get("keys", []) if k.get("use", "sig") == "sig"]
        self._keys = KeySet.import_key_set({"keys": keys})
        self._kids = {str(k.get("kid")) for k in keys}
        self._fetched_at = time.monotonic()

    async def _get_json(self, url: str) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            async with self._session.get(url, ssl=self._ssl or True) as response:
                response.raise_for_status()
                return dict(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unavailable(f"cannot read the token issuer's keys from {url}: {exc}") from None


def _metadata_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def _header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise Unauthenticated("malformed token: a JWT has three dot-separated parts")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise Unauthenticated("malformed token: its header is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise Unauthenticated("malformed token: its header is not a JSON object")
    return header


def _number(claims: dict[str, Any], name: str, *, required: bool) -> float:
    value = claims.get(name)
    if value is None and not required:
        return 0.0
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Unauthenticated(f"token claim {name!r} is missing or not a number")
    return float(value)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="seconds")

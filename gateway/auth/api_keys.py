"""Long-lived API keys: the bearer for programs that cannot refresh tokens.

The OpenAI SDKs, LangChain and benchmark clients send one fixed `Authorization: Bearer`
for their whole life, while access tokens expire in minutes. An API key is that fixed
bearer: `sk-llmos-<key id>-<secret>`. It is scoped to one tenant and some scopes, may
expire, may carry its own rate limits, and is revoked with one command.

Only the SHA-256 of the secret is stored (256 random bits cannot be guessed, so a slow
hash would only slow every call). The key id is public: it names the key in listings,
audit records and revocation, and is the `client_id` the rate limits count under. A
revoked key leaves a marker that the admission script checks on every call
(`gateway.limits`), so it is refused on the next call by every gateway replica, even one
that verified the key a moment ago.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from gateway.auth import hashing
from gateway.auth.identities import CLIENT_NAME_MAX, PREFIX, Limits, revoked_key
from gateway.auth.principal import Principal
from gateway.auth.scopes import ADMIN
from gateway.auth.verifier import StaleToken
from llmos.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated

KEY_PREFIX = "sk-llmos-"
_KEY_ID = r"k[0-9a-f]{16}"
_KEY = re.compile(rf"^sk-llmos-({_KEY_ID})-([A-Za-z0-9_-]{{43}})$")
#: the longest an API key may live (keys that never expire are allowed: 0)
MAX_LIFETIME_S = 10 * 365 * 86400
#: a verified key is believed this long without reading its record again; revocation
#: does not wait for it (the admission script sees the revocation marker at once)
VERIFIED_FOR_S = 30.0
#: how long a revoked key is still recognised as one (refused as revoked, not counted by
#: intrusion detection as a forged bearer): programs left holding it get a month
REVOKED_MARKER_S = 30 * 86400
CACHE_SIZE = 10_000


@dataclass
class ApiKey:
    key_id: str
    tenant: str
    name: str
    scopes: list[str]
    secret_hash: str
    created_at: float
    created_by: str
    expires_at: float = 0.0  # 0: never
    limits: Limits = field(default_factory=Limits)

    def principal(self) -> Principal:
        """Who a call bearing this key is: the key itself, in its tenant."""
        return Principal(
            subject=f"apikey:{self.key_id}",
            tenant=self.tenant,
            client_id=self.key_id,
            scopes=frozenset(self.scopes),
            token_id=self.key_id,
            expires_at=self.expires_at or float("inf"),
            api_key=True,
        )


def record_key(key_id: str) -> str:
    """Redis key of an API key's record (JSON; its `limits` are read by admission)."""
    return PREFIX + f"apikey:{key_id}"


def _tenant_keys(tenant: str) -> str:
    return PREFIX + f"apikeys:{tenant}"


def is_api_key(bearer: str) -> bool:
    """Whether a bearer is an API key (rather than an access token)."""
    return bearer.startswith(KEY_PREFIX)


def _load(raw: bytes | str) -> ApiKey:
    data = json.loads(raw)
    data["limits"] = Limits(**data["limits"])
    return ApiKey(**data)


class ApiKeyStore:
    """Creation, listing and revocation (the admin API), on the synchronous Redis client
    the identity store uses (called through `asyncio.to_thread`)."""

    def __init__(self, client: Any) -> None:
        self._r = client

    def create(
        self,
        tenant: str,
        name: str,
        scopes: list[str],
        created_by: str,
        lifetime_s: int = 0,
        limits: Limits | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its bearer (shown once, never stored)."""
        if not name.strip() or len(name) > CLIENT_NAME_MAX:
            raise InvalidArgument("name", f"must be 1 to {CLIENT_NAME_MAX} characters")
        if not scopes:
            raise InvalidArgument("scopes", "give at least one scope")
        if ADMIN in scopes:  # a bearer that never expires must not administer anything
            raise InvalidArgument(
                "scopes",
                "API keys cannot carry 'admin': administration needs a person or a client, "
                "whose tokens expire",
            )
        if not 0 <= lifetime_s <= MAX_LIFETIME_S:
            raise InvalidArgument(
                "expires_in_s", f"must be between 0 (never) and {MAX_LIFETIME_S} (ten years)"
            )
        key_id = f"k{secrets.token_hex(8)}"
        secret = secrets.token_urlsafe(32)
        now = time.time()
        key = ApiKey(
            key_id=key_id,
            tenant=tenant,
            name=name,
            scopes=scopes,
            secret_hash=hashing.hash_secret(secret),
            created_at=now,
            created_by=created_by,
            expires_at=now + lifetime_s if lifetime_s else 0.0,
            limits=limits or Limits(),
        )
        # an expiring key's record goes when revocation could no longer matter
        ttl = lifetime_s + REVOKED_MARKER_S if lifetime_s else None
        pipe = self._r.pipeline(transaction=True)
        pipe.set(record_key(key_id), json.dumps(asdict(key)), nx=True, ex=ttl)
        pipe.sadd(_tenant_keys(tenant), key_id)
        stored, _ = pipe.execute()
        if not stored:  # 64 random bits met an existing id
            raise AlreadyExists(f"API key {key_id!r} exists already; create the key again")
        return key, f"{KEY_PREFIX}{key_id}-{secret}"

    def find(self, key_id: str) -> ApiKey:
        raw = self._r.get(record_key(key_id)) if re.fullmatch(_KEY_ID, key_id) else None
        if raw is None:
            raise NotFound(f"API key {key_id!r} does not exist")
        return _load(raw)

    def keys(self, tenant: str) -> list[ApiKey]:
        """The tenant's keys, oldest first (an expired one until its record goes)."""
        found = []
        for key_id in self._r.smembers(_tenant_keys(tenant)):
            raw = self._r.get(record_key(key_id.decode()))
            if raw is None:  # expired and gone
                self._r.srem(_tenant_keys(tenant), key_id)
            else:
                found.append(_load(raw))
        return sorted(found, key=lambda k: k.created_at)

    def revoke(self, key: ApiKey) -> None:
        """The key stops working on every replica at its next call."""
        self._r.set(revoked_key(key.key_id), "1", ex=REVOKED_MARKER_S)
        self._r.delete(record_key(key.key_id))
        self._r.srem(_tenant_keys(key.tenant), key.key_id)


class ApiKeyVerifier:
    """The principal behind an API key bearer, for the guard (async Redis)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._verified: OrderedDict[str, tuple[float, ApiKey]] = OrderedDict()

    async def verify(self, bearer: str) -> Principal:
        """UNAUTHENTICATED unless `bearer` is a live key; never echoes the bearer."""
        match = _KEY.match(bearer)
        if match is None:
            raise Unauthenticated("the API key is malformed (keys look like sk-llmos-k…)")
        key_id, secret = match.groups()
        digest = hashing.hash_secret(bearer)  # the whole bearer: its id is the key's too
        cached = self._verified.get(digest)
        if cached is not None and time.monotonic() - cached[0] < VERIFIED_FOR_S:
            key = cached[1]
        else:
            raw = await self._redis.get(record_key(key_id))
            stored = _load(raw) if raw is not None else None
            if stored is None and await self._redis.exists(revoked_key(key_id)):
                # a genuine key, revoked: its holder should hear so, not be counted
                # as a forger by intrusion detection
                raise StaleToken(f"API key {key_id} has been revoked")
            if stored is None or not hashing.check_secret(secret, stored.secret_hash):
                raise Unauthenticated(f"API key {key_id} is not valid")
            key = stored
            self._verified[digest] = (time.monotonic(), key)
            if len(self._verified) > CACHE_SIZE:
                self._verified.popitem(last=False)
        if key.expires_at and time.time() > key.expires_at:
            when = datetime.fromtimestamp(key.expires_at, tz=UTC).isoformat(timespec="seconds")
            raise StaleToken(f"API key {key_id} expired at {when}")
        return key.principal()

"""Tenants, clients, users and their credentials, kept in Redis so every gateway replica
sees the same ones.

This module is synchronous on purpose: authlib's authorization server calls it from
worker threads (see `gateway.auth.server`), and async callers go through
`asyncio.to_thread`. Secrets are stored hashed; TOTP secrets, which must be read back,
are encrypted (AES-GCM) under a key kept in the data directory.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.auth import hashing
from gateway.auth.refresh_chains import RefreshChains
from llmos.errors import AlreadyExists, InvalidArgument, NotFound
from llmos.keyfiles import ensure_secret

PREFIX = "llmos:auth:"
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
CLIENT_NAME_MAX = 128
PASSWORD_MIN = 12
PASSWORD_MAX = 256
#: How many 30-second steps either side of now a TOTP code may be from (clock skew).
TOTP_WINDOW = 1
TOTP_STEP_S = 30

#: Atomically accept a TOTP time step only if it is newer than the last one accepted, so a
#: code cannot be replayed (RFC 6238 section 5.2).
_ACCEPT_TOTP_STEP = """
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


@dataclass
class Limits:
    """Requests and model tokens per minute; 0 means unlimited."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0


@dataclass
class Tenant:
    name: str
    limits: Limits = field(default_factory=Limits)
    #: may use priority class `critical` (it preempts other tenants' jobs): granted by
    #: a system admin, never by default
    critical_priority: bool = False


@dataclass
class Client:
    """An OAuth client. Public clients (the CLI) have no secret and cannot use
    client_credentials; they only carry a person's login."""

    client_id: str
    tenant: str
    name: str
    scopes: list[str]
    grant_types: list[str]
    secret_hash: str = ""
    limits: Limits = field(default_factory=Limits)
    #: where the authorization endpoint may send this client's codes; a path ("/console/
    #: callback") is on the issuer's own origin, whatever port it serves on
    redirect_uris: list[str] = field(default_factory=list)

    @property
    def is_public(self) -> bool:
        return not self.secret_hash


@dataclass
class User:
    username: str
    tenant: str
    scopes: list[str]
    password_hash: str
    totp_sealed: str
    #: who this is, beyond the name: a name deleted and created again is another person,
    #: whose refresh tokens are not the old ones' ("" for users stored before it existed)
    user_id: str = ""


def check_tenant_name(name: str, field_name: str = "tenant") -> None:
    if not TENANT_NAME.match(name):
        raise InvalidArgument(
            field_name,
            "must be 1-63 lowercase letters, digits or '-', starting with a letter or digit",
        )


def check_username(name: str, field_name: str = "username") -> None:
    if not USERNAME.match(name):
        raise InvalidArgument(field_name, "must be 1-64 letters, digits or . _ @ -")


class IdentityStore:
    """CRUD of identities plus the login-protection state (lock-out, TOTP replay)."""

    def __init__(
        self,
        client: redis.Redis,
        data_dir: Path,
        default_limits: Limits,
        token_lifetime_s: float = 3600.0,
    ) -> None:
        # redis-py's sync stubs type every reply as "value or awaitable"; this client is sync
        self._r: Any = client
        self._default_limits = default_limits
        key_text = ensure_secret(data_dir / "gateway" / "totp.key")
        self._aead = AESGCM(hashlib.sha256(key_text.encode()).digest())
        self._accept_step = self._r.register_script(_ACCEPT_TOTP_STEP)
        self.refresh_chains = RefreshChains(self._r, PREFIX)
        #: a deleted identity's tokens are refused for as long as any of them can live
        self._tombstone_s = int(token_lifetime_s) + 60

    # -- tenants -----------------------------------------------------------------------

    def create_tenant(self, name: str, limits: Limits | None = None) -> Tenant:
        check_tenant_name(name, "name")
        tenant = Tenant(name, limits or Limits(**asdict(self._default_limits)))
        if not self._r.hsetnx(
            PREFIX + f"tenant:{name}", "limits", json.dumps(asdict(tenant.limits))
        ):
            raise AlreadyExists(f"tenant {name!r} exists already")
        self._r.sadd(PREFIX + "tenants", name)
        return tenant

    def ensure_tenant(self, name: str, limits: Limits) -> None:
        """Create `name` if it is missing (bootstrap)."""
        self._r.hsetnx(PREFIX + f"tenant:{name}", "limits", json.dumps(asdict(limits)))
        self._r.sadd(PREFIX + "tenants", name)

    def tenant(self, name: str) -> Tenant:
        raw, critical = self._r.hmget(PREFIX + f"tenant:{name}", "limits", "critical")
        if raw is None:
            raise NotFound(f"tenant {name!r} does not exist")
        return Tenant(name, Limits(**json.loads(raw)), critical_priority=critical == b"1")

    def tenants(self) -> list[Tenant]:
        return [self.tenant(n.decode()) for n in sorted(self._r.smembers(PREFIX + "tenants"))]

    def set_tenant_limits(self, name: str, limits: Limits) -> None:
        self.tenant(name)
        self._r.hset(PREFIX + f"tenant:{name}", "limits", json.dumps(asdict(limits)))

    def set_critical_priority(self, name: str, granted: bool) -> Tenant:
        """Grant or withdraw the tenant's use of priority class `critical`."""
        self.tenant(name)
        self._r.hset(PREFIX + f"tenant:{name}", "critical", "1" if granted else "0")
        return self.tenant(name)

    def may_use_critical(self, name: str) -> bool:
        """Whether the tenant was granted priority class `critical`."""
        return bool(self._r.hget(PREFIX + f"tenant:{name}", "critical") == b"1")

    # -- clients -----------------------------------------------------------------------

    def create_client(
        self,
        tenant: str,
        name: str,
        scopes: list[str],
        *,
        grant_types: tuple[str, ...] = ("client_credentials",),
        public: bool = False,
        client_id: str | None = None,
        redirect_uris: tuple[str, ...] = (),
    ) -> tuple[Client, str]:
        """A new client and its secret (empty for a public client)."""
        self.tenant(tenant)
        if len(name) > CLIENT_NAME_MAX:
            raise InvalidArgument("name", f"must be at most {CLIENT_NAME_MAX} characters")
        secret = "" if public else hashing.new_client_secret()
        client = Client(
            client_id=client_id or f"c-{secrets.token_hex(8)}",
            tenant=tenant,
            name=name,
            scopes=scopes,
            grant_types=list(grant_types),
            secret_hash=hashing.hash_secret(secret) if secret else "",
            redirect_uris=list(redirect_uris),
        )
        if not self._r.set(PREFIX + f"client:{client.client_id}", _dump(client), nx=True):
            raise AlreadyExists(f"client {client.client_id!r} exists already")
        self._r.sadd(PREFIX + f"clients:{tenant}", client.client_id)
        return client, secret

    def find_client(self, client_id: str) -> Client | None:
        raw = self._r.get(PREFIX + f"client:{client_id}") if client_id else None
        if raw is None:
            return None
        data = json.loads(raw)
        data["limits"] = Limits(**data["limits"])
        return Client(**data)

    def client(self, client_id: str) -> Client:
        found = self.find_client(client_id)
        if found is None:
            raise NotFound(f"client {client_id!r} does not exist")
        return found

    def clients(self, tenant: str) -> list[Client]:
        ids = sorted(i.decode() for i in self._r.smembers(PREFIX + f"clients:{tenant}"))
        return [c for c in (self.find_client(i) for i in ids) if c is not None]

    def set_client_limits(self, client_id: str, limits: Limits) -> Client:
        client = self.client(client_id)
        client.limits = limits
        self._r.set(PREFIX + f"client:{client_id}", _dump(client))
        return client

    def delete_client(self, client_id: str) -> None:
        client = self.client(client_id)
        self._r.set(deleted_key("client", client_id), "1", ex=self._tombstone_s)
        self._r.delete(PREFIX + f"client:{client_id}")
        self._r.srem(PREFIX + f"clients:{client.tenant}", client_id)

    def set_client_scopes(self, client_id: str, scopes: list[str]) -> None:
        client = self.client(client_id)
        client.scopes = scopes
        self._r.set(PREFIX + f"client:{client_id}", _dump(client))

    # -- users -------------------------------------------------------------------------

    def create_user(
        self, tenant: str, username: str, password: str, scopes: list[str]
    ) -> tuple[User, str]:
        """A new person and their TOTP secret (base32, shown once)."""
        self.tenant(tenant)
        check_username(username)
        if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
            raise InvalidArgument(
                "password", f"must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long"
            )
        totp_secret = pyotp.random_base32()
        user = User(
            username=username,
            tenant=tenant,
            scopes=scopes,
            password_hash=hashing.hash_password(password),
            totp_sealed=self._seal(totp_secret),
            user_id=secrets.token_hex(12),
        )
        if not self._r.set(PREFIX + f"user:{username}", _dump(user), nx=True):
            raise AlreadyExists(f"user {username!r} exists already")
        self._r.sadd(PREFIX + f"users:{tenant}", username)
        return user, totp_secret

    def find_user(self, username: str) -> User | None:
        raw = self._r.get(PREFIX + f"user:{username}") if USERNAME.match(username) else None
        return User(**json.loads(raw)) if raw is not None else None

    def user(self, username: str) -> User:
        found = self.find_user(username)
        if found is None:
            raise NotFound(f"user {username!r} does not exist")
        return found

    def users(self, tenant: str) -> list[User]:
        names = sorted(n.decode() for n in self._r.smembers(PREFIX + f"users:{tenant}"))
        return [u for u in (self.find_user(n) for n in names) if u is not None]

    def delete_user(self, username: str) -> None:
        user = self.user(username)
        self._r.set(deleted_key("user", username), "1", ex=self._tombstone_s)
        self._r.delete(PREFIX + f"user:{username}", PREFIX + f"totp-step:{username}")
        self._r.srem(PREFIX + f"users:{user.tenant}", username)
        self.refresh_chains.revoke_user(username)

    def set_user_scopes(self, username: str, scopes: list[str]) -> None:
        user = self.user(username)
        user.scopes = scopes
        self._r.set(PREFIX + f"user:{username}", _dump(user))

    def accept_totp(self, user: User, code: str, now: float | None = None) -> bool:
        """True once per valid code: a code already used (or an older one) is refused."""
        totp = pyotp.TOTP(self._open(user.totp_sealed), interval=TOTP_STEP_S)
        current = totp.timecode(time.time() if now is None else now)
        for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
            if secrets.compare_digest(totp.generate_otp(step), code.strip()):
                ttl = TOTP_STEP_S * (2 * TOTP_WINDOW + 2)
                return bool(
                    self._accept_step(
                        keys=[PREFIX + f"totp-step:{user.username}"], args=[step, ttl]
                    )
                )
        return False

    # -- brute-force protection ----------------------------------------------------------
    # Failures are counted per account *and* client address: someone guessing (or locking
    # out) an account from their addresses does not lock its owner out of theirs. Blocking
    # addresses that try many accounts is the gateway's intrusion detection's part.

    def lockout_remaining_s(self, username: str, remote: str, max_failures: int) -> int:
        """Seconds until `username` may try again from `remote`; 0 if not locked out."""
        key = _failures_key(username, remote)
        failures = int(self._r.get(key) or 0)
        return max(int(self._r.ttl(key)), 1) if failures >= max_failures else 0

    def record_failure(
        self, username: str, remote: str, max_failures: int, window_s: int, lockout_s: int
    ) -> None:
        """Count a failed login; the `max_failures`-th within `window_s` from one address
        locks the account for that address."""
        key = _failures_key(username, remote)
        failures = int(self._r.incr(key))
        self._r.expire(key, lockout_s if failures >= max_failures else window_s)

    def clear_failures(self, username: str, remote: str) -> None:
        self._r.delete(_failures_key(username, remote))

    # -- tokens ------------------------------------------------------------------------

    def revoke_access(self, jti: str, expires_at: float) -> None:
        """Remember a revoked access token until it would have expired anyway."""
        ttl = max(int(expires_at - time.time()) + 60, 1)
        self._r.set(revoked_key(jti), "1", ex=ttl)

    def is_revoked(self, jti: str) -> bool:
        return bool(jti) and bool(self._r.exists(revoked_key(jti)))

    def save_authorization_code(self, code: str, grant: str, ttl_s: int) -> None:
        """Keep an authorization code's grant (JSON) for `ttl_s`, under the code's hash."""
        self._r.set(_code_key(code), grant, ex=ttl_s)

    def take_authorization_code(self, code: str) -> str | None:
        """The code's grant, removed in the same step: a code is redeemed at most once,
        by whichever of two racing requests comes first."""
        raw = self._r.getdel(_code_key(code))
        return raw.decode() if isinstance(raw, bytes) else raw

    def claim_bootstrap(self) -> bool:
        """True for exactly one gateway ever (per Redis): the one that creates the admin."""
        return bool(self._r.set(PREFIX + "bootstrapped", str(time.time()), nx=True))

    # -- sealing -----------------------------------------------------------------------

    def _seal(self, secret: str) -> str:
        nonce = secrets.token_bytes(12)
        return (nonce + self._aead.encrypt(nonce, secret.encode(), b"totp")).hex()

    def _open(self, sealed: str) -> str:
        raw = bytes.fromhex(sealed)
        return self._aead.decrypt(raw[:12], raw[12:], b"totp").decode()


def _failures_key(username: str, remote: str) -> str:
    return PREFIX + f"login-failures:{username}:{remote or 'unknown'}"


def _code_key(code: str) -> str:
    return PREFIX + f"code:{hashlib.sha256(code.encode()).hexdigest()}"


def deleted_key(kind: str, name: str) -> str:
    """Redis key marking a deleted client or user whose tokens may still be in circulation."""
    return PREFIX + f"deleted:{kind}:{name}"


def revoked_key(jti: str) -> str:
    """Redis key marking an access token id as revoked (read by every resource server)."""
    return PREFIX + f"revoked:{jti}"


def _dump(obj: Any) -> str:
    return json.dumps(asdict(obj))

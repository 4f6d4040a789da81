"""A person's sign-in session as a chain of refresh tokens (RFC 9700 section 4.14.2).

Every sign-in starts a chain; each refresh spends the presented token and adds its
successor (and the access token issued with it) to the same chain, in one atomic step, so
of two refreshes racing with one token exactly one is answered with tokens. A spent token
presented again means two parties hold it (a stolen token, or a client that lost track):
the whole chain is revoked, its refresh tokens deleted and its access tokens remembered as
revoked by `jti`, so whoever holds the newest token is signed out too. Deleting a user
revokes all of their chains.

Tokens are stored as hashes only. Synchronous, like the identity store that owns it: the
authorization server calls it from worker threads.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from gateway.auth import hashing

#: Revoke a chain: delete its refresh tokens and mark its access tokens revoked (the
#: keys `identities.revoked_key` names) until they would have expired anyway.
_REVOKE = """
local function revoke(chain, now, prefix, access)
  local fields = redis.call('HGETALL', chain)
  for i = 1, #fields, 2 do
    local kind, id = string.sub(fields[i], 1, 3), string.sub(fields[i], 4)
    if kind == 'rt:' then
      redis.call('DEL', prefix .. 'refresh:' .. id, prefix .. 'refresh-spent:' .. id)
    elseif kind == 'at:' and access then
      local left = math.floor(tonumber(fields[i + 1]) - now) + 60
      if left > 0 then redis.call('SET', prefix .. 'revoked:' .. id, '1', 'EX', left) end
    end
  end
  redis.call('DEL', chain)
end
"""

#: Add refresh token KEYS[1] and access token ARGV[3] (expiring at ARGV[4]) to chain
#: KEYS[2] and the chain to its user's set KEYS[3]. With KEYS[4] (the presented token)
#: and KEYS[5] (its spent mark), spend it first: gone (revoked, expired) -> 0; spent
#: already -> revoke the chain, 2. Added -> 1.
_ADD = (
    _REVOKE
    + """
local grant, digest, jti, access_exp = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, now, prefix, chain_id = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
if KEYS[4] then
  local left = redis.call('TTL', KEYS[4])
  if left < 0 then return 0 end
  if not redis.call('SET', KEYS[5], '1', 'NX', 'EX', math.max(left, 1)) then
    revoke(KEYS[2], now, prefix, true)
    return 2
  end
end
redis.call('SET', KEYS[1], grant, 'EX', ttl)
redis.call('HSET', KEYS[2], 'rt:' .. digest, '1', 'at:' .. jti, access_exp)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('SADD', KEYS[3], chain_id)
redis.call('EXPIRE', KEYS[3], ttl)
return 1
"""
)

#: Revoke chain KEYS[1].
_REVOKE_ONE = _REVOKE + "\nrevoke(KEYS[1], tonumber(ARGV[1]), ARGV[2], true)\nreturn 1\n"

#: Revoke the refresh tokens of every chain named in set KEYS[1] (a deleted user's: their
#: access tokens are refused by the deleted user's mark, `identities.deleted_key`, which
#: says why).
_REVOKE_ALL = (
    _REVOKE
    + """
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  revoke(ARGV[2] .. 'chain:' .. id, tonumber(ARGV[1]), ARGV[2], false)
end
redis.call('DEL', KEYS[1])
return 1
"""
)


@dataclass(frozen=True)
class RefreshGrant:
    """What a refresh token stands for (the token itself is stored only as a hash)."""

    username: str
    #: the user's identity (`User.user_id`): a user deleted and created again under the
    #: same name is someone else, who must not inherit the old tokens
    user_id: str
    client_id: str
    tenant: str
    scope: str
    expires_at: float
    chain: str


def new_chain() -> str:
    """The id of a new sign-in session's chain."""
    return secrets.token_urlsafe(16)


class RefreshChains:
    """Refresh tokens kept as chains in Redis (see the module docstring)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._r = client
        #: the identity store's key prefix (its `revoked_key`s are written here too)
        self._prefix = prefix
        self._add = client.register_script(_ADD)
        self._revoke_one = client.register_script(_REVOKE_ONE)
        self._revoke_all = client.register_script(_REVOKE_ALL)

    def start(self, token: str, grant: RefreshGrant, access_jti: str, access_exp: float) -> None:
        """Begin a chain (a sign-in) with `token` and the access token issued with it."""
        self._save(token, grant, access_jti, access_exp, spent=None)

    def rotate(
        self, spent: str, token: str, grant: RefreshGrant, access_jti: str, access_exp: float
    ) -> bool:
        """Spend `spent` and add its successor `token`, atomically. False if `spent` was
        spent already (its chain is revoked then), revoked or expired meanwhile."""
        return self._save(token, grant, access_jti, access_exp, spent=spent) == 1

    def find(self, token: str) -> RefreshGrant | None:
        """The live grant behind `token`. A token spent already is reuse: its chain is
        revoked, and None is returned, as for an unknown, expired or revoked token."""
        digest = hashing.hash_secret(token)
        raw, spent = self._r.mget(
            self._key("refresh:", digest), self._key("refresh-spent:", digest)
        )
        if raw is None:
            return None
        try:
            grant = RefreshGrant(**json.loads(raw))
        except (TypeError, ValueError):
            # saved before sign-in sessions were chains (no user id, no chain): such a
            # token cannot be tied to its person's identity, so it is refused as unknown
            # (the person signs in again) rather than failing the request
            return None
        if spent is not None:
            self.revoke(grant.chain)
            return None
        return grant

    def revoke(self, chain: str) -> None:
        """End a sign-in session: every refresh and access token of `chain`."""
        self._revoke_one(keys=[self._key("chain:", chain)], args=[time.time(), self._prefix])

    def revoke_user(self, username: str) -> None:
        """End every sign-in session of `username` (the user is being deleted): their
        refresh tokens are deleted; their access tokens are refused as a deleted user's."""
        self._revoke_all(
            keys=[self._key("user-chains:", username)], args=[time.time(), self._prefix]
        )

    def _save(
        self,
        token: str,
        grant: RefreshGrant,
        access_jti: str,
        access_exp: float,
        spent: str | None,
    ) -> int:
        digest = hashing.hash_secret(token)
        keys = [
            self._key("refresh:", digest),
            self._key("chain:", grant.chain),
            self._key("user-chains:", grant.username),
        ]
        if spent is not None:
            spent_digest = hashing.hash_secret(spent)
            keys += [self._key("refresh:", spent_digest), self._key("refresh-spent:", spent_digest)]
        ttl = max(int(grant.expires_at - time.time()), 1)
        args = [
            json.dumps(asdict(grant)),
            digest,
            access_jti,
            access_exp,
            ttl,
            time.time(),
            self._prefix,
            grant.chain,
        ]
        return int(self._add(keys=keys, args=args))

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}{name}"

"""Admission of each call in one Redis round trip: the token is not revoked, its client
or user was not deleted, and every rate limit has room.

Limits are requests and model tokens per minute, per client and per tenant, shared by
every gateway replica: one Lua script decides atomically, so N replicas together allow
exactly the configured limit. The window is a sliding minute of one-second buckets (a
Redis hash per limited identity), timed by Redis' own clock so replicas with skewed
clocks agree. A call is admitted only if every limit has room; then, and only then, all
counters move. Model tokens are charged when a call finishes (the count is not known
before); a call is admitted while the minute's tokens are under the limit. The limits
themselves are read from the identity records in the same script, so a change applies
to the next call.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from gateway.auth.api_keys import record_key
from gateway.auth.identities import PREFIX, Limits, deleted_key, revoked_key
from gateway.auth.principal import Principal
from gateway.auth.verifier import StaleToken
from gateway.firewall import Firewall, Target, principal_target
from llmos.errors import ResourceExhausted

WINDOW_S = 60
#: a key nothing ever writes, for checks that do not apply (no jti, not a user)
NEVER = f"{PREFIX}never"

#: KEYS: revoked-token, deleted-client, deleted-user, client (or API key) record, tenant
#: record, then
#: the four windows (client rpm, tenant rpm, client tpm, tenant tpm), then the blocks of
#: the caller's address and of the principal (gateway/firewall.py).
#: ARGV: window, default tenant rpm, default tenant tpm.
#: Returns {1} admitted; {2} revoked; {3} client deleted; {4} user deleted;
#: {0, window index (1-4), retry-after s, limit} refused by a limit;
#: {5, block key index (10-11), block entry} blocked at the door.
_ADMIT = """
for i = 10, 11 do
  local block = redis.call('GET', KEYS[i])
  if block then return {5, i, block} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {2} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {3} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {4} end
local limits = {0, tonumber(ARGV[2]), 0, tonumber(ARGV[3])}
local client = redis.call('GET', KEYS[4])
if client then
  local l = cjson.decode(client)['limits'] or {}
  limits[1] = tonumber(l['requests_per_minute'] or 0)
  limits[3] = tonumber(l['tokens_per_minute'] or 0)
end
local tenant = redis.call('HGET', KEYS[5], 'limits')
if tenant then
  local l = cjson.decode(tenant)
  limits[2] = tonumber(l['requests_per_minute'] or 0)
  limits[4] = tonumber(l['tokens_per_minute'] or 0)
end
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[1])
local oldest = now - window + 1
local adds = {1, 1, 0, 0}
for i = 1, 4 do
  local key, limit = KEYS[5 + i], limits[i]
  if limit > 0 then
    local buckets = redis.call('HGETALL', key)
    local used, seconds = 0, {}
    for j = 1, #buckets, 2 do
      local second = tonumber(buckets[j])
      if second < oldest then
        redis.call('HDEL', key, buckets[j])
      else
        used = used + tonumber(buckets[j + 1])
        table.insert(seconds, {second, tonumber(buckets[j + 1])})
      end
    end
    if used + 1 > limit then
      table.sort(seconds, function(a, b) return a[1] < b[1] end)
      local need, retry = used + 1 - limit, window
      for _, entry in ipairs(seconds) do
        need = need - entry[2]
        if need <= 0 then retry = entry[1] + window - now; break end
      end
      return {0, i, retry, limit}
    end
  end
end
for i = 1, 4 do
  if adds[i] > 0 and limits[i] > 0 then
    redis.call('HINCRBY', KEYS[5 + i], now, adds[i])
    redis.call('EXPIRE', KEYS[5 + i], window + 1)
  end
end
return {1}
"""

#: KEYS: token windows to charge. ARGV: window, tokens.
_CHARGE = """
local now = tonumber(redis.call('TIME')[1])
for _, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, now, ARGV[2])
  redis.call('EXPIRE', key, tonumber(ARGV[1]) + 1)
end
return 1
"""


class RateLimited(ResourceExhausted):
    """A call over a rate limit; `own`: the client's own limit (not its tenant's, which
    others share and may have used up)."""

    def __init__(self, message: str, retry_after_s: float, own: bool) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.own = own


class Admission:
    """Whether a verified principal's call may proceed now; token charging afterwards."""

    def __init__(
        self, redis: aioredis.Redis, default_tenant_limits: Limits, firewall: Firewall
    ) -> None:
        self._admit = redis.register_script(_ADMIT)
        self._charge = redis.register_script(_CHARGE)
        self._defaults = default_tenant_limits
        self._firewall = firewall

    async def admit(self, principal: Principal, address: Target | None) -> None:
        """PERMISSION_DENIED (`Blocked`) if the caller's address (None: not blockable) or
        the principal is blocked; UNAUTHENTICATED if the token was revoked or its
        client/user deleted; RESOURCE_EXHAUSTED (with retry-after) if a limit is full;
        else count the call."""
        who = principal_target(principal)
        keys = [
            revoked_key(principal.token_id) if principal.token_id else NEVER,
            deleted_key("client", principal.client_id),
            deleted_key("user", principal.subject) if principal.is_user else NEVER,
            record_key(principal.client_id)
            if principal.api_key
            else f"{PREFIX}client:{principal.client_id}",
            f"{PREFIX}tenant:{principal.tenant}",
            *_windows(principal),
            address.key if address else NEVER,
            who.key,
        ]
        args = [WINDOW_S, self._defaults.requests_per_minute, self._defaults.tokens_per_minute]
        raw = await self._admit(keys=keys, args=args)
        if int(raw[0]) == 5:
            target = address if int(raw[1]) == 10 and address else who
            self._firewall.refuse_stored(target, raw[2])
        answer = [int(x) for x in raw]
        if answer[0] == 1:
            return
        if answer[0] == 2:
            what = f"API key {principal.client_id}" if principal.api_key else "token"
            raise StaleToken(f"{what} has been revoked")
        if answer[0] in (3, 4):
            whose = "client" if answer[0] == 3 else "user"
            raise StaleToken(f"the {whose} this token was issued to has been deleted")
        index, retry, limit = answer[1] - 1, max(answer[2], 1), answer[3]
        what = "requests" if index < 2 else "model tokens"
        client = "API key" if principal.api_key else "client"
        whose = (
            f"{client} {principal.client_id!r}"
            if index % 2 == 0
            else f"tenant {principal.tenant!r}"
        )
        raise RateLimited(
            f"rate limit reached: {whose} may use {limit} {what} per minute; retry after {retry} s",
            retry_after_s=float(retry),
            own=index % 2 == 0,
        )

    async def charge_tokens(self, principal: Principal, tokens: int) -> None:
        """Add the model tokens a finished call consumed to both token windows."""
        if tokens > 0:
            await self._charge(keys=_windows(principal)[2:], args=[WINDOW_S, tokens])


def _windows(principal: Principal) -> list[str]:
    return [
        f"{PREFIX}rpm:client:{principal.client_id}",
        f"{PREFIX}rpm:tenant:{principal.tenant}",
        f"{PREFIX}tpm:client:{principal.client_id}",
        f"{PREFIX}tpm:tenant:{principal.tenant}",
    ]

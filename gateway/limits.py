"""Requests and model tokens per minute, per client and per tenant, shared by every
gateway replica: one Lua script in Redis decides atomically, so N replicas together
allow exactly the configured limit.

The window is a sliding minute made of one-second buckets (a Redis hash per limited
identity), timed by Redis' own clock so replicas with skewed clocks agree. A request is
admitted only if every limit has room; then, and only then, all counters move.
Model tokens are charged when a call finishes (the count is not known before), and a
call is admitted while the minute's tokens are under the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.auth.identities import PREFIX
from gateway.auth.principal import Principal
from llmos.errors import ResourceExhausted

WINDOW_S = 60

#: KEYS: window hashes. ARGV: window, then per key: limit, cost to check, cost to add.
#: Returns {1} when admitted, else {0, index of the full key (1-based), retry-after s}.
_ADMIT = """
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[1])
local oldest = now - window + 1
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 + (i - 1) * 3])
  local check = tonumber(ARGV[3 + (i - 1) * 3])
  if limit > 0 and check > 0 then
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
    if used + check > limit then
      table.sort(seconds, function(a, b) return a[1] < b[1] end)
      local need, retry = used + check - limit, window
      for _, entry in ipairs(seconds) do
        need = need - entry[2]
        if need <= 0 then retry = entry[1] + window - now; break end
      end
      return {0, i, retry}
    end
  end
end
for i, key in ipairs(KEYS) do
  local add = tonumber(ARGV[4 + (i - 1) * 3])
  if add > 0 then
    redis.call('HINCRBY', key, now, add)
    redis.call('EXPIRE', key, window + 1)
  end
end
return {1}
"""


@dataclass(frozen=True)
class LimitSet:
    """The four limits that apply to one principal (0: unlimited)."""

    client_rpm: int
    client_tpm: int
    tenant_rpm: int
    tenant_tpm: int


class RateLimiter:
    """Admission and token charging against per-client and per-tenant minute windows."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._admit = redis.register_script(_ADMIT)

    async def admit(self, principal: Principal, limits: LimitSet) -> None:
        """Count one request; RESOURCE_EXHAUSTED (with retry-after) if any limit is full."""
        checks = [
            (_key("rpm", "client", principal.client_id), limits.client_rpm, 1, 1),
            (_key("rpm", "tenant", principal.tenant), limits.tenant_rpm, 1, 1),
            (_key("tpm", "client", principal.client_id), limits.client_tpm, 1, 0),
            (_key("tpm", "tenant", principal.tenant), limits.tenant_tpm, 1, 0),
        ]
        args: list[int] = [WINDOW_S]
        for _, limit, check, add in checks:
            args += [limit, check, add]
        answer = await self._admit(keys=[c[0] for c in checks], args=args)
        if int(answer[0]) == 1:
            return
        index, retry = int(answer[1]) - 1, max(int(answer[2]), 1)
        what = ("requests", "requests", "model tokens", "model tokens")[index]
        whose = (
            f"client {principal.client_id!r}",
            f"tenant {principal.tenant!r}",
            f"client {principal.client_id!r}",
            f"tenant {principal.tenant!r}",
        )[index]
        limit = checks[index][1]
        raise ResourceExhausted(
            f"rate limit reached: {whose} may use {limit} {what} per minute; retry after {retry} s",
            retry_after_s=float(retry),
        )

    async def charge_tokens(self, principal: Principal, tokens: int) -> None:
        """Add the model tokens a finished call consumed to both token windows."""
        if tokens <= 0:
            return
        keys = [_key("tpm", "client", principal.client_id), _key("tpm", "tenant", principal.tenant)]
        await self._admit(keys=keys, args=[WINDOW_S, 0, 0, tokens, 0, 0, tokens])


def _key(kind: str, level: str, name: str) -> str:
    return f"{PREFIX}{kind}:{level}:{name}"

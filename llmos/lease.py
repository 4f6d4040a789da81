"""A lease in Redis: one holder at a time for work that must have a single writer (the
scheduler that places training jobs, the audit service that appends to the log).

The holder renews it more often than it expires; if the holder dies, the lease lapses
and another instance takes it within four heartbeats (at least MIN_LEASE_S).
"""

from __future__ import annotations

import redis.asyncio as aioredis

MIN_LEASE_S = 3.0

#: KEYS[1] lease key; ARGV: our id, lease ms. Take the lease if free, renew it if ours.
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class Lease:
    """`hold()` takes or renews the lease; it answers whether this instance holds it."""

    def __init__(self, redis: aioredis.Redis, key: str, holder: str, heartbeat_s: float) -> None:
        self._redis = redis
        self._key = key
        self._holder = holder
        # four missed heartbeats, as the cluster counts liveness, but never under 3 s
        self._lease_ms = int(max(MIN_LEASE_S, 4 * heartbeat_s) * 1000)
        self._take = redis.register_script(_TAKE)
        self.held = False

    async def hold(self) -> bool:
        self.held = bool(await self._take(keys=[self._key], args=[self._holder, self._lease_ms]))
        return self.held

    async def holder(self) -> str:
        """Who holds it now ("" when nobody does)."""
        value = await self._redis.get(self._key)
        return value.decode() if isinstance(value, bytes) else str(value or "")

    async def release(self) -> None:
        """Give it up at shutdown (only if still ours), so a standby need not wait."""
        if self.held and await self.holder() == self._holder:
            await self._redis.delete(self._key)
        self.held = False

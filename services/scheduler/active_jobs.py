"""Rebuilding each tenant's active-job set (what its job cap counts) from the jobs
themselves, at scheduler start.

The cap counts `active-of:<tenant>`, a set added after jobs already existed: jobs queued
or running from before that are in no such set (the cap would undercount them), and a
scheduler of that time that crashed between a job's end and its removal left the job in
the sets (its tenant's place stays taken forever). The truth is each job's stored state;
this makes the sets agree with it.

Safe to run by every instance at any time, alongside submissions and transitions: each job
is checked and fixed in one atomic script that reads its state, so a job created or ended
meanwhile is never added or removed wrongly, and running it twice changes nothing.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from llmos.v1 import scheduler_pb2
from services.scheduler.jobs import ACTIVE, TERMINAL, active_of, job_key

log = logging.getLogger("llmos.scheduler.active_jobs")

#: Put one job in or out of the active sets by its stored state, in one step.
#: KEYS: job hash, all active jobs, its tenant's active jobs. ARGV: job id, then the
#: terminal states. Returns how many memberships it changed.
_FIX = """
local state = redis.call('HGET', KEYS[1], 'state')
local ended = not state
for i = 2, #ARGV do
  if state == ARGV[i] then ended = true end
end
local op = ended and 'SREM' or 'SADD'
return redis.call(op, KEYS[2], ARGV[1]) + redis.call(op, KEYS[3], ARGV[1])
"""


async def reconcile_active(redis: aioredis.Redis) -> int:
    """Make every tenant's active set hold exactly its jobs not yet ended, as far as they
    can be found: every job in the all-active set, and every member of the active set of
    a tenant one of those belongs to. Returns how many memberships it changed."""
    fix = redis.register_script(_FIX)
    terminal = sorted(TERMINAL)
    ids = sorted(i.decode() for i in await redis.smembers(ACTIVE))  # type: ignore[misc]
    raws = await _data(redis, ids)
    tenants: dict[str, set[str]] = {}
    changed = 0
    for job_id, raw in zip(ids, raws, strict=True):
        if raw is None:  # no job left to say whose it was: out of the all-active set only
            changed += await redis.srem(ACTIVE, job_id)  # type: ignore[misc]
            continue
        tenant = scheduler_pb2.Job.FromString(raw).tenant
        changed += await fix(
            keys=[job_key(job_id), ACTIVE, active_of(tenant)], args=[job_id, *terminal]
        )
        tenants.setdefault(tenant, set()).add(job_id)
    for tenant, seen in tenants.items():
        members = await redis.smembers(active_of(tenant))  # type: ignore[misc]
        for job_id in sorted(m.decode() for m in members):
            if job_id not in seen:  # in the tenant's set but not the all-active one
                keys = [job_key(job_id), ACTIVE, active_of(tenant)]
                changed += await fix(keys=keys, args=[job_id, *terminal])
    if changed:
        log.info("tenants' active-job sets reconciled", extra={"changed": changed})
    return changed


async def _data(redis: aioredis.Redis, ids: list[str]) -> list[bytes | None]:
    """Each job's stored bytes (None if it is gone), in one round trip."""
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(job_key(job_id), "data")
        return list(await pipe.execute())

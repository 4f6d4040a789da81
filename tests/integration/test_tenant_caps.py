"""Per-tenant caps on what a tenant keeps alive in the system (active jobs, deployed
models), against a real Redis as the scheduler and the gateway use it (their own ACL users);
storage and the scheduler's model loading are stand-ins, the cap's decisions are real."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.auth.principal import CallRecord, Principal, current_call
from gateway.deployments import Deployer, Deployments
from llmos.errors import ResourceExhausted
from llmos.model.names import TOKENIZER
from llmos.v1 import common_pb2, events_pb2, gateway_pb2, scheduler_pb2, storage_pb2
from services.scheduler.active_jobs import reconcile_active
from services.scheduler.jobs import ACTIVE, JobStore, active_of
from tools.devstack.infra import RedisServer


class _Events:
    """Job events go nowhere here: the cap is what is under test."""

    async def publish(self, subject: str, event: events_pb2.Event) -> None:
        return None


async def test_a_thousand_fast_submissions_admit_exactly_the_tenants_cap(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url_for("scheduler"))
    events: Any = _Events()
    store = JobStore(client, events, max_active_per_tenant=100)
    tenant, other = f"busy-{uuid.uuid4().hex[:8]}", f"calm-{uuid.uuid4().hex[:8]}"
    spec = scheduler_pb2.JobSpec(name="j", kind="training")
    try:
        answers = await asyncio.gather(
            *(store.create(tenant, "o", spec) for _ in range(1000)), return_exceptions=True
        )
        admitted = [a for a in answers if isinstance(a, scheduler_pb2.Job)]
        refused = [a for a in answers if isinstance(a, ResourceExhausted)]
        assert len(admitted) == 100 and len(refused) == 900
        assert f"tenant {tenant!r} already has 100 jobs queued or running" in str(refused[0])
        await store.create(other, "o", spec)  # another tenant is not held back
        # a job that ends frees its place
        await store.move(admitted[0], common_pb2.JOB_STATE_CANCELLED, "cancelled")
        await store.create(tenant, "o", spec)
        with pytest.raises(ResourceExhausted):
            await store.create(tenant, "o", spec)
    finally:
        await client.aclose()


class _LostAfterScripts:
    """A scheduler's Redis connection lost right after its scripts ran: whatever else
    the scheduler would send after a job's state change never reaches the server."""

    def __init__(self, real: aioredis.Redis) -> None:
        self._real = real

    def register_script(self, script: str) -> Any:
        return self._real.register_script(script)

    def __getattr__(self, name: str) -> Any:
        raise ConnectionError(f"scheduler killed before its {name}")


async def test_a_job_that_ends_frees_its_place_even_if_the_scheduler_dies_right_after(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url_for("scheduler"))
    events: Any = _Events()
    lost: Any = _LostAfterScripts(client)
    store = JobStore(client, events, max_active_per_tenant=1)
    crashing = JobStore(lost, events, max_active_per_tenant=1)
    tenant = f"crashy-{uuid.uuid4().hex[:8]}"
    spec = scheduler_pb2.JobSpec(name="j", kind="training")
    try:
        job = await store.create(tenant, "o", spec)
        with contextlib.suppress(ConnectionError):
            await crashing.move(job, common_pb2.JOB_STATE_CANCELLED, "cancelled")
        assert (await store.get(tenant, job.job_id)).state == common_pb2.JOB_STATE_CANCELLED
        assert not await client.sismember(active_of(tenant), job.job_id)
        assert not await client.sismember(ACTIVE, job.job_id)
        await store.create(tenant, "o", spec)  # its place is free
    finally:
        await client.aclose()


async def test_reconciling_counts_jobs_from_before_the_cap_and_frees_leaked_places(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url_for("scheduler"))
    events: Any = _Events()
    store = JobStore(client, events, max_active_per_tenant=3)
    tenant = f"upgraded-{uuid.uuid4().hex[:8]}"
    spec = scheduler_pb2.JobSpec(name="j", kind="training")
    try:
        old, running, leaked = [await store.create(tenant, "o", spec) for _ in range(3)]
        # `old` was queued before tenants' active sets existed: in none
        await client.srem(active_of(tenant), old.job_id)
        # `leaked` ended, but its scheduler died before taking it out of the sets
        await store.move(leaked, common_pb2.JOB_STATE_CANCELLED, "cancelled")
        await client.sadd(ACTIVE, leaked.job_id)
        await client.sadd(active_of(tenant), leaked.job_id)
        # a member left in the tenant's set only, of a job that no longer exists
        await client.sadd(active_of(tenant), "job-vanished")

        assert await reconcile_active(client) >= 4  # 1 added, 3 removed
        members = await client.smembers(active_of(tenant))
        assert {m.decode() for m in members} == {old.job_id, running.job_id}
        assert not await client.sismember(ACTIVE, leaked.job_id)
        assert await client.sismember(ACTIVE, old.job_id)
        assert await reconcile_active(client) == 0  # nothing left to fix: running it again is safe
        await store.create(tenant, "o", spec)  # the leaked place is free again, and only it
        with pytest.raises(ResourceExhausted):
            await store.create(tenant, "o", spec)
    finally:
        await client.aclose()


async def test_a_tenant_may_deploy_only_its_cap_of_models_but_new_versions_always(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url_for("gateway"))
    deployments = Deployments(client)
    tenant = f"deployer-{uuid.uuid4().hex[:8]}"
    try:
        for n in range(3):
            async with deployments.place(tenant, f"m{n}", limit=3, hold_s=60) as place:
                await deployments.record(place, f"{tenant}--m{n}-v1")
        with pytest.raises(ResourceExhausted, match="already has 3 models deployed"):
            async with deployments.place(tenant, "m3", limit=3, hold_s=60):
                pass
        async with deployments.place(tenant, "m0", limit=3, hold_s=60) as place:
            await deployments.record(place, f"{tenant}--m0-v2")  # a new version of m0
        assert await deployments.served(tenant, "m0") == f"{tenant}--m0-v2"
    finally:
        await client.aclose()


class _Cluster:
    """Storage and scheduler as DeployModel sees them: every version exists with a
    tokenizer, and the scheduler's load takes until `loading` is set (minutes, really)."""

    def __init__(self, tenant: str, loading: asyncio.Event, on_load: Callable[[], None]) -> None:
        self.tenant, self.loading, self.on_load = tenant, loading, on_load

    def to(self, service: str, stub: object) -> _Cluster:
        return self

    async def ask(self, method: str, request: Any, context: Any, **_: Any) -> Any:
        if method == "GetModelVersion":
            return storage_pb2.ModelVersion(
                tenant=self.tenant, model=request.model, version=request.version,
                files={TOKENIZER: "0" * 64},
            )  # fmt: skip
        if method == "DeployModel":
            self.on_load()
            await self.loading.wait()
        return None


class _Context:
    def time_remaining(self) -> float | None:
        return None


async def test_parallel_deploys_of_new_models_get_exactly_the_places_left(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url_for("gateway"))
    deployments = Deployments(client)
    tenant = f"racer-{uuid.uuid4().hex[:8]}"
    limit, attempts = 5, 8
    decided, loading = 0, asyncio.Event()

    def one_decided() -> None:
        """Every attempt is let in (its load begun) or refused before any load ends."""
        nonlocal decided
        decided += 1
        if decided == attempts:
            loading.set()

    cluster: Any = _Cluster(tenant, loading, one_decided)
    deployer = Deployer(cluster, deployments, max_per_tenant=limit)

    async def deploy(model: str, version: int = 1) -> gateway_pb2.Deployment:
        current_call.set(CallRecord(principal=Principal("u", tenant, "c", frozenset())))
        request = gateway_pb2.DeployModelRequest(model=model, version=version)
        try:
            return await deployer.deploy(request, _Context())
        except ResourceExhausted:
            one_decided()
            raise

    try:
        for model in ("a", "b"):  # two deployed already: 3 places left
            async with deployments.place(tenant, model, limit, hold_s=60) as place:
                await deployments.record(place, f"{tenant}--{model}-v1")
        answers = await asyncio.gather(
            *(deploy(f"new{n}") for n in range(attempts)), return_exceptions=True
        )
        deployed = [a for a in answers if isinstance(a, gateway_pb2.Deployment)]
        refused = [a for a in answers if isinstance(a, ResourceExhausted)]
        assert len(deployed) == 3 and len(refused) == attempts - 3
        assert "already has 5 models deployed" in str(refused[0])
        for done in deployed:
            assert await deployments.served(tenant, done.model) == done.served_as
        assert await client.hlen(f"llmos:deployments:{tenant}") == limit
        # a new version of a deployed model still goes through at the limit
        again = await deploy(deployed[0].model, version=2)
        assert await deployments.served(tenant, again.model) == f"{tenant}--{again.model}-v2"
    finally:
        await client.aclose()


async def test_a_failed_or_abandoned_deploy_gives_its_place_back(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url_for("gateway"))
    deployments = Deployments(client)
    tenant = f"failer-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(RuntimeError, match="no worker could load it"):
            async with deployments.place(tenant, "broken", limit=1, hold_s=60):
                raise RuntimeError("no worker could load it")
        assert await deployments.served(tenant, "broken") == ""
        # a gateway that dies mid-deploy never leaves the context: its place lapses
        await deployments.place(tenant, "orphan", limit=1, hold_s=1).__aenter__()
        with pytest.raises(ResourceExhausted):
            async with deployments.place(tenant, "other", limit=1, hold_s=60):
                pass
        await asyncio.sleep(2.1)
        async with deployments.place(tenant, "other", limit=1, hold_s=60) as place:
            await deployments.record(place, f"{tenant}--other-v1")
        assert await deployments.served(tenant, "other") == f"{tenant}--other-v1"
    finally:
        await client.aclose()

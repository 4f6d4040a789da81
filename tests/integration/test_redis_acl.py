"""Redis least privilege in a real server: each service's ACL user (llmos/redis_acl.py)
does its own job, and Redis itself refuses, with the reason, anything beyond it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError

from gateway.auth.identities import IdentityStore, Limits
from llmos.config import Secret
from llmos.hotstate import connect_redis, service_redis_url
from llmos.lease import Lease
from llmos.registry import ServiceRegistry, alive_key, info_key
from llmos.services import SERVICE_MODULES
from llmos.trust import credentials_file
from llmos.v1 import common_pb2
from services.audit.app import WRITER_KEY
from services.scheduler.training import LEADER_KEY
from tests.conftest import run_python
from tools import harness
from tools.devstack.infra import RedisServer

KEY_REFUSED = "No permissions to access a key"


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: its ACL log holds only what these tests did."""
    with harness.redis_server(tmp_path_factory.mktemp("acl")) as server:
        yield server


@pytest.fixture
async def setup_client(acl_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(acl_redis.url)
    await client.acl_log_reset()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def as_user(acl_redis: RedisServer) -> AsyncIterator[dict[str, aioredis.Redis]]:
    """An async client for every service user, connected as that user."""
    clients = {s: aioredis.Redis.from_url(acl_redis.url_for(s)) for s in SERVICE_MODULES}
    try:
        yield clients
    finally:
        for client in clients.values():
            await client.aclose()


def _instance(service: str) -> common_pb2.ServiceInstance:
    return common_pb2.ServiceInstance(
        service=service, instance_id=f"{service}-{uuid.uuid4().hex[:6]}", address="h:1"
    )


async def _refusals(setup: aioredis.Redis, user: str) -> set[tuple[str, str]]:
    """Why Redis refused `user` (ACL log: reason, object) since the test began."""
    entries = await setup.acl_log()
    return {(e["reason"], e["object"]) for e in entries if e["username"] == user}


async def test_a_worker_cannot_write_or_read_identities(
    acl_redis: RedisServer, setup_client: aioredis.Redis, tmp_path: Path
) -> None:
    worker = redis.Redis.from_url(acl_redis.url_for("inference-worker"))
    try:
        store = IdentityStore(worker, tmp_path, Limits())
        with pytest.raises(NoPermissionError, match=KEY_REFUSED):
            store.create_tenant("evil")
        with pytest.raises(NoPermissionError, match=KEY_REFUSED):
            worker.set("llmos:auth:client:c-evil", '{"scopes": ["admin"]}')
        with pytest.raises(NoPermissionError, match=KEY_REFUSED):
            store.find_client("c-admin")
    finally:
        worker.close()
    assert await _refusals(setup_client, "inference-worker") >= {
        ("key", "llmos:auth:tenant:evil"),
        ("key", "llmos:auth:client:c-evil"),
        ("key", "llmos:auth:client:c-admin"),
    }
    assert not await setup_client.exists("llmos:auth:tenant:evil", "llmos:auth:client:c-evil")


async def test_only_the_gateway_reaches_identities(acl_redis: RedisServer, tmp_path: Path) -> None:
    gateway = redis.Redis.from_url(acl_redis.url_for("gateway"))
    try:
        store = IdentityStore(gateway, tmp_path, Limits())
        tenant = store.create_tenant(f"t{uuid.uuid4().hex[:8]}")
        client, _secret = store.create_client(tenant.name, "ops", ["admin"])
        assert store.find_client(client.client_id) == client
    finally:
        gateway.close()
    for service in SERVICE_MODULES:
        if service != "gateway":
            other = redis.Redis.from_url(acl_redis.url_for(service))
            try:
                with pytest.raises(NoPermissionError, match=KEY_REFUSED):
                    other.get(f"llmos:auth:client:{client.client_id}")
            finally:
                other.close()


async def test_the_default_user_cannot_log_in(acl_redis: RedisServer) -> None:
    anonymous = aioredis.Redis.from_url(acl_redis.public_url)
    try:
        with pytest.raises(AuthenticationError, match="Authentication required"):
            await anonymous.ping()
    finally:
        await anonymous.aclose()
    named = aioredis.Redis.from_url(acl_redis.public_url.replace("//", "//default:guess@"))
    try:
        with pytest.raises(AuthenticationError, match="user is disabled"):
            await named.ping()
    finally:
        await named.aclose()


async def test_a_worker_cannot_register_an_instance_as_storage(
    as_user: dict[str, aioredis.Redis], setup_client: aioredis.Redis
) -> None:
    fake = _instance("storage")
    fake.address = "attacker:50053"
    with pytest.raises(NoPermissionError, match=KEY_REFUSED):
        await ServiceRegistry(as_user["inference-worker"], ttl_s=30).heartbeat(fake)
    with pytest.raises(NoPermissionError, match=KEY_REFUSED):
        await as_user["inference-worker"].zadd(alive_key("storage"), {"storage-x": 2**40})
    listed = await ServiceRegistry(setup_client, ttl_s=30).live_instances()
    assert all(i.address != fake.address for i in listed)
    assert await _refusals(setup_client, "inference-worker") >= {
        ("key", info_key("storage")),
        ("key", alive_key("storage")),
    }


async def test_each_service_registers_itself_and_every_service_sees_all(
    as_user: dict[str, aioredis.Redis],
) -> None:
    mine = {s: _instance(s) for s in SERVICE_MODULES}
    for service, client in as_user.items():
        await ServiceRegistry(client, ttl_s=30).register(mine[service])
    try:
        for client in as_user.values():
            listed = {i.instance_id for i in await ServiceRegistry(client, 30).live_instances()}
            assert listed >= {i.instance_id for i in mine.values()}
    finally:
        for service, client in as_user.items():
            await ServiceRegistry(client, ttl_s=30).deregister(mine[service])


async def test_the_single_writer_leases_belong_to_their_services(
    as_user: dict[str, aioredis.Redis],
) -> None:
    scheduler = Lease(as_user["scheduler"], LEADER_KEY, "scheduler-1", heartbeat_s=1)
    audit = Lease(as_user["audit"], WRITER_KEY, "audit-1", heartbeat_s=1)
    assert await scheduler.hold() and await audit.hold()
    await scheduler.release()
    await audit.release()
    # a storage process cannot make itself the audit writer (nor run Lua at all)
    with pytest.raises(NoPermissionError, match="no permissions to run the 'evalsha' command"):
        await Lease(as_user["storage"], WRITER_KEY, "storage-1", heartbeat_s=1).hold()
    with pytest.raises(NoPermissionError, match=KEY_REFUSED):
        await as_user["scheduler"].set(WRITER_KEY, "scheduler-1")


@pytest.mark.parametrize(
    "command",
    [
        ("FUNCTION", "FLUSH"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("ACL", "LIST"),
        ("PUBLISH", "llmos", "x"),
        ("GEORADIUS", "llmos:auth:x", "0", "0", "1", "km", "STORE", "llmos:jobs:x"),
        ("RESTORE", "llmos:auth:x", "0", "payload"),
        ("CLIENT", "KILL", "USER", "setup"),
    ],
)
async def test_no_service_may_run_server_wide_commands(
    as_user: dict[str, aioredis.Redis], command: tuple[str, ...]
) -> None:
    with pytest.raises(NoPermissionError, match=f"run the '{command[0].lower()}"):
        await as_user["gateway"].execute_command(*command)  # type: ignore[no-untyped-call]


def test_a_service_without_its_credentials_file_says_which_file(
    acl_redis: RedisServer, tmp_path: Path
) -> None:
    env = harness.python_env(
        LLMOS_DATA_DIR=str(tmp_path / "data"),
        LLMOS_SECRETS_DIR=str(tmp_path / "empty"),
        LLMOS_REDIS_URL=acl_redis.public_url,
        LLMOS_LISTEN_ADDR="127.0.0.1:0",
    )
    result = run_python(["-m", "services.storage"], env)
    missing = credentials_file(tmp_path / "empty" / "redis", "storage")
    assert result.returncode == 2
    assert f"{missing} is not a readable credentials file" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_service_connects_as_its_own_user_unless_its_url_names_one(
    acl_redis: RedisServer,
) -> None:
    url = service_redis_url(Secret(acl_redis.public_url), acl_redis.secrets_dir, "storage")
    client = await connect_redis(url, timeout_s=5)
    try:
        assert (await client.client_info())["user"] == "storage"
    finally:
        await client.aclose()
    operators = Secret(acl_redis.url_for("trainer"))
    assert service_redis_url(operators, acl_redis.secrets_dir, "storage") is operators


async def test_what_services_wrote_in_transactions_survives_a_restart(tmp_path: Path) -> None:
    with harness.redis_server(tmp_path) as server:
        gateway = aioredis.Redis.from_url(server.url_for("gateway"))
        async with gateway.pipeline(transaction=True) as pipe:
            pipe.hset("llmos:auth:tenant:t", "limits", "{}")
            pipe.sadd("llmos:auth:tenants", "t")
            await pipe.execute()
        await gateway.aclose()
    with harness.redis_server(tmp_path) as server:  # replays the AOF
        setup = aioredis.Redis.from_url(server.url)
        try:
            assert await setup.smembers("llmos:auth:tenants") == {b"t"}
        finally:
            await setup.aclose()

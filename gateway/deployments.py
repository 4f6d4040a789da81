"""Serving registered model versions: `DeployModel`, and which served name a tenant's
model name stands for.

A deployed version is served under a name of its own, `<tenant>--<model>-v<version>`:
unique across tenants, and new for every version — so moving to a new version never
needs a restart, the old one keeps answering until then, and a worker never confuses a
version it served before with the new one. The mapping (tenant, model) → served
name lives in Redis; Generate and Chat naming `model` go to the tenant's deployment, else
to the `system` tenant's, else to a model served under that plain name. A served name of
another tenant cannot be called directly.

Which worker serves a deployment is the scheduler's decision (its `DeployModel`): the
gateway checks the version, reserves a place under the tenant's cap, asks the scheduler,
and then moves the alias and the mapping.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from google.protobuf.json_format import MessageToDict

from gateway.auth.principal import call_record, caller
from gateway.auth.scopes import SYSTEM_TENANT
from llmos.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from llmos.links import Links
from llmos.model.limits import check_model_config
from llmos.model.names import DEFAULT_MODEL, MODEL_NAME, SERVED_SEPARATOR, TOKENIZER, visible_to
from llmos.model.tasks import TASK_FILE
from llmos.v1 import gateway_pb2, scheduler_pb2, scheduler_pb2_grpc, storage_pb2, storage_pb2_grpc

KEY = "llmos:deployments:"
TOKEN_CHARS = 32

#: Reserve a place for a model among a tenant's deployed ones, counting the deployments
#: under way: the count and the reservation are one atomic step, so parallel deploys of
#: different models cannot all pass a check made before any of them is recorded. A model
#: already deployed (a new version replaces it) or already being deployed takes no new
#: place. A reservation ends at a deadline, so a gateway that dies mid-deploy frees it.
#: KEYS: the tenant's deployments hash, its reservations (member: token .. model, score:
#: the deadline in Unix seconds). ARGV: model, limit, seconds to hold, token.
#: Returns 1 when reserved, 0 when the tenant is at its limit.
_RESERVE = f"""
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  local pending, count, same = {{}}, redis.call('HLEN', KEYS[1]), false
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local model = string.sub(member, {TOKEN_CHARS + 1})
    if model == ARGV[1] then
      same = true
    elseif not pending[model] and redis.call('HEXISTS', KEYS[1], model) == 0 then
      pending[model] = true
      count = count + 1
    end
  end
  if not same and count >= tonumber(ARGV[2]) then return 0 end
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4] .. ARGV[1])
return 1
"""
#: a worker fetching a large version from the registry and loading it takes a while
DEPLOY_TIMEOUT_S = 600.0
#: a deploy's place is held this much past its deadline (the calls after the scheduler's)
RESERVATION_SLACK_S = 60.0


def served_name(tenant: str, model: str, version: int) -> str:
    """The name workers serve a deployed version under. The tenant is what comes before
    the name's last separator (tenant names may hold "--"), so the model's part never
    holds one, nor starts or ends with "-": otherwise tenant `lab` deploying `evil--foo` and tenant
    `lab--evil` deploying `foo` would share a served name, one tenant's model answering
    for the other's."""
    part = re.sub(r"^-|-(?=-|$)", "_", re.sub(r"[^a-z0-9_-]", "_", model))
    name = f"{tenant}{SERVED_SEPARATOR}{part}-v{version}"
    if not MODEL_NAME.match(name):
        raise InvalidArgument(
            "model", f"{model!r} is too long to serve (tenant + model + version <= 63)"
        )
    return name


def check_task_deployer(tenant: str, request: gateway_pb2.DeployModelRequest) -> None:
    """Task models (entities, translation) are deployed by the system tenant only: their
    engines (spaCy, CTranslate2) parse their files in the Triton every tenant shares, and
    are not built to meet hostile files; every tenant may use what it deploys."""
    if tenant != SYSTEM_TENANT:
        raise PermissionDenied(
            f"{request.model} is a task model; only the {SYSTEM_TENANT!r} tenant deploys "
            "those, for every tenant"
        )


def check_llm_version(
    request: gateway_pb2.DeployModelRequest,
    found: storage_pb2.ModelVersion,
    metadata: dict[str, Any],
) -> None:
    """An LLM version a worker could load: sizes in bounds, and a tokenizer."""
    check_model_config(shape_of(metadata))
    if TOKENIZER not in found.files:
        raise FailedPrecondition(
            f"{request.model}@{request.version} has no {TOKENIZER} (a model trained from "
            "scratch reads bytes); only models with a tokenizer can be served"
        )


def shape_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """The config sizes storage read into a version's metadata, under config.json's
    names (numbers only: metadata a caller wrote by hand may say anything)."""
    names = {"hidden_size": "hidden_size", "num_hidden_layers": "num_hidden_layers",
             "vocab_size": "vocab_size", "context_length": "max_position_embeddings"}  # fmt: skip
    shape: dict[str, Any] = {}
    for key, name in names.items():
        value = metadata.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            shape[name] = value
    return shape


def reserved_key(tenant: str) -> str:
    """The tenant's deployments under way (no tenant name holds ":", so no tenant's
    deployments hash is named this)."""
    return f"{KEY}reserved:{tenant}"


@dataclass(frozen=True)
class Reservation:
    """A place among a tenant's deployed models, held while `model` is being deployed."""

    tenant: str
    model: str
    #: TOKEN_CHARS hex characters, unique to this deployment attempt
    token: str

    @property
    def member(self) -> str:
        """Its member in the tenant's reservations: the token, then the model's name."""
        return self.token + self.model


class Deployments:
    """Where each tenant's deployed models are served."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._reserve = redis.register_script(_RESERVE)

    async def served(self, tenant: str, model: str) -> str:
        """The served name `model` stands for in `tenant` ("" if none is deployed)."""
        for owner in dict.fromkeys((tenant, SYSTEM_TENANT)):
            found = await self._redis.hget(KEY + owner, model)  # type: ignore[misc]
            if found:
                return bytes(found).decode()
        return ""

    async def resolve(self, tenant: str, requested: str) -> str:
        """The name to send work for: the tenant's deployment of `requested` (or the
        system tenant's), else the name itself (default: the default model). Whether a
        worker serves it is for the scheduler (generations) or the workers (a request
        nobody takes is NOT_FOUND) to say."""
        name = requested or DEFAULT_MODEL
        deployed = await self.served(tenant, name)
        if deployed:
            return deployed
        self.check_reachable(tenant, name)
        if not MODEL_NAME.match(name):
            raise InvalidArgument("model", "must be lowercase letters, digits, - and _")
        return name

    @asynccontextmanager
    async def place(
        self, tenant: str, model: str, limit: int, hold_s: float
    ) -> AsyncIterator[Reservation]:
        """Hold a place for `model` among `tenant`'s at most `limit` deployed models while
        it is being deployed; RESOURCE_EXHAUSTED if there is none. The place is given
        back on leaving, unless `record` made it the deployment."""
        reservation = Reservation(tenant, model, uuid.uuid4().hex)
        keys = [KEY + tenant, reserved_key(tenant)]
        args: list[str | int] = [model, limit, max(1, math.ceil(hold_s)), reservation.token]
        if not await self._reserve(keys=keys, args=args):
            raise ResourceExhausted(
                f"tenant {tenant!r} already has {limit} models deployed, its limit; "
                "deploy new versions of those instead"
            )
        try:
            yield reservation
        finally:
            await self._redis.zrem(reserved_key(tenant), reservation.member)

    async def record(self, reservation: Reservation, served: str) -> None:
        """Requests naming the reserved model now go to `served`; its place is kept."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(KEY + reservation.tenant, reservation.model, served)
            pipe.zrem(reserved_key(reservation.tenant), reservation.member)
            await pipe.execute()

    @staticmethod
    def check_reachable(tenant: str, name: str) -> None:
        """A served deployment name may be called directly only by its own tenant (or
        anyone, for the system tenant's)."""
        if not visible_to(name, tenant):
            raise NotFound(f"model {name!r} is not served")


class Deployer:
    """Implements DeployModel: registry version -> the scheduler has a worker load it ->
    alias `production` -> requests naming the model go there."""

    def __init__(self, links: Links, deployments: Deployments, max_per_tenant: int = 10) -> None:
        self._deployments = deployments
        self._max_per_tenant = max_per_tenant
        self._storage = links.to("storage", storage_pb2_grpc.StorageStub)
        self._scheduler = links.to("scheduler", scheduler_pb2_grpc.SchedulerStub)

    async def deploy(
        self, request: gateway_pb2.DeployModelRequest, context: Any
    ) -> gateway_pb2.Deployment:
        tenant = caller().tenant
        if request.version <= 0:
            raise InvalidArgument("version", "must be a version number (1, 2, ...)")
        call_record().resource = f"model/{request.model}@{request.version}"
        found: storage_pb2.ModelVersion = await self._storage.ask(
            "GetModelVersion",
            storage_pb2.GetModelVersionRequest(
                tenant=tenant, model=request.model, version=request.version
            ),
            context,
        )
        if found.tenant != tenant:
            raise NotFound(f"tenant {tenant!r} has no model {request.model!r}")
        if TASK_FILE in found.files:
            check_task_deployer(tenant, request)
        else:
            check_llm_version(request, found, MessageToDict(found.metadata))
        served = served_name(tenant, request.model, request.version)
        wait_s = context.time_remaining() or DEPLOY_TIMEOUT_S
        async with self._deployments.place(
            tenant, request.model, self._max_per_tenant, wait_s + RESERVATION_SLACK_S
        ) as reservation:
            await self._scheduler.ask(
                "DeployModel",
                scheduler_pb2.DeployVersionRequest(
                    served_as=served, tenant=tenant, model=request.model, version=request.version
                ),
                context,
                default_timeout_s=DEPLOY_TIMEOUT_S,
            )
            await self._storage.ask(
                "SetAlias",
                storage_pb2.SetAliasRequest(
                    tenant=tenant, model=request.model, alias="production", version=request.version
                ),
                context,
            )
            await self._deployments.record(reservation, served)
        return gateway_pb2.Deployment(
            model=request.model, version=request.version, served_as=served
        )

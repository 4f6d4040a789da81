"""Serving registered model versions: `DeployModel`, and which served name a tenant's
model name stands for.

A deployed version is served under a name of its own, `<tenant>--<model>-v<version>`:
unique across tenants, and new for every version, because a worker's embedded Triton
cannot serve a name again once released — so moving to a new version never needs a
restart, and the old one keeps answering until then. The mapping (tenant, model) → served
name lives in Redis; Generate and Chat naming `model` go to the tenant's deployment, else
to the `system` tenant's, else to a model served under that plain name. A served name of
another tenant cannot be called directly.

Which worker serves a deployment is the scheduler's decision (its `DeployModel`): the
gateway checks the version, asks the scheduler, and then moves the alias and the mapping.
"""

from __future__ import annotations

import re
from typing import Any

import redis.asyncio as aioredis
from google.protobuf.json_format import MessageToDict

from gateway.auth.principal import call_record, caller
from gateway.auth.scopes import SYSTEM_TENANT
from llmos.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from llmos.links import Links
from llmos.model.limits import check_model_config
from llmos.model.names import DEFAULT_MODEL, MODEL_NAME, SERVED_SEPARATOR, TOKENIZER, visible_to
from llmos.v1 import gateway_pb2, scheduler_pb2, scheduler_pb2_grpc, storage_pb2, storage_pb2_grpc

KEY = "llmos:deployments:"
#: a worker fetching a large version from the registry and loading it takes a while
DEPLOY_TIMEOUT_S = 600.0


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


class Deployments:
    """Where each tenant's deployed models are served."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

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

    async def check_room(self, tenant: str, model: str, limit: int) -> None:
        """RESOURCE_EXHAUSTED if deploying `model` would give `tenant` more than `limit`
        deployed models (a new version of a deployed model replaces it: always room)."""
        if await self._redis.hexists(KEY + tenant, model):  # type: ignore[misc]
            return
        if await self._redis.hlen(KEY + tenant) >= limit:  # type: ignore[misc]
            raise ResourceExhausted(
                f"tenant {tenant!r} already has {limit} models deployed, its limit; "
                "deploy new versions of those instead"
            )

    async def record(self, tenant: str, model: str, served: str) -> None:
        await self._redis.hset(KEY + tenant, model, served)  # type: ignore[misc]

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
        check_model_config(shape_of(MessageToDict(found.metadata)))
        await self._deployments.check_room(tenant, request.model, self._max_per_tenant)
        if TOKENIZER not in found.files:
            raise FailedPrecondition(
                f"{request.model}@{request.version} has no {TOKENIZER} (a model trained from "
                "scratch reads bytes); only models with a tokenizer can be served"
            )
        served = served_name(tenant, request.model, request.version)
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
        await self._deployments.record(tenant, request.model, served)
        return gateway_pb2.Deployment(
            model=request.model, version=request.version, served_as=served
        )

"""llmos.v1.Admin: tenants, clients, users, quotas and signing keys (transport only).

Identity changes go through the synchronous identity store on a worker thread. Tenant
rules live in `Principal.require_tenant`: an admin of `system` manages every tenant,
any other admin its own only; nobody grants scopes they do not hold.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pyotp

from gateway.auth.api_keys import ApiKey, ApiKeyStore
from gateway.auth.bootstrap import BUILT_IN_CLIENTS
from gateway.auth.identities import Client, IdentityStore, Limits, Tenant, User
from gateway.auth.keys import Keyring
from gateway.auth.principal import call_record, caller
from gateway.auth.scopes import check_known
from gateway.blocks import BlocklistAdmin
from gateway.firewall import Firewall
from llmos.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from llmos.timestamps import timestamp
from llmos.v1 import admin_pb2, admin_pb2_grpc

ISSUER_LABEL = "LLM OS"


def _quota(limits: Limits) -> admin_pb2.Quota:
    return admin_pb2.Quota(
        requests_per_minute=limits.requests_per_minute, tokens_per_minute=limits.tokens_per_minute
    )


def _limits(quota: admin_pb2.Quota, field: str) -> Limits:
    if quota.requests_per_minute < 0:
        raise InvalidArgument(f"{field}.requests_per_minute", "must be >= 0 (0: unlimited)")
    if quota.tokens_per_minute < 0:
        raise InvalidArgument(f"{field}.tokens_per_minute", "must be >= 0 (0: unlimited)")
    return Limits(quota.requests_per_minute, quota.tokens_per_minute)


def _tenant(record: Tenant) -> admin_pb2.Tenant:
    return admin_pb2.Tenant(
        name=record.name,
        quota=_quota(record.limits),
        critical_priority=record.critical_priority,
    )


def _client(record: Client) -> admin_pb2.Client:
    return admin_pb2.Client(
        client_id=record.client_id,
        tenant=record.tenant,
        name=record.name,
        scopes=record.scopes,
        quota=_quota(record.limits),
    )


def _api_key(record: ApiKey) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        key_id=record.key_id,
        tenant=record.tenant,
        name=record.name,
        scopes=record.scopes,
        quota=_quota(record.limits),
        created_at=timestamp(record.created_at),
        expires_at=timestamp(record.expires_at) if record.expires_at else None,
        created_by=record.created_by,
    )


def _user(record: User) -> admin_pb2.User:
    return admin_pb2.User(username=record.username, tenant=record.tenant, scopes=record.scopes)


class AdminServicer(BlocklistAdmin, admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(
        self,
        store: IdentityStore,
        api_keys: ApiKeyStore,
        keyring: Keyring | None,
        firewall: Firewall,
        block_s: int,
    ) -> None:
        BlocklistAdmin.__init__(self, firewall, block_s)
        self._store = store
        self._api_keys = api_keys
        self._keyring = keyring

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    def _tenant_of(self, requested: str) -> str:
        """The tenant a request targets: the one named, else the caller's; checked."""
        principal = caller()
        tenant = requested or principal.tenant
        call_record().resource = f"tenant/{tenant}"
        principal.require_tenant(tenant, f"tenant {tenant!r}")
        return tenant

    def _grantable(self, scopes: Any, field: str) -> list[str]:
        wanted = list(dict.fromkeys(scopes))
        if not wanted:
            raise InvalidArgument(field, "must name at least one scope")
        check_known(wanted, field)
        caller().require_scopes(wanted)
        return wanted

    async def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Tenant:
        if not caller().is_system_admin:
            raise PermissionDenied("only admins of tenant 'system' may create tenants")
        limits = _limits(request.quota, "quota") if request.HasField("quota") else None
        call_record().resource = f"tenant/{request.name}"
        tenant = await self._run(self._store.create_tenant, request.name, limits)
        return _tenant(tenant)

    async def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListTenantsResponse:
        principal = caller()
        tenants = await self._run(self._store.tenants)
        return admin_pb2.ListTenantsResponse(
            tenants=[_tenant(t) for t in tenants if principal.may_manage(t.name)]
        )

    async def SetQuota(
        self, request: admin_pb2.SetQuotaRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Quota:
        limits = _limits(request.quota, "quota")
        target = request.WhichOneof("target")
        if target == "tenant":
            call_record().resource = f"tenant/{request.tenant}"
            if not caller().is_system_admin:
                raise PermissionDenied("only admins of tenant 'system' may set tenant quotas")
            await self._run(self._store.set_tenant_limits, request.tenant, limits)
        elif target == "client_id":
            call_record().resource = f"client/{request.client_id}"
            client = await self._run(self._store.client, request.client_id)
            caller().require_tenant(client.tenant, f"client {client.client_id!r}")
            await self._run(self._store.set_client_limits, client.client_id, limits)
        else:
            raise InvalidArgument("target", "name a tenant or a client_id")
        return _quota(limits)

    async def SetPriorityGrant(
        self, request: admin_pb2.SetPriorityGrantRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Tenant:
        call_record().resource = f"tenant/{request.tenant}"
        if not caller().is_system_admin:
            raise PermissionDenied("only admins of tenant 'system' may grant priority classes")
        tenant = await self._run(
            self._store.set_critical_priority, request.tenant, request.critical
        )
        return _tenant(tenant)

    async def CreateClient(
        self, request: admin_pb2.CreateClientRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateClientResponse:
        tenant = self._tenant_of(request.tenant)
        if not request.name.strip():
            raise InvalidArgument("name", "must not be empty")
        scopes = self._grantable(request.scopes, "scopes")
        client, secret = await self._run(
            lambda: self._store.create_client(tenant, request.name, scopes)
        )
        call_record().resource = f"client/{client.client_id}"
        return admin_pb2.CreateClientResponse(client=_client(client), client_secret=secret)

    async def ListClients(
        self, request: admin_pb2.ListClientsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListClientsResponse:
        tenant = self._tenant_of(request.tenant)
        clients = await self._run(self._store.clients, tenant)
        return admin_pb2.ListClientsResponse(clients=[_client(c) for c in clients])

    async def DeleteClient(
        self, request: admin_pb2.DeleteClientRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.DeleteClientResponse:
        call_record().resource = f"client/{request.client_id}"
        client = await self._run(self._store.client, request.client_id)
        caller().require_tenant(client.tenant, f"client {client.client_id!r}")
        if client.client_id == caller().client_id:
            raise FailedPrecondition("a client cannot delete itself")
        if client.client_id in BUILT_IN_CLIENTS:
            raise FailedPrecondition(
                f"client {client.client_id!r} is built in: the command line and the web "
                "console sign people in through it"
            )
        await self._run(self._store.delete_client, client.client_id)
        return admin_pb2.DeleteClientResponse()

    async def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateApiKeyResponse:
        tenant = self._tenant_of(request.tenant)
        scopes = self._grantable(request.scopes, "scopes")
        limits = _limits(request.quota, "quota") if request.HasField("quota") else None
        await self._run(self._store.tenant, tenant)  # NOT_FOUND for a tenant that is not
        key, bearer = await self._run(
            lambda: self._api_keys.create(
                tenant, request.name, scopes, caller().subject, request.expires_in_s, limits
            )
        )
        call_record().resource = f"apikey/{key.key_id}"
        return admin_pb2.CreateApiKeyResponse(api_key=_api_key(key), key=bearer)

    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListApiKeysResponse:
        tenant = self._tenant_of(request.tenant)
        keys = await self._run(self._api_keys.keys, tenant)
        return admin_pb2.ListApiKeysResponse(api_keys=[_api_key(k) for k in keys])

    async def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeApiKeyResponse:
        call_record().resource = f"apikey/{request.key_id}"
        key = await self._run(self._api_keys.find, request.key_id)
        caller().require_tenant(key.tenant, f"API key {key.key_id!r}")
        await self._run(self._api_keys.revoke, key)
        return admin_pb2.RevokeApiKeyResponse()

    async def CreateUser(
        self, request: admin_pb2.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateUserResponse:
        tenant = self._tenant_of(request.tenant)
        scopes = self._grantable(request.scopes, "scopes")
        user, secret = await self._run(
            self._store.create_user, tenant, request.username, request.password, scopes
        )
        call_record().resource = f"user/{user.username}"
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=ISSUER_LABEL)
        return admin_pb2.CreateUserResponse(user=_user(user), totp_secret=secret, totp_uri=uri)

    async def ListUsers(
        self, request: admin_pb2.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListUsersResponse:
        tenant = self._tenant_of(request.tenant)
        users = await self._run(self._store.users, tenant)
        return admin_pb2.ListUsersResponse(users=[_user(u) for u in users])

    async def DeleteUser(
        self, request: admin_pb2.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.DeleteUserResponse:
        call_record().resource = f"user/{request.username}"
        user = await self._run(self._store.user, request.username)
        caller().require_tenant(user.tenant, f"user {user.username!r}")
        await self._run(self._store.delete_user, user.username)
        return admin_pb2.DeleteUserResponse()

    async def SetScopes(
        self, request: admin_pb2.SetScopesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetScopesResponse:
        scopes = self._grantable(request.scopes, "scopes")
        target = request.WhichOneof("target")
        if target == "client_id":
            call_record().resource = f"client/{request.client_id}"
            client = await self._run(self._store.client, request.client_id)
            caller().require_tenant(client.tenant, f"client {client.client_id!r}")
            await self._run(self._store.set_client_scopes, client.client_id, scopes)
        elif target == "username":
            call_record().resource = f"user/{request.username}"
            user = await self._run(self._store.user, request.username)
            caller().require_tenant(user.tenant, f"user {user.username!r}")
            await self._run(self._store.set_user_scopes, user.username, scopes)
        else:
            raise InvalidArgument("target", "name a client_id or a username")
        return admin_pb2.SetScopesResponse(scopes=scopes)

    async def RotateSigningKey(
        self, request: admin_pb2.RotateSigningKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RotateSigningKeyResponse:
        if not caller().is_system_admin:
            raise PermissionDenied("only admins of tenant 'system' may rotate signing keys")
        if self._keyring is None:
            raise FailedPrecondition(
                "this gateway does not host the built-in issuer; rotate keys at your IdP"
            )
        kid = await self._run(self._keyring.rotate)
        jwks = await self._run(self._keyring.jwks)
        call_record().resource = f"signing-key/{kid}"
        return admin_pb2.RotateSigningKeyResponse(
            kid=kid, published=[k["kid"] for k in jwks["keys"]]
        )

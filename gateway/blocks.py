"""llmos.v1.Admin's blocklist RPCs: list, set and lift blocks at the door (admins of the
`system` tenant only: a block shuts out every tenant behind an address)."""

from __future__ import annotations

import ipaddress
import re

import grpc

from gateway.auth.principal import call_record, caller
from gateway.firewall import Block, Firewall, Target, address_target
from llmos.errors import InvalidArgument, PermissionDenied
from llmos.v1 import admin_pb2

#: how a principal is named in a block: `user:<subject>` or `client:<client_id>`; an
#: external IdP's subjects may hold any printable character (`auth0|5f...`)
PRINCIPAL = re.compile(r"^(user|client):[^\s\x00-\x1f\x7f]{1,255}$")
MAX_BLOCK_S = 30 * 86_400
MAX_REASON = 200


def target_of(request: admin_pb2.BlockTarget, field: str) -> Target:
    """The checked target a request names."""
    kind = request.WhichOneof("target")
    if kind == "address":
        try:
            ipaddress.ip_address(request.address.strip())
        except ValueError:
            raise InvalidArgument(
                f"{field}.address", f"{request.address[:64]!r} is not an IPv4 or IPv6 address"
            ) from None
        return address_target(request.address)
    if kind == "principal":
        if not PRINCIPAL.match(request.principal):
            raise InvalidArgument(
                f"{field}.principal", "must be `user:<subject>` or `client:<client_id>`"
            )
        return Target("principal", request.principal)
    raise InvalidArgument(field, "name an address or a principal")


def entry(target: Target, block: Block) -> admin_pb2.BlockEntry:
    message = admin_pb2.BlockEntry(reason=block.reason, signal=block.signal, blocked_by=block.by)
    if target.kind == "address":
        message.target.address = target.value
    else:
        message.target.principal = target.value
    message.until.FromSeconds(int(block.until))
    message.since.FromSeconds(int(block.since))
    return message


class BlocklistAdmin:
    """The blocklist half of the Admin service (mixed into `AdminServicer`)."""

    def __init__(self, firewall: Firewall, block_s: int) -> None:
        self._firewall = firewall
        self._block_s = block_s

    @staticmethod
    def _require_system_admin() -> None:
        if not caller().is_system_admin:
            raise PermissionDenied("only admins of tenant 'system' may manage blocks")

    async def ListBlocks(
        self, request: admin_pb2.ListBlocksRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListBlocksResponse:
        self._require_system_admin()
        blocks = await self._firewall.blocks()
        return admin_pb2.ListBlocksResponse(blocks=[entry(t, b) for t, b in blocks])

    async def Block(
        self, request: admin_pb2.BlockRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.BlockEntry:
        self._require_system_admin()
        target = target_of(request.target, "target")
        call_record().resource = f"{target.kind}/{target.value}"
        if not 0 <= request.duration_s <= MAX_BLOCK_S:
            raise InvalidArgument("duration_s", f"must be 0 (the default) to {MAX_BLOCK_S} s")
        if len(request.reason) > MAX_REASON:
            raise InvalidArgument("reason", f"at most {MAX_REASON} characters")
        reason = request.reason.strip() or "blocked by an administrator"
        who = caller()
        block = await self._firewall.block(
            target, int(request.duration_s or self._block_s), reason, by=who.subject
        )
        return entry(target, block)

    async def Unblock(
        self, request: admin_pb2.UnblockRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.UnblockResponse:
        self._require_system_admin()
        target = target_of(request.target, "target")
        call_record().resource = f"{target.kind}/{target.value}"
        return admin_pb2.UnblockResponse(removed=await self._firewall.unblock(target))

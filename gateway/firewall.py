"""The firewall at the gateway's door: client addresses and principals refused until a
time, shared by every gateway replica through Redis.

A block is one Redis string per target (`llmos:auth:ids:block:address:<ip>` or
`...:principal:<who>`) holding a small JSON entry, expiring with the block. Checking a
target is one GET, and a block this replica has seen is remembered in process for at
most `LOCAL_MEMORY_S`: a flood from a blocked address costs no Redis call at all, and an
unblock reaches every replica within that time (at once on the replica that lifted it).
An allowlist of addresses and networks is never blocked. Intrusion detection
(`gateway.intrusion`) sets blocks; admins list, set and lift them (`llmos admin blocks`).
"""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

from gateway.auth.identities import PREFIX
from gateway.auth.principal import Principal
from llmos.errors import PermissionDenied

BLOCK_PREFIX = f"{PREFIX}ids:block:"
#: every target blocked, scored by when its block ends: the list admins read (service
#: users may not SCAN key names)
BLOCK_INDEX = f"{PREFIX}ids:blocks"
#: how long a replica trusts its memory of a block before asking Redis again
LOCAL_MEMORY_S = 2.0
#: blocks remembered in process at most (oldest forgotten first)
LOCAL_MEMORY_ENTRIES = 10_000
DETECTOR = "intrusion-detection"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Target:
    """What a block applies to: `kind` is "address" or "principal"."""

    kind: str
    value: str

    @property
    def member(self) -> str:
        return f"{self.kind}:{self.value}"

    @property
    def key(self) -> str:
        return f"{BLOCK_PREFIX}{self.member}"

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"


def canonical_address(raw: str) -> str:
    """One spelling per address, whoever reports it: gRPC percent-encodes IPv6 brackets
    (`%5B::1%5D`), aiohttp does not; an IPv4 client of a dual-stack listener appears as
    `::ffff:1.2.3.4` and is counted, blocked and allowlisted as `1.2.3.4`. Anything
    that is no IP address (a Unix socket) is returned as given."""
    text = urllib.parse.unquote(raw).strip().strip("[]")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return raw
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def address_target(address: str) -> Target:
    return Target("address", canonical_address(address))


def client_target(client_id: str) -> Target:
    return Target("principal", f"client:{client_id}")


def user_target(subject: str) -> Target:
    return Target("principal", f"user:{subject}")


def principal_target(principal: Principal) -> Target:
    """A program is blocked by its client id (an API key by its key id); anyone else by
    their subject: a person's
    tokens carry the id of the app they signed in with, which other people share (and an
    external IdP's user tokens may not say they are a person's)."""
    if principal.api_key or (principal.subject == principal.client_id and not principal.is_user):
        return client_target(principal.client_id)
    return user_target(principal.subject)


@dataclass(frozen=True)
class Block:
    """One block's entry, as stored."""

    until: float
    since: float
    reason: str
    signal: str
    by: str

    def sentence(self, target: Target) -> str:
        """The refusal a blocked caller reads: what, until when, why."""
        when = datetime.fromtimestamp(self.until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"{target} is blocked until {when} ({self.reason}); "
            "an administrator can lift it with `llmos admin blocks unblock`"
        )

    def retry_after_s(self) -> int:
        return max(1, int(self.until - time.time() + 0.999))

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> Block:
        data = json.loads(raw)
        return cls(
            until=float(data["until"]),
            since=float(data.get("since", 0)),
            reason=str(data.get("reason", "")),
            signal=str(data.get("signal", "")),
            by=str(data.get("by", "")),
        )


class Blocked(PermissionDenied):
    """A call refused at the door because its address or principal is blocked."""

    def __init__(self, target: Target, block: Block) -> None:
        super().__init__(block.sentence(target))
        self.target = target
        self.block = block


class Allowlist:
    """Addresses and networks that are never blocked."""

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self.networks = networks

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        """Comma-separated addresses or CIDR networks; ValueError names a bad entry."""
        networks = []
        for item in (part.strip() for part in text.split(",")):
            if item:
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ValueError(f"{item!r} is not an address or network") from None
        return cls(tuple(networks))

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(canonical_address(address))
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def grpc_peer_address(peer: str) -> str:
    """`ipv4:1.2.3.4:5678` / `ipv6:%5B::1%5D:5678` -> the address (canonical); anything
    else unchanged."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return canonical_address(rest.rpartition(":")[0])
    return peer


def client_address(peer: str, forwarded_for: str, proxies: Allowlist) -> str:
    """Who is calling: the TCP peer (canonical), unless the peer is a trusted proxy; then
    the nearest address in `X-Forwarded-For` that is not one. Proxies append the address
    they saw, so walking from the right passes only hops we trust; what lies further
    left was written by the client and may be forged. A hop that is no address stops the
    walk at the last proxy."""
    address = canonical_address(peer)
    if not forwarded_for or not proxies.allows(address):
        return address
    for hop in reversed(forwarded_for.split(",")):
        seen = canonical_address(hop.strip())
        try:
            ipaddress.ip_address(seen)
        except ValueError:
            return address
        if not proxies.allows(seen):
            return seen
        address = seen
    return address


class Firewall:
    """Blocks in Redis, with a short in-process memory of the blocks seen."""

    def __init__(
        self, redis: aioredis.Redis, allowlist: Allowlist, proxies: Allowlist | None = None
    ) -> None:
        self._redis = redis
        self.allowlist = allowlist
        #: load balancers and proxies whose X-Forwarded-For is believed
        self.proxies = proxies or Allowlist(())
        self._memory: OrderedDict[str, tuple[Block, float]] = OrderedDict()

    def client_of(self, peer: str, forwarded_for: str) -> str:
        """The caller's address, seen through trusted proxies (see `client_address`)."""
        return client_address(peer, forwarded_for, self.proxies)

    def exempt(self, address: str) -> bool:
        return self.allowlist.allows(address)

    def remembered(self, target: Target) -> Block | None:
        """A block this replica saw recently (no Redis call), if still in force."""
        seen = self._memory.get(target.key)
        if seen is None:
            return None
        block, checked_at = seen
        now = time.time()
        if block.until <= now or now - checked_at > LOCAL_MEMORY_S:
            self._memory.pop(target.key, None)
            return None
        return block

    def remember(self, target: Target, block: Block) -> None:
        self._memory[target.key] = (block, time.time())
        self._memory.move_to_end(target.key)
        while len(self._memory) > LOCAL_MEMORY_ENTRIES:
            self._memory.popitem(last=False)

    def refuse_if_remembered(self, target: Target) -> None:
        block = self.remembered(target)
        if block is not None:
            raise Blocked(target, block)

    def refuse_stored(self, target: Target, raw: str | bytes | None) -> None:
        """Raise `Blocked` if `raw` (the target's entry, read by the caller) is a block."""
        if raw:
            block = Block.decode(raw)
            self.remember(target, block)
            raise Blocked(target, block)

    async def check(self, target: Target) -> None:
        """Raise `Blocked` if `target` is blocked: memory first, else one Redis GET."""
        if target.kind == "address" and self.exempt(target.value):
            return
        self.refuse_if_remembered(target)
        self.refuse_stored(target, await self._redis.get(target.key))

    async def block(self, target: Target, duration_s: int, reason: str, by: str) -> Block:
        """Block `target` for `duration_s` from now (replacing an earlier block)."""
        if target.kind == "address" and self.exempt(target.value):
            raise PermissionDenied(
                f"{target} is on the allowlist (LLMOS_INTRUSION_ALLOWLIST) and is never blocked"
            )
        now = time.time()
        block = Block(until=now + duration_s, since=now, reason=reason, signal="manual", by=by)
        async with self._redis.pipeline(transaction=True) as tx:
            tx.set(target.key, block.encode(), ex=duration_s)
            tx.zadd(BLOCK_INDEX, {target.member: block.until})
            tx.zremrangebyscore(BLOCK_INDEX, "-inf", now)
            await tx.execute()
        return block

    async def unblock(self, target: Target) -> bool:
        """Lift a block; False if there was none."""
        self._memory.pop(target.key, None)
        async with self._redis.pipeline(transaction=True) as tx:
            tx.delete(target.key)
            tx.zrem(BLOCK_INDEX, target.member)
            removed, _ = await tx.execute()
        return bool(removed)

    async def blocks(self) -> list[tuple[Target, Block]]:
        """Every block in force, soonest to end first."""
        await self._redis.zremrangebyscore(BLOCK_INDEX, "-inf", time.time())
        members = [
            m.decode() if isinstance(m, bytes) else str(m)
            for m in await self._redis.zrange(BLOCK_INDEX, 0, -1)
        ]
        targets = [Target(*member.split(":", 1)) for member in members]
        entries = await self._redis.mget([t.key for t in targets]) if targets else []
        return [
            (target, Block.decode(raw))
            for target, raw in zip(targets, entries, strict=True)
            if raw is not None  # lifted or expired meanwhile
        ]

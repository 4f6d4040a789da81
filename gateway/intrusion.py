"""Intrusion detection at the gateway: signals per client address and per principal,
counted in sliding windows in Redis (so every gateway replica sees the same counts), and
a block at the door (`gateway.firewall`) when a count crosses its threshold.

Signals: failed sign-ins and token requests at the OAuth endpoints, calls with a
missing, invalid or forged token, permission denials, rate-limit hits, malformed
requests. Sign-in failures and bad tokens name nobody verified, so they count against
the address only: counting them against the account they name would let anyone lock
anyone out. The rest count against the address and the verified principal.

A new block raises an `intrusion` event on JetStream (a system event: system admins get
it through SubscribeEvents), writes an audit record and a warning log, once, on the
replica whose signal crossed the threshold: the Lua script decides atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import redis.asyncio as aioredis

from gateway.auth.identities import PREFIX
from gateway.auth.principal import Principal
from gateway.firewall import (
    BLOCK_INDEX,
    DETECTOR,
    Allowlist,
    Block,
    Firewall,
    Target,
    address_target,
    principal_target,
)
from gateway.metrics import INTRUSION_EVENTS
from llmos import subjects
from llmos.auditing import AuditPublisher, new_record
from llmos.config import EnvReader
from llmos.errors import ResourceExhausted
from llmos.events import new_event
from llmos.messaging import EventPublisher

log = logging.getLogger("llmos.gateway.intrusion")


class Signal(StrEnum):
    SIGNIN_FAILED = "signin_failed"
    BAD_TOKEN = "bad_token"
    DENIED = "denied"
    RATE_LIMITED = "rate_limited"
    MALFORMED = "malformed"


#: how a block's reason names what was counted
_COUNTED = {
    Signal.SIGNIN_FAILED: "failed sign-ins or token requests",
    Signal.BAD_TOKEN: "calls with a missing, invalid or forged token",
    Signal.DENIED: "calls denied permission",
    Signal.RATE_LIMITED: "requests over a rate limit",
    Signal.MALFORMED: "malformed requests",
}

for _signal in Signal:  # every rule's series exists from the start: increase() sees the first
    INTRUSION_EVENTS.labels(str(_signal))

#: signals that also count against the verified principal
PRINCIPAL_SIGNALS = frozenset({Signal.DENIED, Signal.RATE_LIMITED, Signal.MALFORMED})


@dataclass(frozen=True)
class Rule:
    """Block when `threshold` signals arrive within `window_s` seconds."""

    threshold: int
    window_s: int

    def reason(self, signal: Signal) -> str:
        return f"{self.threshold} {_COUNTED[signal]} within {self.window_s} s"


DEFAULT_RULES = (
    "signin_failed=20/300,bad_token=30/60,denied=30/60,rate_limited=300/60,malformed=60/60"
)


def parse_rules(text: str) -> dict[Signal, Rule]:
    """`signal=count/window_s,...` over the defaults; ValueError names the bad part."""
    rules: dict[Signal, Rule] = {}
    for text_part in (DEFAULT_RULES, text):
        for item in (part.strip() for part in text_part.split(",")):
            if not item:
                continue
            name, _, spec = item.partition("=")
            count, _, window = spec.partition("/")
            try:
                signal = Signal(name.strip())
            except ValueError:
                known = ", ".join(s.value for s in Signal)
                raise ValueError(f"unknown signal {name.strip()!r}; known: {known}") from None
            if not (count.strip().isdigit() and window.strip().isdigit()):
                raise ValueError(f"{item!r} is not signal=count/window_s")
            rule = Rule(int(count), int(window))
            if not (1 <= rule.threshold <= 1_000_000 and 1 <= rule.window_s <= 86_400):
                raise ValueError(f"{item!r}: count 1..1000000, window 1..86400 s")
            rules[signal] = rule
    return rules


@dataclass(frozen=True)
class IntrusionPolicy:
    """What the gateway watches for and how it answers (all `LLMOS_INTRUSION_*`)."""

    enabled: bool
    rules: Mapping[Signal, Rule]
    block_s: int
    allowlist: Allowlist
    #: requests per minute one address may make to the OAuth endpoints (each sign-in
    #: costs a memory-hard hash); over it, 429 before any hashing
    signin_rpm: int
    #: OAuth requests hashing at once, at most (each hash takes 16 MiB)
    signin_concurrency: int
    #: load balancers and proxies whose X-Forwarded-For names the client
    proxies: Allowlist


def read_intrusion_policy(env: EnvReader) -> IntrusionPolicy:
    """Read and check the intrusion variables (errors are collected in `env`)."""
    enabled = env.choice(
        "INTRUSION_DETECTION", "on", ("on", "off"), doc="count signals and block at the door"
    )
    rules_text = env.text(
        "INTRUSION_RULES",
        "",
        doc="thresholds, `signal=count/window_s,...` over the defaults",
        default_shown=f"`{DEFAULT_RULES}`",
    )
    try:
        rules = parse_rules(rules_text)
    except ValueError as exc:
        env.errors.append(f"LLMOS_INTRUSION_RULES: {exc}")
        rules = parse_rules("")
    allowlist = _networks(
        env,
        "INTRUSION_ALLOWLIST",
        "addresses and networks never blocked (comma-separated, CIDR allowed)",
    )
    proxies = _networks(
        env,
        "TRUSTED_PROXIES",
        "load balancers and proxies (addresses, CIDR) whose X-Forwarded-For names the "
        "client; the gateway counts, blocks and audits that address instead of theirs",
    )
    return IntrusionPolicy(
        enabled=enabled == "on",
        rules=rules,
        block_s=env.integer(
            "INTRUSION_BLOCK_S",
            900,
            minimum=1,
            maximum=30 * 86_400,
            doc="how long intrusion detection blocks an address or principal, seconds",
        ),
        allowlist=allowlist,
        signin_rpm=env.integer(
            "SIGNIN_RPM_PER_ADDRESS",
            60,
            minimum=1,
            maximum=1_000_000,
            doc="OAuth requests per minute from one address (more: 429, nothing hashed)",
        ),
        signin_concurrency=env.integer(
            "SIGNIN_CONCURRENCY",
            4,
            minimum=1,
            maximum=256,
            doc="OAuth requests verifying a secret at once (16 MiB of memory each)",
        ),
        proxies=proxies,
    )


def _networks(env: EnvReader, name: str, doc: str) -> Allowlist:
    """A comma-separated list of addresses and networks (none by default); an entry that
    is neither is a configuration error naming the variable."""
    text = env.text(name, "", doc=doc, default_shown="none")
    try:
        return Allowlist.parse(text)
    except ValueError as exc:
        env.errors.append(f"LLMOS_{name}: {exc}")
        return Allowlist(())


#: Lua both scripts share: a sliding window is a hash of one-second buckets; this drops
#: the buckets older than `window` and returns the sum of the rest and its oldest second.
_WINDOW = """
local function in_window(key, now, window)
  local buckets = redis.call('HGETALL', key)
  local seen, oldest = 0, now
  for j = 1, #buckets, 2 do
    local second = tonumber(buckets[j])
    if second <= now - window then
      redis.call('HDEL', key, buckets[j])
    else
      seen = seen + tonumber(buckets[j + 1])
      if second < oldest then oldest = second end
    end
  end
  return seen, oldest
end
"""


#: KEYS: block index, then (counts, block) per target. ARGV: signal, threshold, window,
#: block seconds, reason, blocked-by, then the index member of each target.
#: Returns, per target newly blocked: its position (1-based), the count, until.
_OBSERVE = (
    _WINDOW
    + """
local now = tonumber(redis.call('TIME')[1])
local threshold, window, block_s = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 2, #KEYS, 2 do
  local counts, block = KEYS[i], KEYS[i + 1]
  if redis.call('EXISTS', block) == 0 then
    redis.call('HINCRBY', counts, now, 1)
    redis.call('EXPIRE', counts, window + 1)
    local seen = in_window(counts, now, window)
    if seen >= threshold then
      local entry = {since = now, reason = ARGV[5], signal = ARGV[1], by = ARGV[6]}
      entry['until'] = now + block_s
      redis.call('SET', block, cjson.encode(entry), 'EX', block_s)
      redis.call('ZADD', KEYS[1], now + block_s, ARGV[6 + i / 2])
      redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
      redis.call('DEL', counts)
      table.insert(out, i / 2)
      table.insert(out, seen)
      table.insert(out, now + block_s)
    end
  end
end
return out
"""
)

#: The door of the OAuth endpoints, for one address: blocked? else under its rate?
#: KEYS: block, window. ARGV: requests per window, window.
#: Returns {0} admitted, {1, entry} blocked, {2, retry-after s} over the rate.
_SIGNIN_DOOR = (
    _WINDOW
    + """
local entry = redis.call('GET', KEYS[1])
if entry then return {1, entry} end
local now = tonumber(redis.call('TIME')[1])
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local used, oldest = in_window(KEYS[2], now, window)
if used >= limit then return {2, oldest + window - now} end
redis.call('HINCRBY', KEYS[2], now, 1)
redis.call('EXPIRE', KEYS[2], window + 1)
return {0}
"""
)

SIGNIN_WINDOW_S = 60


class IntrusionDetector:
    """Counts signals, blocks at thresholds, and tells admins."""

    def __init__(
        self,
        redis: aioredis.Redis,
        firewall: Firewall,
        policy: IntrusionPolicy,
        events: EventPublisher,
        audit: AuditPublisher,
        gateway: str,
    ) -> None:
        self._observe = redis.register_script(_OBSERVE)
        self._signin_door = redis.register_script(_SIGNIN_DOOR)
        self.firewall = firewall
        self.policy = policy
        self._events = events
        self._audit = audit
        self._gateway = gateway

    async def observe(self, signal: Signal, address: str, principal: Principal | None) -> None:
        """Count one signal against `address` (unless allowlisted) and, for signals that
        name a verified identity, `principal`; block whatever crossed its threshold."""
        if not self.policy.enabled:
            return
        targets: list[Target] = []
        if address and not self.firewall.exempt(address):
            targets.append(address_target(address))  # canonical spelling
        if principal is not None and signal in PRINCIPAL_SIGNALS:
            targets.append(principal_target(principal))
        if not targets:
            return
        rule = self.policy.rules[signal]
        keys = [BLOCK_INDEX]
        for target in targets:
            keys += [f"{PREFIX}ids:seen:{signal.value}:{target.member}", target.key]
        args = [
            signal.value,
            rule.threshold,
            rule.window_s,
            self.policy.block_s,
            rule.reason(signal),
            DETECTOR,
            *(t.member for t in targets),
        ]
        answer = [int(x) for x in await self._observe(keys=keys, args=args)]
        for k in range(0, len(answer), 3):
            position, count, until = answer[k : k + 3]
            target = targets[position - 1]
            block = Block(
                until=float(until),
                since=float(until - self.policy.block_s),
                reason=rule.reason(signal),
                signal=signal.value,
                by=DETECTOR,
            )
            self.firewall.remember(target, block)
            await self._raise_alarm(target, block, count, rule, address, principal)

    async def signin_door(self, address: str) -> None:
        """Before an OAuth request is read: refuse a blocked address (`Blocked`) or one over
        its per-address rate (`ResourceExhausted`); one Redis call, no hashing. Both hold
        with detection off (blocks set by hand, the rate protects the hashing)."""
        if self.firewall.exempt(address):
            return
        target = address_target(address)
        self.firewall.refuse_if_remembered(target)
        keys = [target.key, f"{PREFIX}ids:signin:{target.value}"]
        answer = await self._signin_door(keys=keys, args=[self.policy.signin_rpm, SIGNIN_WINDOW_S])
        if int(answer[0]) == 1:
            self.firewall.refuse_stored(target, answer[1])
        if int(answer[0]) == 2:
            retry = max(1, int(answer[1]))
            await self.observe(Signal.RATE_LIMITED, address, None)
            raise ResourceExhausted(
                f"too many sign-in requests from {target.value}: at most "
                f"{self.policy.signin_rpm} per minute; retry after {retry} s",
                retry_after_s=float(retry),
            )

    async def _raise_alarm(
        self,
        target: Target,
        block: Block,
        count: int,
        rule: Rule,
        address: str,
        principal: Principal | None,
    ) -> None:
        """Event, audit record and log for a new block; none of them may fail the call."""
        log.warning(
            "intrusion: blocked at the door",
            extra={"target": str(target), "reason": block.reason, "until": block.until},
        )
        record = new_record("gateway", "intrusion.block")
        record.resource = f"{target.kind}/{target.value}"
        record.outcome = "BLOCKED"
        record.detail = block.sentence(target)
        record.client_address = address
        if principal is not None:
            record.principal = principal.subject
            record.client_id = principal.client_id
            record.tenant = principal.tenant
        self._audit.record(record)
        INTRUSION_EVENTS.labels(str(block.signal)).inc()
        event = new_event("gateway")
        intrusion = event.intrusion
        if target.kind == "address":
            intrusion.address = target.value
        else:
            intrusion.principal = target.value
        intrusion.signal = block.signal
        intrusion.count = count
        intrusion.window_s = rule.window_s
        intrusion.until.FromSeconds(int(block.until))
        intrusion.gateway = self._gateway
        try:
            await self._events.publish(subjects.INTRUSION, event)
        except Exception as exc:  # the block stands; the audit record says it too
            log.error("intrusion event not published", extra={"error": str(exc)})

"""The pure parts of intrusion detection: reading thresholds and the allowlist, naming
targets, and reading a gRPC peer's address."""

from __future__ import annotations

import re
import time

import pytest

from gateway.auth.principal import Principal
from gateway.auth.verifier import StaleToken
from gateway.firewall import (
    Allowlist,
    Block,
    canonical_address,
    client_address,
    grpc_peer_address,
    principal_target,
)
from gateway.guard import signal_of
from gateway.intrusion import Rule, Signal, parse_rules
from gateway.limits import RateLimited
from llmos.errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated


def test_rules_override_the_defaults_one_signal_at_a_time() -> None:
    rules = parse_rules("denied=5/10")
    assert rules[Signal.DENIED] == Rule(5, 10)
    assert rules[Signal.SIGNIN_FAILED] == Rule(20, 300)
    assert set(rules) == set(Signal)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("typo=5/10", "unknown signal 'typo'"),
        ("denied=5", "is not signal=count/window_s"),
        ("denied=0/10", "count 1..1000000"),
        ("denied=-1/10", "is not signal=count/window_s"),
    ],
)
def test_bad_rules_are_refused_with_the_part_that_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_rules(text)


def test_the_allowlist_takes_addresses_and_networks_of_both_families() -> None:
    allow = Allowlist.parse("10.0.0.0/8, 192.168.1.7 ,::1")
    assert allow.allows("10.200.3.4") and allow.allows("192.168.1.7") and allow.allows("::1")
    assert not allow.allows("192.168.1.8") and not allow.allows("not-an-address")
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33' is not an address or network")):
        Allowlist.parse("10.0.0.0/33")


def test_every_spelling_of_an_address_is_counted_as_one() -> None:
    # grpcio percent-encodes IPv6 brackets; aiohttp reports the bare address
    assert grpc_peer_address("ipv4:127.0.0.2:51234") == "127.0.0.2"
    assert grpc_peer_address("ipv6:%5B::1%5D:51234") == "::1"
    assert grpc_peer_address("ipv6:[2001:DB8::1]:51234") == "2001:db8::1"
    assert grpc_peer_address("unix:/run/llmos.sock") == "unix:/run/llmos.sock"
    # an IPv4 client of a dual-stack listener is its IPv4 address, for the allowlist too
    assert canonical_address("::ffff:192.0.2.7") == "192.0.2.7"
    assert grpc_peer_address("ipv6:%5B::ffff:192.0.2.7%5D:443") == "192.0.2.7"
    assert Allowlist.parse("192.0.2.0/24").allows("::ffff:192.0.2.7")


def test_behind_trusted_proxies_the_client_is_the_nearest_untrusted_hop() -> None:
    proxies = Allowlist.parse("10.0.0.0/8")
    # the load balancer (10.0.0.2) saw 198.51.100.7; the client's own claims lie further left
    assert client_address("10.0.0.2", "6.6.6.6, 198.51.100.7", proxies) == "198.51.100.7"
    assert client_address("10.0.0.2", "198.51.100.7, 10.0.0.9", proxies) == "198.51.100.7"
    # a peer that is no trusted proxy is the client, whatever header it sends
    assert client_address("203.0.113.5", "198.51.100.7", proxies) == "203.0.113.5"
    # a hop that is no address ends the walk at the last proxy
    assert client_address("10.0.0.2", "junk", proxies) == "10.0.0.2"
    assert client_address("10.0.0.2", "", proxies) == "10.0.0.2"
    assert client_address("::ffff:10.0.0.2", "[2001:db8::1]", proxies) == "2001:db8::1"


def test_people_are_blocked_by_subject_and_programs_by_client() -> None:
    person = Principal("ada", "acme", "llmos-cli", frozenset(), is_user=True)
    program = Principal("svc-1", "acme", "svc-1", frozenset())
    # an external IdP's user token may not say it is a person's: its subject decides,
    # so one user's misdeeds never block the app everyone signs in with
    idp_user = Principal("auth0|5f1c", "acme", "web-app", frozenset())
    assert principal_target(person).value == "user:ada"
    assert principal_target(program).value == "client:svc-1"
    assert principal_target(idp_user).value == "user:auth0|5f1c"


@pytest.mark.parametrize(
    ("failure", "signal"),
    [
        (Unauthenticated("token signature is invalid"), Signal.BAD_TOKEN),
        (StaleToken("token expired at ..."), None),  # clients refresh: no sign of attack
        (RateLimited("...", retry_after_s=3.0, own=True), Signal.RATE_LIMITED),
        (RateLimited("...", retry_after_s=3.0, own=False), None),  # the tenant's, shared
        (PermissionDenied("needs scope"), Signal.DENIED),
        (InvalidArgument("prompt", "empty"), Signal.MALFORMED),
        (ResourceExhausted("queue full"), None),
        (None, None),
    ],
)
def test_what_a_failed_call_counts_as(failure: Exception | None, signal: Signal | None) -> None:
    assert signal_of(failure) == signal


def test_a_block_says_what_until_when_and_why() -> None:
    block = Block(until=time.time() + 90, since=time.time(), reason="20 x", signal="s", by="d")
    sentence = block.sentence(
        principal_target(Principal("ada", "t", "c", frozenset(), is_user=True))
    )
    assert sentence.startswith("principal user:ada is blocked until ")
    assert "UTC (20 x)" in sentence and "llmos admin blocks unblock" in sentence
    assert 89 <= block.retry_after_s() <= 91
    assert Block.decode(block.encode()) == block

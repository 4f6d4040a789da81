"""The Redis ACL table: every service has a user, and each user's rules say what the
design promises (no I/O: the rules as rendered into redis.conf)."""

from __future__ import annotations

import hashlib

from llmos.redis_acl import USERS, acl_lines, registry_pattern
from llmos.services import SERVICE_MODULES
from llmos.trust import SETUP_USER


def _lines() -> dict[str, list[str]]:
    rendered = acl_lines({name: f"pw-{name}" for name in USERS})
    return {line.split()[1]: line.split()[2:] for line in rendered}


def test_every_service_and_the_setup_identity_has_a_user_and_default_is_off() -> None:
    lines = _lines()
    assert set(lines) == {*SERVICE_MODULES, SETUP_USER, "default"}
    assert "off" in lines["default"] and "on" not in lines["default"]
    assert not any(r[0] in ">#" or r == "nopass" for r in lines["default"])  # no password


def test_passwords_are_kept_only_as_their_digest() -> None:
    rendered = "\n".join(acl_lines({name: f"pw-{name}" for name in USERS}))
    assert "pw-gateway" not in rendered
    assert f"#{hashlib.sha256(b'pw-gateway').hexdigest()}" in rendered


def test_only_the_gateway_may_reach_identities() -> None:
    holders = {name for name, rules in _lines().items() if "~llmos:auth:*" in rules}
    assert holders == {"gateway"}


def test_each_service_writes_only_its_own_registry_entries_and_reads_all() -> None:
    lines = _lines()
    for service in SERVICE_MODULES:
        writable = {r[1:] for r in lines[service] if r.startswith("~")}
        assert registry_pattern(service) in writable
        assert not any(
            p.startswith("llmos:services:") for p in writable - {registry_pattern(service)}
        )
        assert "%R~llmos:services:*" in lines[service]


def test_only_services_that_run_lua_may_script_and_none_may_use_functions() -> None:
    lines = _lines()
    scripting = {s for s in SERVICE_MODULES if "+evalsha" in lines[s]}
    assert scripting == {"gateway", "scheduler", "audit"}
    for service in SERVICE_MODULES:
        assert "-@scripting" in lines[service]
        assert not any(r.startswith("+function") for r in lines[service])

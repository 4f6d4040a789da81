"""Who may do what in Redis: one ACL user per service, and the `setup` user.

The one table of Redis permissions (issue 15, "zero trust inside"). Each service's user
reaches only its own keys; every service user may read the whole service registry but
write only its own service's registrations (read/write-separated patterns, Redis 7 /
Valkey), so no service can announce an instance under another one's name. Only the
gateway touches identities, keys, limits and the response cache. Scripting (EVAL,
EVALSHA, SCRIPT LOAD/EXISTS; never FUNCTION) is granted only to the users whose code runs
Lua, the part of the server with the worst advisories. The `default` user is off.

Pure: `start_redis` (tools/devstack/infra.py) renders `acl_lines()` into redis.conf.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from llmos.trust import SETUP_USER

#: every instance of a service registers under `<REGISTRY_PREFIX><service>:...`
REGISTRY_PREFIX = "llmos:services:"

#: what every service user may run: reading and writing its keys, MULTI/EXEC, its own
#: connection; never the dangerous commands (KEYS, FLUSHALL, CONFIG, DEBUG, RESTORE,
#: CLIENT KILL...), nor listing key names it may not read (SCAN, RANDOMKEY), nor pub/sub;
#: nor geo commands, which nobody uses and whose GEORADIUS ... STORE escapes the key
#: patterns before Valkey 8.1.10 (valkey#3971)
BASE_COMMANDS = (
    "-@all",
    "+@read",
    "+@write",
    "+@transaction",
    "+@connection",
    "-@dangerous",
    "-@scripting",
    "-@pubsub",
    "-@geo",
    "-scan",
    "-randomkey",
)
#: what a user whose code runs Lua may add (redis-py's Script: EVALSHA, SCRIPT LOAD on a
#: miss, SCRIPT EXISTS in pipelines); TIME because the rate limit script reads the clock
SCRIPTING_COMMANDS = ("+eval", "+evalsha", "+script|load", "+script|exists", "+time")


@dataclass(frozen=True)
class RedisUser:
    """A Redis ACL user: the key patterns it reads and writes, whether it runs Lua."""

    name: str
    #: key patterns it may read and write, beyond its own registry entries
    keys: tuple[str, ...] = ()
    scripting: bool = False
    #: every command on every key (the launcher and the tests)
    unrestricted: bool = False

    def rules(self) -> list[str]:
        """Its ACL rules after the password (`ACL SETUSER` / redis.conf `user` syntax)."""
        if self.unrestricted:
            return ["~*", "&*", "+@all"]
        commands = [*BASE_COMMANDS, *(SCRIPTING_COMMANDS if self.scripting else ())]
        keys = [f"~{pattern}" for pattern in (*self.keys, registry_pattern(self.name))]
        return ["resetchannels", *commands, *keys, f"%R~{REGISTRY_PREFIX}*"]


def registry_pattern(service: str) -> str:
    """The keys holding `service`'s registrations (only its own user writes them)."""
    return f"{REGISTRY_PREFIX}{service}:*"


#: user -> what it may do. Keys: gateway/auth/identities.py + gateway/limits.py
#: (llmos:auth:*), gateway/cache.py, gateway/deployments.py, gateway/apps/conversations.py;
#: services/scheduler/jobs.py
#: and training.py's lease; services/audit/app.py's writer lease; llmos/registry.py.
USERS: dict[str, RedisUser] = {
    user.name: user
    for user in (
        RedisUser(
            "gateway",
            keys=(
                "llmos:auth:*",
                "llmos:cache:*",
                "llmos:deployments:*",
                "llmos:conversations:*",
            ),
            scripting=True,
        ),
        RedisUser("scheduler", keys=("llmos:jobs:*", "llmos:sched:*"), scripting=True),
        RedisUser("audit", keys=("llmos:audit:*",), scripting=True),
        RedisUser("storage"),
        RedisUser("trainer"),
        RedisUser("inference-worker"),
        RedisUser(SETUP_USER, unrestricted=True),
    )
}


def acl_lines(passwords: dict[str, str]) -> list[str]:
    """redis.conf lines defining every user in USERS (each password given in clear, kept
    only as its SHA-256) and switching the `default` user off."""
    # Off, with no password, nobody can be `default`. Its rights stay whole because
    # Valkey before 8.1.10 checks them when it replays MULTI/EXEC from the AOF at start
    # (valkey#3984): with `-@all` every transaction was silently lost on restart.
    lines = ["user default reset off ~* &* +@all"]
    for name, user in USERS.items():
        digest = hashlib.sha256(passwords[name].encode()).hexdigest()
        lines.append(" ".join(["user", name, "reset", "on", f"#{digest}", *user.rules()]))
    return lines

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


# -- replication and Sentinel (issue 22: `--cluster`, Kubernetes) ---------------------------

#: the user a replica copies its primary as (`masteruser`)
REPLICA_USER = "replica"
#: the user Sentinels watch and reconfigure the servers as, and know each other by
SENTINEL_USER = "sentinel"
#: what a replica needs on its primary (Redis docs, "Replication", authentication)
REPLICA_RULES = ("-@all", "+psync", "+replconf", "+ping")
#: what a Sentinel runs on the servers it watches (Redis docs, "Sentinel", ACL): it
#: promotes a replica (REPLICAOF, CONFIG REWRITE) and talks to its peers on a channel
SENTINEL_RULES = (
    "-@all",
    "allchannels",
    "+multi",
    "+exec",
    "+slaveof",
    "+replicaof",
    "+ping",
    "+info",
    "+role",
    "+subscribe",
    "+publish",
    "+config|rewrite",
    "+client|setname",
    "+client|kill",
    "+script|kill",
)
#: what a service may ask a Sentinel: where the primary is (redis-py's Sentinel reads
#: SENTINEL MASTERS), nothing that changes it (FAILOVER, SET, REMOVE)
SENTINEL_CLIENT_RULES = (
    "-@all",
    "+sentinel|masters",
    "+sentinel|get-master-addr-by-name",
    "+sentinel|sentinels",
    "+sentinel|replicas",
    "+sentinel|slaves",
    "+ping",
    "+client|setname",
    "+client|setinfo",
)


def _user_line(name: str, password: str, rules: tuple[str, ...] | list[str]) -> str:
    digest = hashlib.sha256(password.encode()).hexdigest()
    return " ".join(["user", name, "reset", "on", f"#{digest}", *rules])


def replication_acl_lines(passwords: dict[str, str]) -> list[str]:
    """The lines a replicated server adds to `acl_lines`: the replica's and the
    Sentinels' users (`passwords` names them too)."""
    return [
        _user_line(REPLICA_USER, passwords[REPLICA_USER], REPLICA_RULES),
        _user_line(SENTINEL_USER, passwords[SENTINEL_USER], SENTINEL_RULES),
    ]


def sentinel_acl_lines(passwords: dict[str, str]) -> list[str]:
    """A Sentinel's own users: `default` off, the setup user and its peers (every right:
    they run the failover), and each service's user, which may only ask where the
    primary is, with the same password it has on the servers."""
    lines = ["user default reset off"]
    for name in USERS:
        rules = ("allchannels", "+@all") if name == SETUP_USER else SENTINEL_CLIENT_RULES
        lines.append(_user_line(name, passwords[name], rules))
    lines.append(_user_line(SENTINEL_USER, passwords[SENTINEL_USER], ("allchannels", "+@all")))
    return lines

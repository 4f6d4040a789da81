"""Who may publish and subscribe to what on NATS: one table, rendered into nats-server's
configuration by whoever starts it (the setup identity).

Each service connects as its own user (`<secrets>/nats/<service>.json`) and may publish
and subscribe only to its own subjects. Workers and trainers, of which many run, get a
user per instance: each claims a free *slot* (`inference-worker-3`, its own credentials
file) at start, and may heartbeat, and take work, only on subjects naming its slot.

Replies: each user's inboxes carry a private prefix (`_INBOX_<user>.`) that only it may
subscribe to; a service answering a request may publish to that request's reply subject
(`allow_responses`), and workers (and the scheduler, for failures) stream generations
straight to the gateway's inboxes. Only the setup user may create, update, purge or
delete streams; only the audit service consumes the audit stream. Because a user can
publish audit records only on `llmos.audit.<its service>`, the audit service stamps each
record's source from the subject.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from llmos import subjects
from llmos.trust import SETUP_USER, Credentials

#: JetStream API calls any service makes: stream lookups (publishing checks the stream)
_STREAM_INFO = "$JS.API.STREAM.INFO.*"
#: how long (and how many messages) a responder may answer one request: a generation
#: streams every token to the gateway's inbox through the same permission
_RESPONSES = {"max": 1_000_000, "expires": "30m"}


def inbox_prefix(user: str) -> str:
    """The private prefix of `user`'s reply inboxes (nats-py `inbox_prefix`)."""
    return f"_INBOX_{user}"


def _own(user: str) -> list[str]:
    """What every service user may do in its own name: lifecycle events, audit records,
    stream lookups."""
    return [
        f"{subjects.EVENTS_PREFIX}.service.{user}.>",
        subjects.audit(user),
        _STREAM_INFO,
    ]


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responds: bool = False


GATEWAY_INBOXES = f"{inbox_prefix('gateway')}.>"

#: services that run as many instances, each with a NATS user (slot) of its own
SLOTTED = ("inference-worker", "trainer")
DEFAULT_SLOTS = 8


def slot_users(service: str, count: int = DEFAULT_SLOTS) -> list[str]:
    return [f"{service}-{k}" for k in range(1, count + 1)]


def _worker(slot: str) -> Permissions:
    return Permissions(
        publish=(
            *_own("inference-worker"),
            f"{subjects.HEARTBEAT_PREFIX}.inference-worker.{slot}.*",
            subjects.WORK_PROGRESS,
            GATEWAY_INBOXES,
        ),
        subscribe=(
            subjects.CANCEL_WORK,
            f"{subjects.WORK_PREFIX}.generate.{slot}.*",
            *(f"{subjects.WORK_PREFIX}.{task}.*" for task in subjects.ONE_SHOT_TASKS),
        ),
        responds=True,
    )


def _trainer(slot: str) -> Permissions:
    return Permissions(
        publish=(
            *_own("trainer"),
            f"{subjects.HEARTBEAT_PREFIX}.trainer.{slot}.*",
            f"{subjects.JOB_REPORTS}.{slot}.*",
        ),
        subscribe=(
            f"{subjects.WORK_PREFIX}.train.{slot}.*",
            f"{subjects.WORK_PREFIX}.trainctl.{slot}.*",
        ),
        responds=True,
    )


def permissions(user: str) -> Permissions:
    """What `user` (a service, or a slot of a slotted one) may do."""
    if user in PERMISSIONS:
        return PERMISSIONS[user]
    service = user.rpartition("-")[0]
    if service == "inference-worker":
        return _worker(user)
    if service == "trainer":
        return _trainer(user)
    raise KeyError(f"no NATS permissions for user {user!r}")


PERMISSIONS: Mapping[str, Permissions] = {
    "gateway": Permissions(
        publish=(
            *_own("gateway"),
            subjects.INTRUSION,
            subjects.SCHEDULE_GENERATE,
            subjects.ASSISTANT_HANDOFF,
            subjects.CANCEL_WORK,
            *(f"{subjects.WORK_PREFIX}.{task}.*" for task in subjects.ONE_SHOT_TASKS),
        ),
        subscribe=(subjects.ALL_HEARTBEATS, subjects.ALL_EVENTS),
    ),
    "scheduler": Permissions(
        publish=(
            *_own("scheduler"),
            f"{subjects.EVENTS_PREFIX}.job.>",
            f"{subjects.WORK_PREFIX}.generate.>",
            f"{subjects.WORK_PREFIX}.train.>",
            f"{subjects.WORK_PREFIX}.trainctl.>",
            GATEWAY_INBOXES,  # a generation that failed before reaching a worker
        ),
        subscribe=(
            subjects.SCHEDULE_GENERATE,
            subjects.WORK_PROGRESS,
            subjects.CANCEL_WORK,
            subjects.ALL_JOB_REPORTS,
            subjects.ALL_HEARTBEATS,
            f"{subjects.EVENTS_PREFIX}.job.>",
        ),
        responds=True,
    ),
    "storage": Permissions(publish=tuple(_own("storage")), subscribe=()),
    "audit": Permissions(
        publish=(
            *_own("audit"),
            subjects.ALL_WITNESS,
            f"$JS.API.CONSUMER.CREATE.{subjects.AUDIT_STREAM}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.AUDIT_STREAM}.>",
            f"$JS.API.CONSUMER.INFO.{subjects.AUDIT_STREAM}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{subjects.AUDIT_STREAM}.>",
            f"$JS.API.STREAM.MSG.GET.{subjects.WITNESS_STREAM}",
            f"$JS.API.DIRECT.GET.{subjects.WITNESS_STREAM}.>",
        ),
        subscribe=(),
        responds=True,  # acknowledging what it committed
    ),
}

#: every user but setup: the single-instance services, then each slot
SERVICE_USERS = (*PERMISSIONS, *(u for s in SLOTTED for u in slot_users(s)))


def render_users(credentials: Mapping[str, Credentials]) -> str:
    """The `authorization { users = [...] }` block for nats-server's configuration:
    the setup user with every right, each service with its table entry."""
    users = []
    for name, creds in credentials.items():
        entry: dict[str, object] = {"user": creds.user, "password": creds.password.reveal()}
        if name != SETUP_USER:
            rules = permissions(name)
            granted: dict[str, object] = {
                "publish": {"allow": list(rules.publish)},
                "subscribe": {"allow": [*rules.subscribe, f"{inbox_prefix(name)}.>"]},
            }
            if rules.responds:
                granted["allow_responses"] = _RESPONSES
            entry["permissions"] = granted
        users.append(entry)
    # nats-server's configuration language reads JSON values
    return f"authorization {{\n  users = {json.dumps(users, indent=2)}\n}}\n"

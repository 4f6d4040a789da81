"""NATS subjects and JetStream streams: the one place their names are spelled.

Events:  llmos.events.<kind>.<...>   stream LLMOS_EVENTS (durable, for subscribers)
Audit:   llmos.audit.<source>        stream LLMOS_AUDIT  (durable, for the audit service)
Witness: llmos.witness.audit.<key>   stream LLMOS_WITNESS (the audit log's newest checkpoints)

Subjects addressed to one worker or trainer instance carry its NATS user (its *slot*,
`inference-worker-3`) before its instance id, so a permission per slot user can say
"only your own": an instance id starts with its slot (`inference-worker-3-<random>`).
"""

from __future__ import annotations

EVENTS_PREFIX = "llmos.events"
AUDIT_PREFIX = "llmos.audit"
WITNESS_PREFIX = "llmos.witness"

EVENTS_STREAM = "LLMOS_EVENTS"
AUDIT_STREAM = "LLMOS_AUDIT"
WITNESS_STREAM = "LLMOS_WITNESS"

ALL_EVENTS = f"{EVENTS_PREFIX}.>"
ALL_AUDIT = f"{AUDIT_PREFIX}.>"
ALL_WITNESS = f"{WITNESS_PREFIX}.>"

#: Every kind of event, the second token of its subject.
EVENT_KINDS = ("service", "job", "model", "security", "assistant")


def service_lifecycle(service: str, phase: str) -> str:
    """Subject of a service's started/stopping/stopped event."""
    return f"{EVENTS_PREFIX}.service.{_token(service)}.{_token(phase)}"


def job_event(job_id: str) -> str:
    """Subject of a job's state changes and progress."""
    return f"{EVENTS_PREFIX}.job.{_token(job_id)}"


#: intrusion detection's blocks (published by the gateway; system events)
INTRUSION = f"{EVENTS_PREFIX}.security.intrusion"
#: a customer-service conversation asks for a person (a tenant's event)
ASSISTANT_HANDOFF = f"{EVENTS_PREFIX}.assistant.handoff"
#: the audit log fell behind, or caught up (a service event of the audit service's own)
AUDIT_LAG = f"{EVENTS_PREFIX}.service.audit.lag"


def audit(source: str) -> str:
    """Subject an audit record from `source` is published on."""
    return f"{AUDIT_PREFIX}.{_token(source)}"


def audit_witness(key_id: str) -> str:
    """Subject on which the audit log signed by `key_id` publishes its checkpoints."""
    return f"{WITNESS_PREFIX}.audit.{_token(key_id)}"


def events_of_kind(kind: str) -> str:
    """Wildcard subject for one kind of event."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; expected one of {', '.join(EVENT_KINDS)}")
    return f"{EVENTS_PREFIX}.{kind}.>"


def _token(value: str) -> str:
    """A subject token may not contain separators or wildcards."""
    if not value or any(c in value for c in ".*> \t\r\n"):
        raise ValueError(f"{value!r} cannot be used as a NATS subject token")
    return value


# -- work handed to inference workers (core NATS request/reply, queue group) -------------

WORK_PREFIX = "llmos.work"
INFERENCE_QUEUE = "inference-workers"
CANCEL_WORK = f"{WORK_PREFIX}.cancel"


def slot_of(instance_id: str) -> str:
    """The NATS user (slot) an instance id belongs to: the id without its random tail."""
    slot, sep, _ = instance_id.rpartition("-")
    return slot if sep and slot else instance_id


def _instance(instance_id: str) -> str:
    """`<slot>.<instance id>`: two tokens, the first one a permission can name."""
    return f"{_token(slot_of(instance_id))}.{_token(instance_id)}"


def worker_generate(instance_id: str) -> str:
    """Where the scheduler sends a generation it placed on one worker."""
    return f"{WORK_PREFIX}.generate.{_instance(instance_id)}"


def trainer_assign(instance_id: str) -> str:
    """Where the scheduler hands a trainer its share of a job (request/reply)."""
    return f"{WORK_PREFIX}.train.{_instance(instance_id)}"


def trainer_control(instance_id: str) -> str:
    """Where the scheduler tells a trainer to preempt, cancel or abort a job."""
    return f"{WORK_PREFIX}.trainctl.{_instance(instance_id)}"


#: trainer -> scheduler: a job attempt's progress and end (request/reply, retried), on
#: the trainer's own subject (`job_report`), which only it may publish on
JOB_REPORTS = "llmos.sched.jobreport"
ALL_JOB_REPORTS = f"{JOB_REPORTS}.>"


def job_report(instance_id: str) -> str:
    """Where trainer `instance_id` reports on the jobs it runs."""
    return f"{JOB_REPORTS}.{_instance(instance_id)}"


#: schedulers share reports and generations: one of them answers each
SCHEDULER_QUEUE = "schedulers"

#: gateway -> scheduler: queue a generation (request/reply)
SCHEDULE_GENERATE = "llmos.sched.generate"
#: worker -> scheduler: a leased generation started or finished
WORK_PROGRESS = "llmos.sched.progress"


def embed_work(model: str) -> str:
    """Where embedding requests for `model` go."""
    return f"{WORK_PREFIX}.embed.{_token(model)}"


def classify_work(model: str) -> str:
    """Where classification requests for `model` go."""
    return f"{WORK_PREFIX}.classify.{_token(model)}"


def entities_work(model: str) -> str:
    """Where named-entity requests for the entity model `model` go."""
    return f"{WORK_PREFIX}.entities.{_token(model)}"


def translate_work(model: str) -> str:
    """Where translation requests for the translation model `model` go."""
    return f"{WORK_PREFIX}.translate.{_token(model)}"


#: the one-shot tasks a worker takes from a queue group, by the subject's third token
ONE_SHOT_TASKS = ("embed", "classify", "entities", "translate")


# -- worker heartbeats (core NATS: only the latest one matters) ----------------------------

HEARTBEAT_PREFIX = "llmos.heartbeat"
ALL_HEARTBEATS = f"{HEARTBEAT_PREFIX}.>"


def heartbeat(service: str, instance_id: str) -> str:
    """Where a worker's status goes every heartbeat."""
    return f"{HEARTBEAT_PREFIX}.{_token(service)}.{_instance(instance_id)}"

"""Between the wire and the log: an `AuditRecord` as published becomes a stored `Entry`
under the privacy policy, and a stored record becomes a `StoredAuditRecord` again."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError

from llmos import subjects
from llmos.redaction import RedactionPolicy, pseudonym
from llmos.v1 import audit_pb2
from services.audit.chain import Entry
from services.audit.store import StoredRecord


class Privacy:
    """The redaction policy with its pseudonymising key: applied before anything is stored."""

    def __init__(self, policy: RedactionPolicy, key: bytes) -> None:
        self.policy = policy
        self._key = key

    def identity(self, value: str) -> str:
        """A principal or address as stored: itself, or its pseudonym."""
        return pseudonym(self._key, value) if self.policy.pseudonymise else value

    def entry(self, record: audit_pb2.AuditRecord, recorded_ns: int) -> Entry:
        redact = self.policy.redactor.redact
        time_ns = record.time.ToNanoseconds() if record.HasField("time") else recorded_ns
        return Entry(
            event_id=record.id,
            time_ns=time_ns,
            recorded_ns=recorded_ns,
            source=record.source,
            request_id=record.request_id,
            principal=self.identity(record.principal),
            client_id=record.client_id,
            tenant=record.tenant,
            action=record.action,
            resource=record.resource,
            outcome=record.outcome,
            detail=redact(record.detail),  # refusals may quote what the caller sent
            latency_us=round(record.latency_ms * 1000),
            tokens=record.tokens,
            client_address=self.identity(record.client_address),
            prompt=self.policy.content_text(record.prompt),
            output=self.policy.content_text(record.output),
        )


def parse(data: bytes, source: str, stream_sequence: Callable[[], int]) -> audit_pb2.AuditRecord:
    """The published record; one that cannot be read is kept as such rather than lost
    (its id comes from its place in the stream, so a redelivery is still recorded once;
    `stream_sequence` is only asked then: reading it costs more than parsing the record)."""
    try:
        record = audit_pb2.AuditRecord.FromString(data)
    except DecodeError:
        record = audit_pb2.AuditRecord(
            source=source,
            action="audit.unreadable",
            outcome="DATA_LOSS",
            detail=f"{len(data)} bytes on {subjects.audit(source)} that are not an AuditRecord",
        )
    if not record.id:
        record.id = f"stream-{stream_sequence()}"
    # who sent it is the subject, which only that service may publish on; what the
    # record says about itself is not evidence
    record.source = source
    return record


def to_message(stored: StoredRecord) -> audit_pb2.StoredAuditRecord:
    entry = stored.entry
    record = audit_pb2.AuditRecord(
        id=entry.event_id,
        source=entry.source,
        request_id=entry.request_id,
        principal=entry.principal,
        client_id=entry.client_id,
        tenant=entry.tenant,
        action=entry.action,
        resource=entry.resource,
        outcome=entry.outcome,
        detail=entry.detail,
        latency_ms=entry.latency_us / 1000,
        tokens=entry.tokens,
        client_address=entry.client_address,
        prompt=entry.prompt,
        output=entry.output,
    )
    record.time.FromNanoseconds(entry.time_ns)
    message = audit_pb2.StoredAuditRecord(
        sequence=stored.sequence, record=record, hash=stored.hash.hex()
    )
    message.recorded.FromNanoseconds(entry.recorded_ns)
    return message

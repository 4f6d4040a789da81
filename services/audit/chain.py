"""The hash chain and the signed checkpoints: what makes the audit log tamper-evident.

Each stored record carries `hash = SHA-256(previous hash ‖ canonical encoding)`, the first
one chaining to 32 zero bytes. The canonical encoding is a JSON array of the stored
columns in a fixed order (the sequence number included, so moving a record is a change
too), UTF-8, no whitespace: the same row always encodes to the same bytes.

A checkpoint is an Ed25519 signature over (kind, sequence, hash, time). A modified,
deleted or reordered record breaks the chain where it happened; a chain rewritten from
some point on no longer meets the next checkpoint's hash; records cut off after a
checkpoint leave that checkpoint pointing past the end. Pruning for retention leaves a
checkpoint of kind `prune` at the last removed record, from which the rest still chains.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import astuple, dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

GENESIS = bytes(32)
PERIODIC = "periodic"
PRUNE = "prune"


@dataclass(frozen=True)
class Entry:
    """One audit record as stored, without its sequence number and hash."""

    event_id: str
    time_ns: int
    recorded_ns: int
    source: str
    request_id: str
    principal: str
    client_id: str
    tenant: str
    action: str
    resource: str
    outcome: str
    detail: str
    latency_us: int
    tokens: int
    client_address: str
    prompt: str
    output: str


#: the stored columns of an Entry, in canonical order
ENTRY_COLUMNS: tuple[str, ...] = tuple(Entry.__dataclass_fields__)


def canonical(sequence: int, values: tuple[object, ...]) -> bytes:
    """The bytes a record's hash covers: its sequence number and every stored column."""
    return json.dumps(
        [sequence, *values], ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode()


def link(previous: bytes, sequence: int, values: tuple[object, ...]) -> bytes:
    """The hash of record `sequence` whose columns are `values`, chained to `previous`."""
    return hashlib.sha256(previous + canonical(sequence, values)).digest()


def entry_values(entry: Entry) -> tuple[object, ...]:
    return astuple(entry)


def key_id(public: Ed25519PublicKey) -> str:
    """A short name for a verification key: the start of its SHA-256."""
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: "record `sequence` had hash `hash` at `time_ns`"."""

    sequence: int
    hash: bytes
    time_ns: int
    kind: str
    key_id: str
    signature: bytes

    @staticmethod
    def payload(kind: str, sequence: int, hash_: bytes, time_ns: int) -> bytes:
        return f"llmos-audit-checkpoint:v1:{kind}:{sequence}:{hash_.hex()}:{time_ns}".encode()

    @classmethod
    def sign(
        cls, key: Ed25519PrivateKey, kind: str, sequence: int, hash_: bytes, time_ns: int
    ) -> Checkpoint:
        signature = key.sign(cls.payload(kind, sequence, hash_, time_ns))
        return cls(sequence, hash_, time_ns, kind, key_id(key.public_key()), signature)

    def valid(self, keys: dict[str, Ed25519PublicKey]) -> bool:
        """Whether a trusted key signed exactly this statement."""
        public = keys.get(self.key_id)
        if public is None:
            return False
        try:
            public.verify(
                self.signature, self.payload(self.kind, self.sequence, self.hash, self.time_ns)
            )
        except InvalidSignature:
            return False
        return True

    def row(self) -> tuple[object, ...]:
        return astuple(self)

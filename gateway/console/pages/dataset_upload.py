"""A browser's upload of a dataset: the PUT body streamed into `Storage/UploadBlob` a
piece at a time (never held whole), resumed when the stream to storage breaks.

Why resume here: the stream to storage can break while a person waits (storage
restarted, a deadline passed: the page gives a stream an hour, a slow browser may need
longer). As `llmos datasets upload` does, a broken stream is continued under the same upload id
from what storage says it `received`; storage counts only whole sealed chunks, so the
bytes in flight when the stream broke are sent again from the last `KEEP` bytes read.
The body itself is read once, one read at a time, by `BodyReplay`; what a broken stream
read but never sent goes out on the next one. Memory per upload stays under `KEEP`
plus one piece, whatever the file's size."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from gateway.openai.errors import failure_of
from llmos.errors import InvalidArgument, LLMOSError, NotFound, ResourceExhausted, Unavailable
from llmos.v1 import storage_pb2

#: bytes per UploadBlob message (storage takes at most 4 MiB a message)
PIECE = 1 << 20
#: bytes of the body kept to send again after a break: more than can be in flight
#: between the gateway and storage plus storage's unsealed chunk (1 MiB)
KEEP = 32 << 20
#: breaks in a row after which nothing more was stored, before the upload gives up
STALLS = 3
#: the upload form's fields, by the names the API gives them
FORM_FIELDS = {
    "name": "name",
    "description": "description",
    "start.size": "file",
    "start.sha256": "file",
    "sha256": "file",
    "data": "file",
    "offset": "file",
    "start": "file",
    "file": "file",
}
#: a reason that starts so reads as a sentence after the field's label ("Name is required")
VERBS = ("is ", "must ", "may ", "has ", "was ", "does ", "cannot ")
LABELS = {"name": "Name", "description": "Description", "file": "File"}

Read = Callable[[int], Awaitable[bytes]]
Call = Callable[[str, Any], Awaitable[Any]]


class BodyBroken(LLMOSError):
    """The browser's request body ended before its declared size, or failed."""


class BodyReplay:
    """The request body, read once in order, with its last `keep` bytes kept so that
    an upload stream can start again from any offset among them.

    A stream that broke may still be waiting for the body when the next one starts
    (gRPC stops consuming its messages only when a message is ready): one read runs
    at a time, what the stale stream reads is kept for the new one, and the stale
    stream ends without sending it."""

    def __init__(self, read: Read, size: int, keep: int = KEEP, piece: int = PIECE) -> None:
        self._read = read
        self.size = size
        self._keep = keep
        self._piece = piece
        self._kept: deque[tuple[int, bytes]] = deque()
        self._kept_bytes = 0
        self._reading = asyncio.Lock()
        #: the stream that is current; an older one ends at its next piece
        self._stream = 0
        #: bytes taken from the body so far
        self.taken = 0
        #: why the body could not be read to its end, or resent (None while all is well)
        self.failure: LLMOSError | None = None

    @property
    def kept_from(self) -> int:
        """The first offset a stream may start from."""
        return self.taken - self._kept_bytes

    async def messages(
        self, start: storage_pb2.UploadStart, offset: int
    ) -> AsyncIterator[storage_pb2.UploadBlobRequest]:
        """An UploadBlob stream: the start, then the body from `offset` (kept bytes
        first, then fresh ones). If the body breaks the stream just ends (storage then
        calls the upload incomplete) and `failure` says why."""
        self._stream += 1
        stream = self._stream
        yield storage_pb2.UploadBlobRequest(start=start)
        while offset < self.size and self.failure is None and stream == self._stream:
            if offset < self.taken:
                piece = self._kept_piece(offset)
            else:
                async with self._reading:
                    piece = await self._take() if offset == self.taken else b""
            if piece and stream == self._stream:
                yield storage_pb2.UploadBlobRequest(data=piece, offset=offset)
                offset += len(piece)

    def _kept_piece(self, offset: int) -> bytes:
        """The kept bytes from `offset` on, up to the end of the piece that holds it."""
        for at, data in self._kept:
            if at <= offset < at + len(data):
                return data[offset - at :]
        self.failure = Unavailable(
            f"the upload to storage broke and the bytes from {offset} on are no longer "
            "at hand; send the file again"
        )
        return b""

    async def _take(self) -> bytes:
        try:
            piece = await self._read(min(self._piece, self.size - self.taken))
        except Exception as exc:  # a dropped connection, a short body: the browser's doing
            why = str(exc) or type(exc).__name__
            self.failure = BodyBroken(f"the file did not arrive whole ({why}); send it again")
            return b""
        if not piece:
            self.failure = BodyBroken(
                f"the file ended after {self.taken} of its {self.size} bytes; send it again"
            )
            return b""
        self._kept.append((self.taken, piece))
        self._kept_bytes += len(piece)
        self.taken += len(piece)
        while self._kept and self._kept_bytes - len(self._kept[0][1]) >= self._keep:
            self._kept_bytes -= len(self._kept.popleft()[1])
        return piece


async def upload_body(call: Call, body: BodyReplay) -> storage_pb2.Blob:
    """The whole body as a blob of the caller's tenant, resumed after breaks that still
    let storage store more (`STALLS` in a row that did not end the attempt)."""
    start = storage_pb2.UploadStart(upload_id=uuid.uuid4().hex, size=body.size)
    offset, stalls = 0, 0
    while True:
        try:
            blob: storage_pb2.Blob = await call("Storage/UploadBlob", body.messages(start, offset))
            return blob
        except LLMOSError as exc:
            if body.failure is not None:
                raise body.failure from None
            if not isinstance(exc, Unavailable):
                raise
            received = await _received(call, start.upload_id)
            stalls = stalls + 1 if received <= offset else 0
            if stalls > STALLS or received < body.kept_from:
                raise Unavailable(
                    f"the upload to storage broke after {received} of {body.size} bytes "
                    "and could not be resumed; send the file again"
                ) from exc
            offset = received


async def _received(call: Call, upload_id: str) -> int:
    try:
        status = await call("Storage/GetUpload", storage_pb2.GetUploadRequest(upload_id=upload_id))
    except NotFound:  # the start never arrived: begin again
        return 0
    return int(status.received)


def form_field(exc: LLMOSError) -> str:
    """The upload form's field a refusal is about ("" for none): the API's field name
    for an invalid argument; the file for a quota or a broken body."""
    if isinstance(exc, InvalidArgument):
        for candidate in (exc.field, exc.field.rpartition(".")[2]):
            if candidate in FORM_FIELDS:
                return FORM_FIELDS[candidate]
        return ""
    if isinstance(exc, ResourceExhausted | BodyBroken):
        return "file"
    return ""


def upload_refusal(exc: LLMOSError) -> tuple[int, dict[str, str]]:
    """The HTTP status and JSON answer of a refused upload: a sentence that starts with
    the field it is about, and that field's name."""
    field = form_field(exc)
    reason = exc.reason if isinstance(exc, InvalidArgument) and field else str(exc)
    if not field:
        sentence = reason
    elif reason.startswith(VERBS):
        sentence = f"{LABELS[field]} {reason}"
    else:
        sentence = f"{LABELS[field]}: {reason}"
    status = 400 if isinstance(exc, BodyBroken) else failure_of(exc).status
    return status, {"error": _sentence(sentence), "field": field}


def _sentence(text: str) -> str:
    """Text a person reads: capitalised, ending with a full stop."""
    text = text.strip()
    if not text:
        return "The upload was refused."
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def upload_query(query: Mapping[str, str]) -> tuple[str, str]:
    """The dataset's name and description from the upload's query string."""
    return query.get("name", "").strip(), query.get("description", "").strip()

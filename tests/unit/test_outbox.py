"""How streamed tokens leave the hosted engine: one message per token at light load,
several per message under load, and never a held last event."""

from __future__ import annotations

import threading

from llmos.v1 import inference_pb2
from services.inference_worker.engine.engine import TokenEvent
from services.inference_worker.hosted import _Outbox, _Stream


class Recorder:
    """A requester: the chunks it received, and when the last one came."""

    def __init__(self) -> None:
        self.chunks: list[inference_pb2.GenerateChunk] = []
        self.ended = threading.Event()

    def __call__(self, payload: bytes, final: bool) -> None:
        self.chunks.append(inference_pb2.GenerateChunk.FromString(payload))
        if final:
            self.ended.set()


def _stream_through(outbox: _Outbox, tokens: int) -> Recorder:
    recorder = Recorder()
    stream = _Stream("r1", recorder, lambda i: b"")
    for token in range(tokens):
        outbox.put(stream, TokenEvent(token_id=token, text=f"<{token}>"))
    outbox.put(stream, TokenEvent(None, "", finish_reason="length"))
    assert recorder.ended.wait(5), "the last event never went out"
    return recorder


def test_under_load_each_message_carries_several_tokens_and_none_is_lost() -> None:
    outbox = _Outbox(coalesce=2, busy=lambda: True)
    try:
        recorder = _stream_through(outbox, 5)
    finally:
        outbox.close()
    tokens = [t for chunk in recorder.chunks for t in chunk.token_ids]
    assert tokens == [0, 1, 2, 3, 4]
    assert "".join(c.text for c in recorder.chunks) == "<0><1><2><3><4>"
    assert all(len(c.token_ids) >= 2 for c in recorder.chunks[:-1])
    assert recorder.chunks[-1].done and recorder.chunks[-1].finish_reason == "length"


def test_at_light_load_nothing_waits_for_company() -> None:
    outbox = _Outbox(coalesce=4, busy=lambda: False)
    recorder = Recorder()
    stream = _Stream("r2", recorder, lambda i: b"")
    try:
        outbox.put(stream, TokenEvent(token_id=7, text="a"))
        for _ in range(100):  # the single token goes out on its own
            if recorder.chunks:
                break
            threading.Event().wait(0.01)
        assert [list(c.token_ids) for c in recorder.chunks] == [[7]]
    finally:
        outbox.close()

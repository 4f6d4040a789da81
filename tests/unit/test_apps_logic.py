"""Pure logic of the applications: what a caller is charged for the gateway's own inner
calls, and how the chat model's entity answer is grounded in the text."""

from __future__ import annotations

import pytest

from gateway.apps.conversations import Conversation
from gateway.apps.entities import candidates, grounded_entities
from gateway.auth.principal import CallRecord, call_record, current_call, inner_call


@pytest.fixture
def record() -> CallRecord:
    record = CallRecord(resource="knowledge_base/faq", tokens=10)
    current_call.set(record)
    return record


def test_an_inner_call_adds_its_tokens_and_keeps_the_callers_record(record: CallRecord) -> None:
    with inner_call():
        inner = call_record()
        inner.tokens = 7  # what Chat writes: its own prompt and completion
        inner.resource, inner.cached, inner.prompt = "model/smollm2", True, "passages..."
    assert (record.tokens, record.resource, record.cached) == (17, "knowledge_base/faq", False)
    assert record.prompt == ""


def test_a_cached_inner_call_charges_nothing_more(record: CallRecord) -> None:
    for _ in range(5):  # five cached Embed batches of one AddDocuments
        with inner_call():
            call_record().cached = True  # a cache hit writes no tokens
    assert record.tokens == 10


def test_an_inner_call_that_fails_midway_is_still_charged(record: CallRecord) -> None:
    with pytest.raises(RuntimeError), inner_call():
        call_record().tokens = 4  # tokens so far of a stream the caller left
        raise RuntimeError("caller went away")
    assert record.tokens == 14


def test_a_conversation_is_its_owners_with_one_knowledge_base_of_one_tenant() -> None:
    mine = Conversation("shop", "alice", "faq", "c1")
    others = [
        Conversation("other-shop", "alice", "faq", "c1"),
        Conversation("shop", "bob", "faq", "c1"),
        Conversation("shop", "alice", "hours", "c1"),
        Conversation("shop", "alice", "faq", "c2"),
        Conversation("shop:alice", "", "faq", "c1"),  # no part can be made to read as another
    ]
    assert all(mine.key() != other.key() for other in others)
    assert mine.key() == Conversation("shop", "alice", "faq", "c1").key()


TEXT = "Abraham Lincoln spoke in Gettysburg. Lincoln was tired."
FIRST, PLACE, SECOND = TEXT.index("Lincoln"), TEXT.index("Gettysburg"), TEXT.rindex("Lincoln")


def spans(reply: str, labels: list[str]) -> list[tuple[int, int, str, str]]:
    found = grounded_entities(TEXT, reply, labels)
    return [(e.start, e.end, e.label, e.text) for e in found.entities]


def test_spans_are_placed_at_every_occurrence_in_the_text() -> None:
    assert spans("PERSON: Lincoln\nPLACE: Gettysburg", ["PERSON", "PLACE"]) == [
        (FIRST, FIRST + 7, "PERSON", "Lincoln"),
        (PLACE, PLACE + 10, "PLACE", "Gettysburg"),
        (SECOND, SECOND + 7, "PERSON", "Lincoln"),
    ]


def test_invented_misquoted_and_unasked_spans_are_dropped() -> None:
    reply = "PERSON: George Washington\nPERSON: abraham lincoln\nDATE: 1863\nPLACE: Gettysburg"
    assert spans(reply, ["PERSON", "PLACE"]) == [(PLACE, PLACE + 10, "PLACE", "Gettysburg")]


def test_overlapping_spans_keep_the_earlier_longer_one() -> None:
    reply = "PERSON: Lincoln\nPERSON: Abraham Lincoln\nPERSON: Abraham"
    assert spans(reply, ["PERSON"]) == [
        (0, 15, "PERSON", "Abraham Lincoln"),
        (SECOND, SECOND + 7, "PERSON", "Lincoln"),
    ]


def test_the_models_formatting_is_tolerated() -> None:
    reply = '1. person: "Abraham Lincoln"\n- Place - Gettysburg\nNONE\nrandom words'
    assert candidates(reply, ["PERSON", "PLACE"]) == [
        ("PERSON", "Abraham Lincoln"),
        ("PLACE", "Gettysburg"),
    ]

"""Knowledge bases: uploads become text, text becomes exact passages, and questions find
the passage that answers them (or learn that none does)."""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from llmos.errors import InvalidArgument
from llmos.knowledge.chunking import Chunk, chunk_text
from llmos.knowledge.documents import MAX_CHARACTERS, extract_text
from llmos.knowledge.index import MAGIC, KnowledgeIndex, relevant
from tests.documents import minimal_pdf

DIM = 32


def _refused(field: str, name: str, content: bytes, content_type: str = "") -> str:
    with pytest.raises(InvalidArgument) as raised:
        extract_text(name, content, content_type, "document")
    assert raised.value.field == field
    return raised.value.reason


# --- documents -------------------------------------------------------------------------


def test_plain_text_keeps_its_words_with_unix_newlines_and_no_bom() -> None:
    content = "\ufeffRefunds\r\ntake 5 days.\rCafé".encode()
    text = extract_text("faq.bin", content, "text/plain; charset=utf-8", "document")
    assert text == "Refunds\ntake 5 days.\nCafé"


def test_markdown_is_recognised_by_extension_when_no_type_is_sent() -> None:
    assert extract_text("Guide.MD", b"# Returns\n\n- within 30 days", "", "d") == (
        "# Returns\n\n- within 30 days"
    )


def test_html_shows_visible_text_in_lines_and_paragraphs() -> None:
    page = (
        b"<html><head><title>Help</title><style>p{color:red}</style></head><body>"
        b"<script>var x = '<p>secret</p>';</script><noscript>enable js</noscript>"
        b"<template><p>hidden</p></template>"
        b"<h1>Refund&nbsp;policy</h1>\n<p>Money back\n   within <b>30</b> days &amp; more."
        b"<br>No questions.</p><ul><li>Books</li><li>Games</li></ul></body></html>"
    )
    text = extract_text("page.html", page, "text/html", "document")
    assert text == (
        "Help\n\nRefund policy\n\nMoney back within 30 days & more.\nNo questions.\n\nBooks\nGames"
    )


def test_pdf_text_is_extracted_and_pages_are_separated_by_a_blank_line() -> None:
    assert extract_text("a.pdf", minimal_pdf("Hello refunds"), "application/pdf", "d") == (
        "Hello refunds"
    )
    # octet-stream says "unknown": the extension decides.
    two_pages = extract_text(
        "a.PDF", minimal_pdf("Page one", "Page two"), "application/octet-stream", "d"
    )
    assert two_pages == "Page one\n\nPage two"


def test_unsupported_types_are_refused_naming_the_field_and_the_supported_types() -> None:
    reason = _refused("document.content_type", "a.txt", b"x", "image/png")
    assert "text/plain" in reason and "application/pdf" in reason
    assert "PDF" in _refused("document.name", "sheet.xlsx", b"x")
    _refused("document.name", "README", b"x")


def test_undecodable_empty_unreadable_and_locked_documents_are_refused() -> None:
    assert "UTF-8" in _refused("document.content", "a.txt", b"caf\xe9")
    assert "no text" in _refused("document.content", "a.md", b" \n\t ")
    assert "no text" in _refused("document.content", "a.html", b"<p> </p><script>x</script>")
    assert "no text" in _refused("document.content", "a.pdf", minimal_pdf(""))
    _refused("document.content", "a.pdf", b"%PDF-1.4 this is not really a pdf")
    _refused("document.content", "a.pdf", minimal_pdf("Hello refunds")[:150])


def test_password_protected_pdf_is_refused() -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=72, height=72)
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    locked = io.BytesIO()
    writer.write(locked)
    assert "password" in _refused("document.content", "a.pdf", locked.getvalue())


def test_documents_beyond_the_character_limit_are_refused() -> None:
    assert "split" in _refused("document.content", "a.txt", b"a" * (MAX_CHARACTERS + 1))


# --- chunking --------------------------------------------------------------------------


def _check(text: str, chunks: list[Chunk], size: int) -> None:
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text and chunk.text == chunk.text.strip()
        assert len(chunk.text) <= size
    assert [c.start for c in chunks] == sorted({c.start for c in chunks})
    assert [c.end for c in chunks] == sorted({c.end for c in chunks})
    covered = set().union(*(range(c.start, c.end) for c in chunks))
    assert covered >= {i for i, char in enumerate(text) if not char.isspace()}


def _random_text(rng: random.Random) -> str:
    words = ["refund", "order", "a", "shipping", "is", "the", "policy", "x" * 40, "退款。", "。"]
    parts = []
    for _ in range(rng.randrange(0, 300)):
        parts.append(rng.choice(words))
        parts.append(rng.choice([" ", " ", " ", ". ", "! ", "\n", "\n\n", "\r\n", "  \t", ""]))
    return "".join(parts)


def test_chunks_are_exact_slices_that_cover_every_word() -> None:
    rng = random.Random(7)
    for _ in range(300):
        text = _random_text(rng)
        size = rng.randrange(1, 400)
        overlap = rng.randrange(0, size // 2 + 1)
        _check(text, chunk_text(text, size, overlap), size)


def test_default_chunks_of_a_long_document_overlap_and_cover_it() -> None:
    text = " ".join(f"Sentence {n} about returns." for n in range(800))
    chunks = chunk_text(text)
    _check(text, chunks, 800)
    assert all(later.start < earlier.end for earlier, later in itertools.pairwise(chunks))


def test_chunks_end_at_paragraph_breaks_then_sentence_ends() -> None:
    # 181 characters from one paragraph break to the next: one in every window's last quarter
    paragraph = "Returns are free. " * 10
    text = "\n\n".join(paragraph.strip() for _ in range(20))
    for chunk in chunk_text(text, size=800, overlap=100)[:-1]:
        assert text[chunk.end : chunk.end + 2] == "\n\n"
    for chunk in chunk_text(paragraph * 10, size=100, overlap=20)[:-1]:
        assert chunk.text.endswith(".")
    for chunk in chunk_text("退款将在五个工作日内退回。" * 50, size=100, overlap=20)[:-1]:
        assert chunk.text.endswith("。")


def test_text_without_words_gives_no_chunks_and_bad_settings_are_refused() -> None:
    assert chunk_text(" \n\n\t ") == []
    assert chunk_text("") == []
    with pytest.raises(ValueError):
        chunk_text("text", size=0)
    with pytest.raises(ValueError):
        chunk_text("text", size=100, overlap=60)


# --- index -----------------------------------------------------------------------------


def _unit(rng: np.random.Generator, rows: int) -> npt.NDArray[np.float32]:
    vectors = rng.standard_normal((rows, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _chunks(*texts: str) -> list[Chunk]:
    chunks, position = [], 0
    for text in texts:
        chunks.append(Chunk(position, position + len(text), text))
        position += len(text) + 2
    return chunks


FAQ = (
    "Refunds are paid to the original card within 5 working days.",
    "Shipping to Europe takes 3 days; express shipping takes 1 day.",
    "You can change your password from the account settings page.",
)
TERMS = (
    "These terms govern the use of the service.",
    "Gift cards cannot be exchanged for cash.",
)


def _index(seed: int = 1) -> tuple[KnowledgeIndex, np.random.Generator]:
    rng = np.random.default_rng(seed)
    index = KnowledgeIndex(DIM)
    index.add_document("faq.md", _chunks(*FAQ), _unit(rng, len(FAQ)))
    index.add_document("terms.pdf", _chunks(*TERMS), _unit(rng, len(TERMS)))
    return index, rng


def test_words_of_the_question_find_the_passage_even_with_unrelated_vectors() -> None:
    index, rng = _index()
    hits = index.search("How long do refunds take?", _unit(rng, 1)[0], k=3)
    assert hits[0].chunk.text == FAQ[0]
    assert hits[0].chunk.document == "faq.md" and hits[0].chunk.number == 0
    assert hits[0].lexical > 0 and relevant("How long do refunds take?", hits[0])
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_the_vector_finds_a_paraphrase_that_shares_no_word() -> None:
    rng = np.random.default_rng(3)
    index = KnowledgeIndex(DIM)
    vectors = _unit(rng, len(FAQ))
    index.add_document("faq.md", _chunks(*FAQ), vectors)
    hit = index.search("Where is my money back?", vectors[2] * 3.0, k=1)[0]  # any length
    assert hit.chunk.text == FAQ[2]
    assert hit.dense == pytest.approx(1.0, abs=1e-5) and hit.lexical == 0.0
    assert relevant("Where is my money back?", hit)


def test_an_unrelated_question_gets_no_relevant_passage() -> None:
    index, rng = _index()
    question = "What is the capital of France?"
    hits = index.search(question, _unit(rng, 1)[0], k=5)
    assert len(hits) == 5
    assert not any(relevant(question, hit) for hit in hits)


def test_readding_a_document_replaces_its_passages() -> None:
    index, rng = _index()
    old_ids = {h.chunk.id for h in index.search("shipping", _unit(rng, 1)[0], k=5)}
    index.add_document("faq.md", _chunks("Shipping is now free everywhere."), _unit(rng, 1))
    assert index.documents() == {"faq.md": 1, "terms.pdf": 2} and len(index) == 3
    hits = index.search("shipping to Europe express", _unit(rng, 1)[0], k=10)
    assert all(hit.chunk.text not in FAQ for hit in hits)
    assert hits[0].chunk.text == "Shipping is now free everywhere."
    assert hits[0].chunk.id > max(old_ids)  # ids are never reused


def test_removed_documents_are_never_found() -> None:
    index, rng = _index()
    assert index.remove_document("faq.md") is True
    assert index.remove_document("faq.md") is False
    hits = index.search("refunds shipping password", _unit(rng, 1)[0], k=10)
    assert {hit.chunk.document for hit in hits} == {"terms.pdf"}
    assert index.documents() == {"terms.pdf": 2}
    index.remove_document("terms.pdf")
    assert len(index) == 0 and index.search("refunds", _unit(rng, 1)[0]) == []


def test_equal_scores_are_ordered_by_id() -> None:
    index = KnowledgeIndex(DIM)
    same = np.tile(_unit(np.random.default_rng(5), 1), (4, 1))
    index.add_document("a", _chunks("alpha", "beta", "gamma", "delta"), same)
    hits = index.search("unrelated", same[0], k=4)
    assert [hit.chunk.text for hit in hits] == ["alpha", "beta", "gamma", "delta"]


def test_wrong_dimensions_and_mismatched_vectors_are_refused() -> None:
    index, rng = _index()
    with pytest.raises(ValueError):
        index.search("refunds", np.ones(DIM + 1, dtype=np.float32))
    with pytest.raises(ValueError):
        index.add_document("x", _chunks("a", "b"), _unit(rng, 3))
    with pytest.raises(ValueError):
        index.add_document("x", _chunks("a"), np.ones((1, DIM - 1), dtype=np.float32))
    assert index.documents() == {"faq.md": 3, "terms.pdf": 2}  # nothing half-added


def test_an_index_read_back_answers_exactly_as_before() -> None:
    index, rng = _index()
    index.remove_document("terms.pdf")  # the highest ids: they must still not be reused
    restored = KnowledgeIndex.from_bytes(index.to_bytes())
    assert restored.documents() == index.documents() and restored.dim == DIM
    for question in ("refunds", "shipping to Europe", "cash for gift cards", "password"):
        vector = _unit(rng, 1)[0]
        assert restored.search(question, vector, k=3) == index.search(question, vector, k=3)
    restored.add_document("new", _chunks("New text."), _unit(rng, 1))
    assert restored.search("new text", _unit(rng, 1)[0], k=1)[0].chunk.id >= 5


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: b"",
        lambda blob: b"PK\x03\x04" + blob[4:],  # a zip, say
        lambda blob: blob[:12],
        lambda blob: blob[:8] + b"\xff" * 8 + blob[16:],  # header length past the end
        lambda blob: blob[:20] + b"#" + blob[21:],  # header not JSON
        lambda blob: blob[: len(blob) - 40],  # vectors cut short
        lambda blob: blob.replace(b"IxM2", b"IxZ2"),  # vectors of an unknown kind
    ],
)
def test_damaged_or_foreign_data_is_refused(damage: Callable[[bytes], bytes]) -> None:
    index, _ = _index()
    blob = index.to_bytes()
    assert blob.startswith(MAGIC)
    with pytest.raises(ValueError):
        KnowledgeIndex.from_bytes(damage(blob))


def _with_header(blob: bytes, change: Callable[[dict[str, Any]], object]) -> bytes:
    """`blob` with its JSON header edited by `change` and its length prefix kept right."""
    length = int.from_bytes(blob[8:16], "big")
    header = json.loads(blob[16 : 16 + length])
    change(header)
    encoded = json.dumps(header).encode()
    return MAGIC + len(encoded).to_bytes(8, "big") + encoded + blob[16 + length :]


@pytest.mark.parametrize(
    "change",
    [
        lambda h: h.pop("dim"),
        lambda h: h.update(dim="x"),
        lambda h: h.update(dim=16),  # the vectors have 32
        lambda h: h.update(chunks=[]),  # vectors without passages
        lambda h: h["chunks"][0].update(id=99),
        lambda h: h["chunks"][1].update(id=0),  # one id twice
        lambda h: h["chunks"][0].update(start="0"),
        lambda h: h["chunks"][0].update(text=None),
        lambda h: h["chunks"][0].update(secret=1),
        lambda h: h.update(next_id=2),  # would reuse ids
        lambda h: h.update(next_id="7"),
        lambda h: h["chunks"][0].update(id=True),
        lambda h: h.update(chunks="none"),
    ],
)
def test_headers_that_do_not_describe_the_index_are_refused(
    change: Callable[[dict[str, Any]], object],
) -> None:
    index, _ = _index()
    blob = index.to_bytes()
    assert KnowledgeIndex.from_bytes(_with_header(blob, lambda h: None)).documents()
    with pytest.raises(ValueError):
        KnowledgeIndex.from_bytes(_with_header(blob, change))

"""Document text to passages: the unit that is embedded, searched and quoted.

Each chunk is at most `size` characters, small enough for an embedding model to
represent one topic and for several to fit into a prompt, and neighbours overlap by
about `overlap` characters so that a sentence cut at one chunk's end is whole in the
next. A chunk ends at the last paragraph break in the final quarter of its window, else
at the last sentence end there, else at the last whitespace, and only as a last resort
mid-word: passages that stop at natural boundaries read as answers, not fragments.

Chunks are character offsets into the text (`text[c.start:c.end] == c.text`), so the
assistant can cite the exact place a passage came from. Together they cover every
non-whitespace character of the text; whitespace at either end of a chunk is left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")
# A sentence ends at . ! ? perhaps inside quotes or brackets, followed by whitespace
# ("e.g.x" and "3.14" are not ends); CJK full stops need no space after them.
_SENTENCE_END = re.compile(
    r"[.!?][\"'\u2019\u201d)\]]*(?=\s)|[\u3002\uff01\uff1f][\u300d\u300f\"'\u2019\u201d)\]]*"
)
_WHITESPACE = re.compile(r"\s")


@dataclass(frozen=True)
class Chunk:
    """One passage of a document: `text` is exactly `document_text[start:end]`."""

    start: int
    end: int
    text: str


def chunk_text(text: str, size: int = 800, overlap: int = 120) -> list[Chunk]:
    """The passages of `text`, in order; none for text that is only whitespace."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1 character, not {size}")
    if not 0 <= overlap <= size // 2:
        # Past half a window, consecutive chunks could stop advancing past each other.
        raise ValueError(f"chunk overlap must be between 0 and size/2 ({size // 2}), not {overlap}")
    chunks: list[Chunk] = []
    start = _skip_whitespace(text, 0)
    while start < len(text):
        end = len(text) if start + size >= len(text) else _cut(text, start, start + size)
        trimmed = end
        while text[trimmed - 1].isspace():  # text[start] is not whitespace: this stops
            trimmed -= 1
        # A chunk that adds nothing past its predecessor (only whitespace followed) is dropped.
        if not chunks or trimmed > chunks[-1].end:
            chunks.append(Chunk(start, trimmed, text[start:trimmed]))
        if end == len(text):
            break
        start = _skip_whitespace(text, _overlap_start(text, start, end, overlap))
    return chunks


def _cut(text: str, start: int, limit: int) -> int:
    """Where a chunk starting at `start` ends, at most at `limit` (< len(text))."""
    earliest = max(start + 1, limit - (limit - start) // 4)
    for position in (
        _last(_PARAGRAPH_BREAK, text, earliest, limit),
        _last(_SENTENCE_END, text, earliest, limit, at_end=True),
        _last(_WHITESPACE, text, earliest, limit),
    ):
        if position is not None:
            return position
    return limit


def _last(
    pattern: re.Pattern[str], text: str, lo: int, hi: int, at_end: bool = False
) -> int | None:
    """The last start (or end) of a match of `pattern` that lies in [lo, hi].

    The search sees one character past `hi`, so that a sentence end at `hi` can be
    recognised by the space that follows it."""
    found = None
    for match in pattern.finditer(text, lo, hi + 1):
        position = match.end() if at_end else match.start()
        if position <= hi:
            found = position
    return found


def _overlap_start(text: str, start: int, end: int, overlap: int) -> int:
    """Where the next chunk starts: `overlap` characters back, moved on to a word's start."""
    begin = max(start + 1, end - overlap)
    if text[begin - 1].isspace():
        return begin
    space = _WHITESPACE.search(text, begin, end)
    # No whitespace in the overlap (one long token): start mid-token rather than skip it.
    return space.start() if space else begin


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position

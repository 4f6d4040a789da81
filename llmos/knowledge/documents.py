"""Uploaded documents to plain text: the only text the knowledge base ever sees.

The type comes from the upload's content type when the client sent a useful one, else
from the file name's extension, because browsers and scripts often send
`application/octet-stream` (or nothing) for files they do not recognise. Every refusal is
an `InvalidArgument` naming the request field at fault, so the caller can fix that field.
The result always uses `\\n` newlines, so chunk offsets mean the same on every platform.
"""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from pathlib import PurePath

from llmos.errors import InvalidArgument

# An upload bigger than this is a book, not a help-centre article; it would also make
# one index blob (and one embedding job) unreasonably large.
MAX_CHARACTERS = 2_000_000

_BY_CONTENT_TYPE = {
    "text/plain": "text",
    "text/markdown": "text",
    "text/x-markdown": "text",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}
_BY_EXTENSION = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".markdown": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
# Sent by clients that do not know the type: not a claim about the content.
_UNKNOWN_TYPES = {"", "application/octet-stream", "binary/octet-stream"}
_SUPPORTED = (
    "plain text (text/plain, .txt), Markdown (text/markdown, .md), "
    "HTML (text/html, .html) and PDF (application/pdf, .pdf)"
)


def extract_text(name: str, content: bytes, content_type: str, field: str) -> str:
    """The plain text of one uploaded document, or `InvalidArgument` naming the bad field."""
    kind = _kind(name, content_type, field)
    if kind == "pdf":
        text = _pdf_text(content, field)
    else:
        decoded = _decode(content, field)
        text = _html_text(decoded) if kind == "html" else decoded
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        # A scanned PDF is pictures of text; no OCR is done here.
        hint = " (scanned pages need OCR first)" if kind == "pdf" else ""
        raise InvalidArgument(f"{field}.content", f"the document has no text to search{hint}")
    if len(text) > MAX_CHARACTERS:
        raise InvalidArgument(
            f"{field}.content",
            f"the document has more than {MAX_CHARACTERS:,} characters of text; "
            "split it into smaller documents",
        )
    return text


def _kind(name: str, content_type: str, field: str) -> str:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in _UNKNOWN_TYPES:
        kind = _BY_CONTENT_TYPE.get(media_type)
        if kind is None:
            raise InvalidArgument(
                f"{field}.content_type",
                f"{media_type!r} is not supported; upload {_SUPPORTED}",
            )
        return kind
    kind = _BY_EXTENSION.get(PurePath(name).suffix.lower())
    if kind is None:
        raise InvalidArgument(
            f"{field}.name",
            f"the type of {name!r} cannot be told from its extension; upload {_SUPPORTED}",
        )
    return kind


def _decode(content: bytes, field: str) -> str:
    try:
        return content.decode("utf-8-sig")  # editors on Windows still write a BOM
    except UnicodeDecodeError as error:
        raise InvalidArgument(
            f"{field}.content",
            f"the document is not UTF-8 text (bad byte at offset {error.start}); "
            "save it as UTF-8 and upload it again",
        ) from None


def _pdf_text(content: bytes, field: str) -> str:
    # Imported here so that services that never see a PDF do not pay for pypdf.
    from pypdf import PasswordType, PdfReader

    try:
        reader = PdfReader(io.BytesIO(content))
        # Many PDFs are "encrypted" only to restrict printing, with an empty password.
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise InvalidArgument(
                f"{field}.content", "the PDF is password-protected; upload it unprotected"
            )
        pages: list[str] = []
        size = 0
        for page in reader.pages:
            pages.append(page.extract_text().strip())
            size += len(pages[-1])
            if size > MAX_CHARACTERS:  # stop early; the caller refuses it
                break
    except InvalidArgument:
        raise
    except Exception:  # pypdf raises many kinds (ValueError, KeyError...) on broken files
        raise InvalidArgument(f"{field}.content", "the PDF is damaged or not a PDF") from None
    return "\n\n".join(page for page in pages if page)


def _html_text(markup: str) -> str:
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    return parser.text()


# Not visible on the page; <head> is not skipped so that <title> still counts.
_SKIPPED = {"script", "style", "noscript", "template"}
_PARAGRAPHS = {
    "address", "article", "aside", "blockquote", "caption", "details", "div", "dl",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
    "h6", "header", "hr", "main", "nav", "ol", "p", "pre", "section", "summary", "table",
    "title", "ul",
}  # fmt: skip
_LINES = {"br", "dd", "dt", "li", "tr"}
_CELLS = {"td", "th"}
_WHITESPACE = re.compile(r"\s+")
_BLANK_RUNS = re.compile(r"\n{3,}")


class _HtmlText(HTMLParser):
    """Visible text of an HTML page, broken into lines and paragraphs as a browser shows it.

    Paragraph-like elements become blank lines, so that chunking can prefer to cut there.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive unescaped in handle_data
        self._parts: list[str] = []
        self._hidden = 0  # depth inside elements whose content is not shown

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._hidden += 1
        self._separate(tag, opening=True)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._hidden = max(0, self._hidden - 1)
        self._separate(tag, opening=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._separate(tag, opening=True)  # <br/>: a break, and nothing to open or close

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            # Line breaks in the source are not visible in a browser; only elements are.
            self._parts.append(_WHITESPACE.sub(" ", data))

    def _separate(self, tag: str, opening: bool) -> None:
        # A list item or cell starts a new line or column; its end adds nothing, or the
        # items of a list would come out a blank line apart.
        if self._hidden:
            return
        if tag in _PARAGRAPHS:
            self._parts.append("\n\n")
        elif opening and tag in _LINES:
            self._parts.append("\n")
        elif opening and tag in _CELLS:
            self._parts.append(" ")

    def text(self) -> str:
        """The collected text: lines trimmed, at most one blank line between blocks."""
        lines = (" ".join(line.split()) for line in "".join(self._parts).split("\n"))
        return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()

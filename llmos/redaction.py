"""The audit log's privacy policy: what personal data may be stored, and in what form.

Prompts and outputs are not audited by default. With `LLMOS_AUDIT_CONTENT=redacted` they
are, after e-mail addresses, phone numbers, payment card numbers (Luhn-checked, so an
order number is left alone), IP addresses and the operator's own patterns
(`LLMOS_AUDIT_REDACT_PATTERNS_FILE`, one regular expression per line) are replaced by a
placeholder naming what was there. Error sentences are redacted the same way, since they
may quote input. Replacement is idempotent: a redacted text passes through unchanged, so
the service that saw the action and the audit service can both apply it.

Principals (and client addresses) can be pseudonymised with a keyed hash
(`LLMOS_AUDIT_PSEUDONYMISE=on`): the same person always gets the same pseudonym, so
"what did this principal do" still has an answer for whoever holds the key, and nobody
else can reverse it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmos.config import EnvReader

CONTENT_OFF = "off"
CONTENT_REDACTED = "redacted"

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
#: 13-19 digits, optionally grouped by single spaces or dashes
CARD = re.compile(r"(?<![\d\w])\d(?:[ -]?\d){12,18}(?![\d\w])")
IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\d.])"
)
#: candidates only; ipaddress decides
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
#: international (+CC ...) or grouped national numbers (last group 3-4 digits, so dates
#: such as 2026-11-28 are not taken), 7-15 digits in all
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?(?:\d{2,4}[ .-]){1,4}\d{3,4}(?![\w])"
    r"|(?<![\w+])\+\d{7,15}(?![\w])"
)


def luhn_valid(digits: str) -> bool:
    """The payment card checksum (ISO/IEC 7812): weeds out most numbers that are not cards."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group()


def _ipv6(match: re.Match[str]) -> str:
    try:
        ipaddress.IPv6Address(match.group())
    except ValueError:
        return match.group()
    return "[IP]"


def _phone(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return "[PHONE]" if 7 <= digits <= 15 else match.group()


def _fixed(placeholder: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: placeholder


@dataclass(frozen=True)
class Redactor:
    """Replaces personal data in free text; `patterns` are the operator's own."""

    patterns: tuple[re.Pattern[str], ...] = ()

    def redact(self, text: str) -> str:
        if not text:
            return text
        text = CARD.sub(_card, text)  # before phones, which would take card digits apart
        text = EMAIL.sub("[EMAIL]", text)
        text = IPV6.sub(_ipv6, text)
        text = IPV4.sub("[IP]", text)
        text = PHONE.sub(_phone, text)
        for pattern in self.patterns:
            text = pattern.sub(_fixed("[REDACTED]"), text)
        return text


def pseudonym(key: bytes, identifier: str) -> str:
    """A stable keyed-hash stand-in for `identifier` (empty stays empty)."""
    if not identifier:
        return identifier
    digest = hmac.new(key, identifier.encode(), hashlib.sha256).hexdigest()
    return f"pseudonym:{digest[:32]}"


@dataclass(frozen=True)
class RedactionPolicy:
    """What the audit log may keep (`LLMOS_AUDIT_*`)."""

    content: str = CONTENT_OFF  # prompts and outputs: "off" or "redacted"
    pseudonymise: bool = False
    redactor: Redactor = Redactor()

    @property
    def keeps_content(self) -> bool:
        return self.content == CONTENT_REDACTED

    def content_text(self, text: str) -> str:
        """A prompt or output as the audit log may keep it: nothing, or redacted."""
        return self.redactor.redact(text) if self.keeps_content else ""


def load_patterns(path: Path) -> tuple[re.Pattern[str], ...]:
    """One regular expression per line; blank lines and lines starting with # are skipped.
    A bad expression raises ValueError naming its line."""
    patterns = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            patterns.append(re.compile(line))
        except re.error as exc:
            raise ValueError(f"line {number} is not a regular expression: {exc}") from None
    return tuple(patterns)


def read_redaction_policy(env: EnvReader) -> RedactionPolicy:
    """The policy from `LLMOS_AUDIT_CONTENT`, `..._PSEUDONYMISE`, `..._REDACT_PATTERNS_FILE`
    (errors are collected in `env`)."""
    content = env.choice(
        "AUDIT_CONTENT",
        CONTENT_OFF,
        (CONTENT_OFF, CONTENT_REDACTED),
        doc="prompts and outputs in audit records: none, or kept with personal data redacted",
    )
    pseudonymise = (
        env.choice(
            "AUDIT_PSEUDONYMISE",
            "off",
            ("on", "off"),
            doc="store principals and client addresses as a keyed hash",
        )
        == "on"
    )
    patterns: tuple[re.Pattern[str], ...] = ()
    file = env.text(
        "AUDIT_REDACT_PATTERNS_FILE",
        "",
        doc="a file of extra patterns to redact, one regular expression per line",
    )
    if file:
        try:
            patterns = load_patterns(Path(file))
        except (OSError, ValueError) as exc:
            env.errors.append(f"LLMOS_AUDIT_REDACT_PATTERNS_FILE: {file!r}: {exc}")
    return RedactionPolicy(content, pseudonymise, Redactor(patterns))

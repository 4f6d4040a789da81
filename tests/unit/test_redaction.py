"""What the audit privacy policy removes from free text, and what it leaves alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmos.config import EnvReader
from llmos.redaction import (
    CONTENT_REDACTED,
    Redactor,
    luhn_valid,
    pseudonym,
    read_redaction_policy,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to alice.smith+x@example.co.uk today", "write to [EMAIL] today"),
        ("card 4111 1111 1111 1111 exp 12/29", "card [CARD] exp 12/29"),
        ("amex 378282246310005.", "amex [CARD]."),
        ("call +44 20 7946 0958 or 555-123-4567", "call [PHONE] or [PHONE]"),
        ("(020) 7946 0958 and +14155552671", "[PHONE] and [PHONE]"),
        ("from 192.168.1.20 and 2001:db8::8a2e:370:7334", "from [IP] and [IP]"),
    ],
)
def test_personal_data_is_replaced_by_what_it_was(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order 4111-1111-1111-1112 fails the card checksum",
        "on 2026-11-28 at 12:30:45 version 2.13.0 took 12345678 steps",
        "model/smollm2-135m-instruct@3 step 100 loss 3.684",
        "already [EMAIL] and [CARD]",
    ],
)
def test_ordinary_text_and_redacted_text_pass_unchanged(text: str) -> None:
    assert Redactor().redact(text) == text


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")


def test_operator_patterns_and_pseudonyms(tmp_path: Path) -> None:
    patterns = tmp_path / "patterns"
    patterns.write_text("# employee ids\nEMP-\\d{6}\n\n")
    policy = read_redaction_policy(
        EnvReader(
            {
                "LLMOS_AUDIT_CONTENT": "redacted",
                "LLMOS_AUDIT_PSEUDONYMISE": "on",
                "LLMOS_AUDIT_REDACT_PATTERNS_FILE": str(patterns),
            }
        )
    )
    assert policy.content == CONTENT_REDACTED and policy.pseudonymise
    assert policy.content_text("ask EMP-123456 at bob@example.org") == "ask [REDACTED] at [EMAIL]"
    assert pseudonym(b"k1", "alice") == pseudonym(b"k1", "alice") != pseudonym(b"k2", "alice")
    assert "alice" not in pseudonym(b"k1", "alice")
    assert re.fullmatch(r"pseudonym:[0-9a-f]{32}", pseudonym(b"k1", "alice"))


def test_content_is_dropped_by_default_and_bad_patterns_are_refused(tmp_path: Path) -> None:
    policy = read_redaction_policy(EnvReader({}))
    assert policy.content_text("my card is 4111 1111 1111 1111") == ""
    assert not policy.pseudonymise
    bad = tmp_path / "bad"
    bad.write_text("ok\n(unclosed\n")
    env = EnvReader({"LLMOS_AUDIT_REDACT_PATTERNS_FILE": str(bad)})
    read_redaction_policy(env)
    assert any("line 2 is not a regular expression" in e for e in env.errors)

"""The `llmos` command against the whole stack: chat, prompts from stdin, JSON listings,
saved client credentials, and what it says when the gateway or the issuer is gone."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from tests.e2e.conftest import RunningStack

pytestmark = pytest.mark.e2e
USAGE = re.compile(r"(\d+) prompt \+ (\d+) completion tokens")
SAMPLED = ("--temperature", "0.7", "--seed", "3", "--max-tokens", "4")  # never cached


def test_chat_from_a_pipe_sends_the_whole_conversation_and_reset_forgets_it(
    stack: RunningStack,
) -> None:
    turns = "Hello there.\nWhat did I just say?\n/reset\nHello there.\n"
    chat = stack.cli("chat", "--system", "Answer briefly.", *SAMPLED, stdin=turns)
    assert chat.returncode == 0, chat.stderr
    usage = [(int(p), int(c)) for p, c in USAGE.findall(chat.stderr)]
    assert len(usage) == 3, chat.stderr
    (first_prompt, first_answer), (second_prompt, _), (after_reset, _) = usage
    assert second_prompt > first_prompt + first_answer  # turn 1 and its answer were re-sent
    assert after_reset == first_prompt


def test_a_prompt_piped_in_gets_the_same_answer_as_one_given_as_an_argument(
    stack: RunningStack,
) -> None:
    prompt = "The capital of France is"
    given = stack.cli("generate", "--max-tokens", "4", "--quiet", prompt)
    piped = stack.cli("generate", "--max-tokens", "4", "--quiet", stdin=prompt + "\n")
    dashed = stack.cli("generate", "--max-tokens", "4", "--quiet", "-", stdin=prompt)
    assert given.returncode == piped.returncode == dashed.returncode == 0, piped.stderr
    assert given.stdout.strip() and given.stdout == piped.stdout == dashed.stdout


def test_listings_answer_in_json_with_the_proto_field_names(stack: RunningStack) -> None:
    models = json.loads(stack.cli("models", "list", "-o", "json").stdout)
    assert {"name", "workers", "default"} <= set(models["models"][0])
    tenants = json.loads(stack.cli("admin", "tenant-list", "-o", "json").stdout)
    assert "system" in {t["name"] for t in tenants["tenants"]}
    status = json.loads(stack.cli("status", "-o", "json").stdout)
    assert status["ready"] is True and status["services"][0]["instance"]["service"]
    table = stack.cli("models", "list")
    assert table.stdout.splitlines()[0].split() == ["MODEL", "WORKERS", "DEFAULT"]


def test_a_client_saved_to_a_file_signs_in_with_credentials(stack: RunningStack) -> None:
    path = stack.data_dir / "saved-client.json"
    created = stack.cli(
        "admin", "client-create", "--name", "saved", "--scope", "models:read", "--save", str(path)
    )
    assert created.returncode == 0, created.stderr
    assert "client_secret" not in created.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["client_id"] == json.loads(created.stdout)["client"]["client_id"]
    listed = stack.cli("--credentials", str(path), "models", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    again = stack.cli("admin", "client-create", "--name", "again", "--save", str(path))
    assert again.returncode == 2 and "exists already" in again.stderr
    assert json.loads(path.read_text()) == saved


def test_an_unreachable_gateway_or_issuer_is_one_sentence_and_status_3(
    stack: RunningStack, tmp_path: Path
) -> None:
    gone = stack.cli("--gateway", "127.0.0.1:1", "status")
    assert gone.returncode == 3
    assert gone.stderr.startswith("llmos: gateway at 127.0.0.1:1 is unreachable")
    credentials = tmp_path / "elsewhere.json"
    credentials.write_text(
        json.dumps({"issuer": "https://127.0.0.1:1", "client_id": "c", "client_secret": "s"})
    )
    no_issuer = stack.cli("--credentials", str(credentials), "status")
    assert no_issuer.returncode == 3
    assert no_issuer.stderr.startswith("llmos: the issuer at https://127.0.0.1:1 is unreachable")
    for result in (gone, no_issuer):
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr

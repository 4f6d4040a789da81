"""The `llmos` command's pure pieces: tables and JSON, prompts from stdin, the
credentials file, chat transcripts, and failures told in one sentence."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import urllib.error
from pathlib import Path

import grpc
import pytest

from llmos.cli import session
from llmos.cli.chat import Transcript, line_kind
from llmos.cli.errors import EXIT_REFUSED, EXIT_UNREACHABLE, CommandError, explain
from llmos.cli.main import main
from llmos.cli.output import Listing, message_json, render_table
from llmos.cli.prompts import prompt_text, texts_from
from llmos.cli.session import talking_to
from llmos.cli.system import status_listing
from llmos.keyfiles import new_private_file
from llmos.oauthclient import Issuer, credentials_json, read_client_credentials
from llmos.v1 import gateway_pb2

ESC = "\x1b["
OFFLINE = [
    "--gateway", "127.0.0.1:1", "--token", "t", "--issuer", "https://issuer.invalid", "--insecure",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_stack_or_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command sees no running stack, saved session or LLMOS_* setting of the host."""
    for name in [n for n in os.environ if n.startswith("LLMOS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LLMOS_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LLMOS_SESSION", str(tmp_path / "session.json"))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _status(ready: bool) -> gateway_pb2.SystemStatus:
    status = gateway_pb2.SystemStatus(ready=ready, missing_services=["audit"])
    service = status.services.add(state=gateway_pb2.ServiceStatus.STATE_SERVING)
    service.instance.service, service.instance.address = "gateway", "127.0.0.1:50051"
    return status


def test_a_piped_table_is_plain_columns_with_the_header_first_and_one_line_per_row() -> None:
    listing = Listing(("NAME", "STATE", "DETAIL"), [("a-very-long-name", "OK", "word " * 60)])
    text = render_table(listing, terminal=False)
    lines = text.splitlines()
    assert ESC not in text and "─" not in text and "│" not in text
    assert lines[0].split() == ["NAME", "STATE", "DETAIL"]
    assert lines[1].split()[:2] == ["a-very-long-name", "OK"] and len(lines) == 2


def test_a_table_on_a_terminal_is_styled_and_fits_the_width() -> None:
    listing = Listing(("NAME", "DETAIL"), [("n", "word " * 60)])
    text = render_table(listing, terminal=True, width=60)
    assert ESC in text
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert all(len(line) <= 60 for line in plain.splitlines()) and "word" in plain


def test_cells_are_shown_as_given_never_read_as_markup() -> None:
    text = render_table(Listing(("A",), [("[bold]x[/bold]",)]), terminal=False)
    assert "[bold]x[/bold]" in text


def test_status_rows_give_service_then_state_and_the_footer_says_whether_ready() -> None:
    text = render_table(status_listing(_status(ready=False)), terminal=False)
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines()[1:3]}
    assert rows == {"gateway": "SERVING", "audit": "MISSING"}
    assert text.rstrip().endswith("LLM OS is NOT ready")


def test_json_output_is_the_message_with_proto_field_names() -> None:
    document = json.loads(message_json(_status(ready=True)))
    assert document["missing_services"] == ["audit"] and document["ready"] is True


def test_a_prompt_argument_is_used_as_given_even_with_a_pipe() -> None:
    assert prompt_text("Hello", io.StringIO("ignored")) == "Hello"


def test_dash_or_no_prompt_with_a_pipe_reads_stdin_less_its_last_newline() -> None:
    assert prompt_text("-", io.StringIO("line one\nline two\n")) == "line one\nline two"
    assert prompt_text(None, io.StringIO("piped\n")) == "piped"


def test_no_prompt_on_a_terminal_is_refused_rather_than_waited_for() -> None:
    with pytest.raises(CommandError, match="no prompt"):
        prompt_text(None, _Terminal())


def test_an_empty_prompt_from_stdin_is_refused() -> None:
    with pytest.raises(CommandError, match="empty"):
        prompt_text("-", io.StringIO("\n"))


def test_texts_from_stdin_are_its_non_empty_lines() -> None:
    assert texts_from([], io.StringIO("one\n\ntwo\n")) == ["one", "two"]
    assert texts_from(["-"], io.StringIO("three\n")) == ["three"]
    assert texts_from(["a", "b"], io.StringIO("unused")) == ["a", "b"]


def test_a_saved_credentials_file_is_private_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    with new_private_file(path) as file:
        file.write(credentials_json("https://issuer.example", "client-1", "s3cret"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    issuer, client_id, secret = read_client_credentials(path)
    assert (issuer.url, client_id, secret) == ("https://issuer.example", "client-1", "s3cret")


def test_a_private_file_never_replaces_one_that_exists(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text("keep me")
    with pytest.raises(FileExistsError), new_private_file(path):
        pass
    assert path.read_text() == "keep me"


def test_a_private_file_is_removed_when_writing_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    with pytest.raises(RuntimeError), new_private_file(path):
        raise RuntimeError("the server refused")
    assert not path.exists()


def test_client_create_refuses_an_existing_file_before_asking_the_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "job.json"
    path.write_text("keep me")
    code = main([*OFFLINE, "admin", "client-create", "--name", "n", "--save", str(path)])
    assert code == EXIT_REFUSED  # an unreachable gateway would have said 3
    assert "exists already" in capsys.readouterr().err
    assert path.read_text() == "keep me"


def test_client_create_leaves_no_file_when_the_gateway_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "job.json"
    code = main([*OFFLINE, "admin", "client-create", "--name", "n", "--save", str(path)])
    assert code == EXIT_UNREACHABLE and not path.exists()
    assert capsys.readouterr().err.startswith("llmos: gateway at 127.0.0.1:1 is unreachable")


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (
            ["--gateway", "10.1.2.3:50051", "--insecure"],
            "refusing to send credentials in plaintext to the gateway at 10.1.2.3:50051: use TLS",
        ),
        (
            ["--gateway", "127.0.0.1:1"],
            "refusing to send credentials in plaintext to the gateway at 127.0.0.1:1: give its "
            "CA with --ca-file for TLS, or pass --insecure",
        ),
    ],
    ids=["another machine, even with --insecure", "this machine without --insecure"],
)
def test_a_token_is_never_sent_in_plaintext_unasked_or_off_this_machine(
    args: list[str], sentence: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*args, "--token", "secret-token", "status"])
    err = capsys.readouterr().err
    assert code == EXIT_REFUSED
    assert err.startswith(f"llmos: {sentence}") and err.count("\n") == 1
    assert "secret-token" not in err


def test_a_client_secret_is_never_sent_to_a_plaintext_issuer_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "job.json"
    path.write_text(credentials_json("http://10.1.2.3:50050", "client-1", "s3cret"))
    ca = tmp_path / "ca.pem"
    ca.write_text("not used: nothing is sent")
    code = main(["--gateway", "10.1.2.3:50051", "--ca-file", str(ca), "--credentials", str(path),
                 "status"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == EXIT_REFUSED
    assert err.startswith(
        "llmos: refusing to send credentials in plaintext to the issuer at http://10.1.2.3:50050"
    )


def test_a_chat_transcript_sends_every_turn_with_the_system_message_first() -> None:
    transcript = Transcript(system="Be brief.")
    transcript.ask("Hi, I am Ada.")
    transcript.answered("Hello Ada.")
    sent = transcript.ask("What is my name?")
    assert [(m.role, m.content) for m in sent] == [
        ("system", "Be brief."), ("user", "Hi, I am Ada."), ("assistant", "Hello Ada."),
        ("user", "What is my name?"),
    ]  # fmt: skip


def test_a_failed_question_is_withdrawn_and_reset_keeps_the_system_message() -> None:
    transcript = Transcript(system="Be brief.")
    transcript.ask("lost to an error")
    transcript.withdraw()
    assert [m.role for m in transcript.messages()] == ["system"]
    transcript.ask("again")
    transcript.reset()
    assert [m.content for m in transcript.messages()] == ["Be brief."]


def test_chat_lines_are_questions_unless_they_are_commands() -> None:
    assert [line_kind(x) for x in ("/exit", "/quit", "/reset", " ", "/nope", "hi /exit")] == [
        "exit", "exit", "reset", "blank", "unknown", "ask",
    ]  # fmt: skip


class _Refused(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_grpc_refusals_keep_their_code_name_and_unavailable_means_unreachable() -> None:
    denied = explain(_Refused(grpc.StatusCode.NOT_FOUND, "no such model"), "gw:1")
    down = explain(_Refused(grpc.StatusCode.UNAVAILABLE, "connection refused"), "gw:1")
    assert denied is not None and down is not None
    assert (denied.sentence, denied.exit_code) == ("NOT_FOUND: no such model", EXIT_REFUSED)
    assert down.sentence.startswith("gateway at gw:1 is unreachable")
    assert down.exit_code == EXIT_UNREACHABLE


def test_an_unreachable_issuer_is_one_sentence_naming_it() -> None:
    issuer = Issuer("https://issuer.example")
    with pytest.raises(CommandError) as caught, talking_to(issuer):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    assert caught.value.exit_code == EXIT_UNREACHABLE
    assert str(caught.value).startswith("the issuer at https://issuer.example is unreachable")


def test_a_malformed_credentials_file_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "creds.json"
    path.write_text("{not json")
    assert main(["--insecure", "--credentials", str(path), "status"]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert err.startswith(f"llmos: the credentials file {path}") and err.count("\n") == 1


def test_a_bad_flag_value_is_one_line_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "-o", "yaml"]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert err.startswith("llmos: ") and "--output" in err and err.count("\n") == 1


def test_an_unexpected_failure_is_one_line_and_its_traceback_waits_for_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> dict[str, str]:
        raise RuntimeError("the stack file exploded")

    monkeypatch.setattr(session, "stack_info", broken)
    assert main(["--token", "t", "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("llmos: unexpected error: the stack file exploded")
    assert "Traceback" not in err
    monkeypatch.setenv("LLMOS_DEBUG", "1")
    assert main(["--token", "t", "status"]) == 1
    assert "Traceback" in capsys.readouterr().err

"""The console's pure parts: sessions and signed sign-in states, PKCE challenges, API
errors placed on form fields, the training form, loss curves and their history."""

from __future__ import annotations

import base64
import hashlib
import itertools

import pytest

from gateway.console.app import _local_path, _refusal_of
from gateway.console.charts import loss_chart
from gateway.console.forms import field_errors
from gateway.console.pages.training import submission
from gateway.console.sessions import (
    IDLE_S,
    MAX_AGE_S,
    PENDING_TTL_S,
    Sessions,
    SignInStates,
    Tokens,
)
from gateway.console.signin import challenge_of
from llmos.errors import InvalidArgument
from llmos.v1 import common_pb2
from services.scheduler.progress_history import MAX_POINTS, extended


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _tokens() -> Tokens:
    return Tokens("a", "r", 2000.0, "ada", "system", frozenset({"inference"}))


def test_a_sign_in_state_is_checked_by_its_signature_and_age() -> None:
    clock = Clock()
    states = SignInStates(b"k" * 32, clock)
    issued = states.issue("/console/training")
    assert states.check(issued.state) == issued  # no memory needed: the state says it all
    assert len(issued.verifier) == 43  # RFC 7636's minimum, 256 bits
    body, _, signature = issued.state.partition(".")
    forged = states.issue("https://evil.example/").state.partition(".")[0]
    assert states.check(f"{forged}.{signature}") is None  # another body, the old signature
    assert states.check(body) is None and states.check("") is None
    assert SignInStates(b"x" * 32, clock).check(issued.state) is None  # another process
    other = states.issue("/console/")
    assert other.state != issued.state and other.verifier != issued.verifier
    clock.now += PENDING_TTL_S + 1
    assert states.check(issued.state) is None


def test_a_session_is_found_by_its_id_until_idle_too_old_or_ended() -> None:
    clock = Clock()
    sessions = Sessions(clock)
    session = sessions.start(_tokens())
    assert sessions.find(session.session_id) is session
    assert sessions.find("") is None and sessions.find("guess") is None
    clock.now += 3600
    assert sessions.find(session.session_id) is session  # used an hour after sign-in
    clock.now += IDLE_S / 2
    assert sessions.find(session.session_id, touch=False) is session  # a page's own refresh
    clock.now += IDLE_S / 2 + 1
    assert sessions.find(session.session_id) is None  # ... did not count as use
    busy = sessions.start(_tokens())
    for _ in range(int(MAX_AGE_S // IDLE_S) + 1):
        clock.now += IDLE_S - 1
        found = sessions.find(busy.session_id)
    assert found is None  # in use all along, but signed in too long ago
    other = sessions.start(_tokens())
    assert other.csrf != other.session_id
    assert sessions.end(other.session_id) is other and sessions.find(other.session_id) is None


def test_a_page_takes_only_its_own_flash_and_only_once() -> None:
    session = Sessions(Clock()).start(_tokens())
    session.flash.update({"models.ok": "deployed", "admin.secret": "s3cret", "audit.verify": "x"})
    assert session.take_flash("models") == {"ok": "deployed"}
    assert session.take_flash("models") == {}
    assert set(session.flash) == {"admin.secret", "audit.verify"}


@pytest.mark.parametrize(
    ("asked", "returns_to"),
    [
        ("/console/audit?principal=a&action=b", "/console/audit?principal=a&action=b"),
        ("https://evil.example/console/", "/console/"),
        ("//evil.example/console/", "/console/"),
        ("/authorize?x=1", "/console/"),
        ("", "/console/"),
    ],
)
def test_sign_in_returns_only_to_a_console_page(asked: str, returns_to: str) -> None:
    assert _local_path(asked) == returns_to


def test_an_authorization_error_is_told_in_our_words_never_the_querys() -> None:
    said = _refusal_of({"error": "access_denied", "error_description": "Call +1 555 0100"})
    assert said == "The sign-in was refused." and "555" not in said
    assert "did not complete" in _refusal_of({"error": "<script>"})


def test_the_pkce_challenge_is_rfc_7636s_s256_of_the_verifier() -> None:
    # the example of RFC 7636 appendix B
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert challenge_of(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge_of(verifier) == base64.urlsafe_b64encode(digest).decode().rstrip("=")


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("spec.config.steps", {"steps": "must be at least 1"}),
        ("spec.name", {"name": "must be at least 1"}),
        ("spec.resources.cpu_millicores", {"cpus": "must be at least 1"}),
        ("spec.config.unknown", {"": "spec.config.unknown: must be at least 1"}),
    ],
)
def test_an_api_refusal_lands_on_the_field_it_names(field: str, expected: dict[str, str]) -> None:
    exc = InvalidArgument(field, "must be at least 1")
    assert field_errors(exc, ["steps", "name", "cpus"], {"cpu_millicores": "cpus"}) == expected


def test_the_training_form_becomes_a_job_with_typed_settings() -> None:
    form = {"name": "poet", "steps": "30", "learning_rate": "0.01", "dataset": "shakespeare",
            "schedule": "linear", "priority": "high", "processes": "2", "cpus": "1",
            "memory_mib": "512", "seed": "many"}  # fmt: skip
    request = submission(form)
    spec = request.spec
    assert spec.name == "poet" and spec.kind == "training"
    assert spec.priority == common_pb2.PRIORITY_HIGH
    assert spec.resources.processes == 2 and spec.resources.memory_bytes == 512 << 20
    config = dict(spec.config)
    assert config["steps"] == 30 and config["learning_rate"] == 0.01
    assert config["dataset"] == "shakespeare" and config["schedule"] == "linear"
    assert config["seed"] == "many"  # the scheduler says it must be a number, naming it
    assert "base_model" not in config  # empty fields are left to the defaults
    with pytest.raises(InvalidArgument) as refused:
        submission({**form, "cpus": "two"})
    assert refused.value.field == "cpus"


def _point(step: int, loss: float, val: float = 0.0) -> common_pb2.TrainingProgress:
    return common_pb2.TrainingProgress(step=step, total_steps=100, loss=loss, val_loss=val)


def test_a_resumed_attempt_replaces_the_curve_after_its_checkpoint() -> None:
    history: list[common_pb2.TrainingProgress] = []
    for step in range(1, 11):
        history = extended(history, _point(step, 5 - step / 10))
    resumed = extended(history, _point(6, 4.0))
    assert [p.step for p in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed[-1].loss == 4.0


@pytest.mark.parametrize("every", [1, 53])
def test_a_long_run_keeps_a_bounded_curve_covering_it_evenly(every: int) -> None:
    history: list[common_pb2.TrainingProgress] = []
    last = 20_000
    for step in range(every, last + 1, every):  # a report every `every` steps
        history = extended(history, _point(step, 1.0))
    steps = [p.step for p in history]
    assert len(steps) <= MAX_POINTS + 1
    assert steps == sorted(steps) and steps[-1] == last - last % every
    assert steps[0] <= 4 * last / MAX_POINTS  # the start of the run is still there
    widest = max(b - a for a, b in itertools.pairwise(steps))
    assert widest <= 4 * last / MAX_POINTS + every, widest  # no stretch left out


def test_the_loss_chart_draws_both_curves_within_its_frame() -> None:
    assert loss_chart([], 100) is None
    history = [_point(10, 3.0), _point(20, 2.0, 2.5), _point(30, 1.5), _point(40, 1.0, 1.8)]
    chart = loss_chart(history, 100)
    assert chart is not None
    loss = [tuple(map(float, p.split(","))) for p in chart.loss.split()]
    val = [tuple(map(float, p.split(","))) for p in chart.val_loss.split()]
    assert len(loss) == 4 and len(val) == 2
    for x, y in loss + val:
        assert chart.left <= x <= chart.right and chart.top <= y <= chart.bottom
    assert loss[0][1] < loss[-1][1]  # the loss fell: its line goes down the screen (y grows)
    assert [t.label for t in chart.x_ticks][-1] == "100"  # the axis spans the whole run
    assert "3.000" in chart.summary and "1.000" in chart.summary

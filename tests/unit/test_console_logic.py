"""The console's pure parts: sessions and pending sign-ins, PKCE challenges, API
errors placed on form fields, the training form, loss curves and their history."""

from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.console.charts import loss_chart
from gateway.console.forms import field_errors
from gateway.console.pages.training import submission
from gateway.console.sessions import IDLE_S, PENDING_TTL_S, Sessions, Tokens
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


def test_a_pending_sign_in_completes_once_and_not_after_it_expires() -> None:
    clock = Clock()
    sessions = Sessions(clock)
    first = sessions.begin("/console/training")
    assert sessions.complete(first.state) == first
    assert sessions.complete(first.state) is None  # a state works once
    late = sessions.begin("/console/")
    clock.now += PENDING_TTL_S + 1
    assert sessions.complete(late.state) is None
    assert first.verifier != late.verifier and len(first.verifier) >= 43  # RFC 7636 minimum


def test_a_session_is_found_by_its_id_until_idle_too_long_or_ended() -> None:
    clock = Clock()
    sessions = Sessions(clock)
    session = sessions.start(_tokens(), "/console/")
    assert sessions.find(session.session_id) is session
    assert sessions.find("") is None and sessions.find("guess") is None
    clock.now += IDLE_S - 1
    assert sessions.find(session.session_id) is session  # use keeps it alive
    clock.now += IDLE_S + 1
    assert sessions.find(session.session_id) is None
    other = sessions.start(_tokens(), "/console/")
    assert other.csrf != other.session_id
    assert sessions.end(other.session_id) is other and sessions.find(other.session_id) is None


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


def test_a_long_run_keeps_a_bounded_curve_from_start_to_latest() -> None:
    history: list[common_pb2.TrainingProgress] = []
    for step in range(1, 5001):
        history = extended(history, _point(step, 1.0))
    assert len(history) <= MAX_POINTS
    assert history[0].step == 1 and history[-1].step == 5000
    steps = [p.step for p in history]
    assert steps == sorted(steps)


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

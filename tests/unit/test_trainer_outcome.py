"""How a training attempt ends (pure): the program's exit code, the stop asked for and
what the program said decide the job's state, its sentence and the audit outcome."""

from __future__ import annotations

import json

from llmos.v1 import common_pb2
from services.trainer.outcome import (
    EXIT_DONE,
    EXIT_STOPPED,
    AttemptState,
    model_name,
    outcome,
)

S = common_pb2.JobState


def said(**event: object) -> bytes:
    return json.dumps(event).encode()


def test_a_program_that_finishes_succeeds_and_names_what_it_registered() -> None:
    end = outcome(AttemptState(), EXIT_DONE, result="tune@3")
    assert (end.state, end.reason, end.audit_outcome) == (
        S.JOB_STATE_SUCCEEDED,
        "training finished: registered tune@3",
        "OK",
    )
    assert outcome(AttemptState(), EXIT_DONE).reason == "training finished"


def test_a_cancel_ends_as_cancelled_even_if_the_program_finished_meanwhile() -> None:
    state = AttemptState()
    assert state.request("cancel", "cancelled by alice")
    for code in (EXIT_STOPPED, EXIT_DONE):
        end = outcome(state, code)
        assert (end.state, end.reason, end.audit_outcome) == (
            S.JOB_STATE_CANCELLED,
            "cancelled",
            "CANCELLED",
        )


def test_a_preempted_attempt_says_why_and_where_it_checkpointed() -> None:
    state = AttemptState()
    state.request("preempt", "preempted for critical job j-9")
    state.read(said(event="stopped", checkpoint_step=40))
    end = outcome(state, EXIT_STOPPED)
    assert end.state == S.JOB_STATE_PREEMPTED and end.audit_outcome == "ABORTED"
    assert end.reason == "preempted for critical job j-9; checkpointed at step 40"


def test_the_first_stop_asked_for_stands_and_unknown_actions_are_ignored() -> None:
    state = AttemptState()
    assert not state.request("explode")
    assert state.request("abort", "its trainer no longer runs it")
    assert not state.request("cancel")
    assert outcome(state, EXIT_STOPPED).state == S.JOB_STATE_PREEMPTED  # requeued, not ended


def test_a_failure_carries_the_programs_reason_or_its_exit_status() -> None:
    state = AttemptState()
    state.read(b"not json: a traceback line")
    state.read(said(event="failed", reason="seq_len 4096 is above the model's context"))
    end = outcome(state, 1)
    assert (end.state, end.reason, end.audit_outcome) == (
        S.JOB_STATE_FAILED,
        "seq_len 4096 is above the model's context",
        "INTERNAL",
    )
    assert outcome(AttemptState(), -9).reason == "the training program exited with status -9"


def test_progress_and_checkpoints_are_read_from_the_programs_events() -> None:
    state = AttemptState()
    state.read(said(event="resumed", step=10))
    assert state.checkpoint_step == 10
    state.read(
        said(
            event="progress",
            step=12,
            total_steps=50,
            loss=2.5,
            val_loss=2.7,
            tokens_per_s=900.0,
            eta_s=30.0,
        )
    )
    state.read(said(event="checkpoint", step=12))
    assert (state.progress.step, state.progress.total_steps, state.checkpoint_step) == (12, 50, 12)
    assert state.progress.loss == 2.5


def test_only_node_0_of_an_attempt_that_finished_on_its_own_registers_the_result() -> None:
    state = AttemptState()
    assert state.should_register(EXIT_DONE, node_rank=0)
    assert not state.should_register(EXIT_DONE, node_rank=1)
    assert not state.should_register(1, node_rank=0)
    state.request("preempt")
    assert not state.should_register(EXIT_DONE, node_rank=0)


def test_a_registry_name_is_made_from_any_job_name() -> None:
    assert model_name("My Tune: Shakespeare!") == "my-tune-shakespeare"
    assert model_name("???") == "trained"
    assert len(model_name("x" * 300)) == 128

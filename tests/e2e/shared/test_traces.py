"""A generation, and a training job, followed across the services by their OpenTelemetry
traces: the spans every hop exports (OTLP) share one trace, found from the response's
request id (or the job's id)."""

from __future__ import annotations

import itertools

import grpc
import pytest

from llmos.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2
from tests.e2e.conftest import RunningStack
from tests.e2e.shared.jobs import running_job
from tests.e2e.shared.sdk import api_key, client
from tools.harness import eventually
from tools.otlp import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.e2e

HOPS = ["gateway generate", "scheduler schedule", "worker generate", "triton infer"]


def test_one_generation_is_one_trace_across_the_services(
    stack: RunningStack, traces: OtlpReceiver
) -> None:
    token = stack.client_token("trace-lab", ["inference"])
    request = gateway_pb2.GenerateRequest(
        prompt="Follow me:", params=inference_pb2.GenerationParams(max_tokens=3)
    )
    with stack.channel(token) as channel:
        call = gateway_pb2_grpc.GatewayStub(channel).Generate(request)
        final = list(call)[-1]
        request_id = dict(call.trailing_metadata())["x-request-id"]
    assert final.done and call.code() == grpc.StatusCode.OK

    def whole_trace() -> list[ReceivedSpan] | None:
        spans = traces.spans()
        roots = [s for s in spans if s.attributes.get("llmos.request_id") == request_id]
        if len(roots) != 1:
            return None
        trace = [s for s in spans if s.trace_id == roots[0].trace_id]
        names = {s.name for s in trace}
        return trace if {*HOPS, "engine generate"} <= names else None

    trace = eventually(whole_trace, timeout=30, what=f"the trace of request {request_id}")
    by_name = {span.name: span for span in trace}
    assert {span.service for span in trace} == {
        "gateway", "scheduler", "inference-worker", "engine",
    }  # fmt: skip
    # each hop is the child of the one before it: the context travelled with the work
    chain = [*HOPS, "engine generate"]
    for parent, child in itertools.pairwise(chain):
        assert by_name[child].parent_id == by_name[parent].span_id, (parent, child)
    assert by_name["gateway generate"].parent_id == ""  # the client sent no context
    work_id = by_name["gateway generate"].attributes["llmos.work_id"]
    assert work_id.startswith(request_id)
    assert by_name["engine generate"].attributes["llmos.completion_tokens"] == (
        final.usage.completion_tokens
    )


def test_a_training_job_is_traced_from_submission_to_its_attempt(
    stack: RunningStack, traces: OtlpReceiver
) -> None:
    token = stack.client_token("trace-lab", ["training", "cluster:read"])
    with (
        stack.channel(token) as channel,
        running_job(gateway_pb2_grpc.GatewayStub(channel), "traced") as job,
    ):
        pass  # it ran: one placement, one attempt, ended by the cancellation

    def job_trace() -> dict[str, ReceivedSpan] | None:
        spans = [s for s in traces.spans() if s.attributes.get("llmos.job_id") == job.job_id]
        named = {span.name: span for span in spans}
        wanted = {"gateway SubmitJob", "scheduler place job", "trainer attempt"}
        return named if wanted <= set(named) else None

    spans = eventually(job_trace, timeout=30, what=f"the spans of {job.job_id}")
    submitted = spans["gateway SubmitJob"]
    for hop in ("scheduler place job", "trainer attempt"):
        assert spans[hop].trace_id == submitted.trace_id
        assert spans[hop].parent_id == submitted.span_id
    assert spans["scheduler place job"].attributes["llmos.outcome"] == "placed"
    assert spans["trainer attempt"].attributes["llmos.outcome"] == "JOB_STATE_CANCELLED"


def test_an_openai_call_continues_the_callers_trace(
    stack: RunningStack, traces: OtlpReceiver
) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    key = api_key(stack, "trace-lab", "inference")["key"]
    answer = client(stack, key).chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Trace me"}],
        max_tokens=2,
        extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
    )
    assert answer.choices[0].message.content is not None

    def continued() -> list[ReceivedSpan] | None:
        spans = [s for s in traces.spans() if s.trace_id == trace_id]
        return spans if {"gateway chat", "engine generate"} <= {s.name for s in spans} else None

    spans = eventually(continued, timeout=30, what="spans of the caller's trace")
    gateway = next(span for span in spans if span.name == "gateway chat")
    assert gateway.parent_id == parent_id

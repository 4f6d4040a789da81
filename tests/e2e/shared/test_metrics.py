"""Prometheus metrics of the running stack, found as Prometheus finds them: through the
launcher's file-based discovery targets."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmos.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2
from tests.e2e.conftest import RunningStack

pytestmark = pytest.mark.e2e

SERVICES = {"gateway", "scheduler", "inference-worker", "trainer", "storage", "audit"}


def _targets(stack: RunningStack) -> dict[str, str]:
    groups = json.loads(Path(stack.fields["metrics"]).read_text())
    return {group["labels"]["service"]: group["targets"][0] for group in groups}


def _samples(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_every_service_is_a_scrape_target(stack: RunningStack) -> None:
    targets = _targets(stack)
    assert set(targets) == SERVICES
    for service, address in targets.items():
        names = {name for name, _ in _samples(address)}
        assert "process_resident_memory_bytes" in names, service


def test_generations_are_counted_as_their_answers_say(stack: RunningStack) -> None:
    gateway = _targets(stack)["gateway"]
    model, tenant = "smollm2-135m-instruct", "metrics-lab"
    ttft = ("llmos_time_to_first_token_seconds_count", (("model", model),))
    prompt = ("llmos_prompt_tokens_total", (("model", model), ("tenant", tenant)))
    generated = ("llmos_generation_tokens_total", (("model", model), ("tenant", tenant)))
    before = _samples(gateway)
    token = stack.client_token(tenant, ["inference"])
    finals = []
    with stack.channel(token) as channel:
        for index in range(3):
            request = gateway_pb2.GenerateRequest(
                prompt=f"Metrics {index}:",
                params=inference_pb2.GenerationParams(max_tokens=3 + index, temperature=0.5),
            )
            finals.append(list(gateway_pb2_grpc.GatewayStub(channel).Generate(request))[-1])
    after = _samples(gateway)
    assert after[ttft] - before.get(ttft, 0.0) == 3
    assert after[prompt] == sum(f.usage.prompt_tokens for f in finals)
    assert after[generated] == sum(f.usage.completion_tokens for f in finals)

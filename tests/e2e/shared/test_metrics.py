"""Prometheus metrics of the running stack, found as Prometheus finds them: through the
launcher's file-based discovery targets."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2, scheduler_pb2
from tests.e2e.conftest import RunningStack
from tests.e2e.shared.scrape import targets
from tools.harness import eventually
from tools.prometheus import ALERT_RULES, Prometheus, ensure_installed, prometheus, scrape

pytestmark = pytest.mark.e2e

SERVICES = {"gateway", "scheduler", "inference-worker", "trainer", "storage", "audit"}


def _generations(stack: RunningStack, tenant: str, count: int) -> list[Any]:
    """The final responses of `count` sampled generations of different lengths."""
    finals = []
    with stack.channel(stack.client_token(tenant, ["inference"])) as channel:
        for index in range(count):
            request = gateway_pb2.GenerateRequest(
                prompt=f"Counted {index}:",
                params=inference_pb2.GenerationParams(max_tokens=2 + index, temperature=0.7),
            )
            finals.append(list(gateway_pb2_grpc.GatewayStub(channel).Generate(request))[-1])
    return finals


def test_every_service_is_a_scrape_target(stack: RunningStack) -> None:
    found = targets(stack)
    assert set(found) == SERVICES
    for service, address in found.items():
        names = {name for name, _ in scrape(address)}
        assert "process_resident_memory_bytes" in names, service


def test_generations_are_counted_as_their_answers_say(stack: RunningStack) -> None:
    gateway = targets(stack)["gateway"]
    model, tenant = "smollm2-135m-instruct", "metrics-lab"
    ttft = ("llmos_time_to_first_token_seconds_count", (("model", model),))
    prompt = ("llmos_prompt_tokens_total", (("model", model), ("tenant", tenant)))
    generated = ("llmos_generation_tokens_total", (("model", model), ("tenant", tenant)))
    before = scrape(gateway)
    finals = _generations(stack, tenant, 3)
    after = scrape(gateway)
    assert after[ttft] - before.get(ttft, 0.0) == 3
    assert after[prompt] == sum(f.usage.prompt_tokens for f in finals)
    assert after[generated] == sum(f.usage.completion_tokens for f in finals)


@pytest.fixture(scope="module")
def scraper(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus scraping the stack every second through its targets.json."""
    discovery = Path(stack.fields["metrics"])
    with prometheus(discovery, tmp_path_factory.mktemp("prometheus"), every_s=1.0) as server:
        yield server


def test_prometheus_scrapes_every_service_and_counts_what_answers_say(
    stack: RunningStack, scraper: Prometheus
) -> None:
    up = {s["metric"]["service"] for s in _eventually_query(scraper, "up == 1", len(SERVICES))}
    assert up == SERVICES
    tenant, model = "prometheus-lab", "smollm2-135m-instruct"
    ttft = f'sum(llmos_time_to_first_token_seconds_count{{model="{model}"}})'
    before = scraper.value(ttft) or 0.0
    finals = _generations(stack, tenant, 4)
    wanted = {
        ttft: before + len(finals),
        f'llmos_prompt_tokens_total{{tenant="{tenant}"}}': sum(
            f.usage.prompt_tokens for f in finals
        ),
        f'llmos_generation_tokens_total{{tenant="{tenant}"}}': sum(
            f.usage.completion_tokens for f in finals
        ),
    }

    def scraped() -> dict[str, float | None] | None:
        now = {query: scraper.value(query) for query in wanted}
        return now if now == wanted else None

    eventually(scraped, timeout=30, what=f"Prometheus to scrape the generations: {wanted}")
    # every service reports itself healthy, with its dependencies up
    healthy = _eventually_query(scraper, "llmos_healthy == 1", len(SERVICES))
    assert {s["metric"]["service"] for s in healthy} == SERVICES
    assert scraper.value('min(llmos_dependency_up{service="inference-worker"})') == 1
    serving = scraper.query('llmos_workers{state="serving"} > 0')
    assert {s["metric"]["role"] for s in serving} == {"inference-worker", "trainer"}


def test_the_alert_rules_load(scraper: Prometheus) -> None:
    checked = subprocess.run(
        [str(ensure_installed().with_name("promtool")), "check", "rules", str(ALERT_RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    groups = scraper.get("/api/v1/rules")["data"]["groups"]
    alerts = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"LLMOSWorkerDown", "LLMOSTimeToFirstTokenHigh", "LLMOSAuditIngestLag"} <= alerts
    firing = scraper.get("/api/v1/alerts")["data"]["alerts"]
    assert [a["labels"]["alertname"] for a in firing if a["state"] == "firing"] == []


def _eventually_query(scraper: Prometheus, expression: str, count: int) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        found = scraper.query(expression)
        return found if len(found) >= count else None

    return eventually(enough, timeout=30, what=f"{count} series of {expression}")


def test_a_workers_heartbeat_counts_the_tokens_it_generated(stack: RunningStack) -> None:
    """What `llmos top`'s per-worker tokens/s is computed from."""
    request = scheduler_pb2.GetClusterStatusRequest()
    with stack.channel() as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        def generated() -> int:
            workers = stub.GetClusterStatus(request, timeout=10).workers
            return sum(w.generated_tokens for w in workers)

        before = generated()
        finals = _generations(stack, "heartbeat-lab", 2)
        wanted = before + sum(f.usage.completion_tokens for f in finals)
        eventually(lambda: generated() >= wanted, timeout=30, what=f"{wanted} tokens counted")

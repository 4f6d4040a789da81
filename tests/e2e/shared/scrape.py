"""Reading the stack's metrics as Prometheus does: the launcher's file-based discovery
targets, then each target's /metrics."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import RunningStack

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def targets(stack: RunningStack) -> dict[str, str]:
    """service -> the address Prometheus scrapes."""
    groups = json.loads(Path(stack.fields["metrics"]).read_text())
    return {group["labels"]["service"]: group["targets"][0] for group in groups}


def samples(address: str) -> Samples:
    """(name, sorted labels) -> value of every sample a target exposes now."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

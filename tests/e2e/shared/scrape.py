"""Reading the stack's metrics as Prometheus does: the launcher's file-based discovery
targets, then each target's /metrics."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import RunningStack
from tools.prometheus import Samples, scrape, service_targets


def targets(stack: RunningStack) -> dict[str, str]:
    """service -> the address Prometheus scrapes."""
    return service_targets(Path(stack.fields["metrics"]))


def samples(address: str) -> Samples:
    """(name, sorted labels) -> value of every sample a target exposes now."""
    return scrape(address)

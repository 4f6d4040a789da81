"""The stack's scrape targets, as Prometheus finds them: the launcher's file-based
discovery targets (read them with tools.prometheus.scrape)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import RunningStack
from tools.prometheus import service_targets


def targets(stack: RunningStack) -> dict[str, str]:
    """service -> the address Prometheus scrapes."""
    return service_targets(Path(stack.fields["metrics"]))

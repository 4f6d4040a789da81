"""One stack for every module in this package: they use it and disturb nothing (the test
that loads and unloads a model uses a copy of its own), so they share it, on one worker
(tests/conftest.py schedules this package as one work unit)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import RunningStack, running_stack
from tools.otlp import OtlpReceiver


@pytest.fixture(scope="package")
def traces() -> Iterator[OtlpReceiver]:
    """Where the shared stack's services export their spans (OTLP/gRPC)."""
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="package")
def shared_stack(
    tmp_path_factory: pytest.TempPathFactory, model_folder: Path, traces: OtlpReceiver
) -> Iterator[RunningStack]:
    """One stack for the package. Every test here calls from 127.0.0.1, and many fail on
    purpose (bad tokens, denied calls, malformed requests): together they would cross
    intrusion detection's thresholds, but the launcher allowlists the machine's own
    loopback address (tools/devstack/stack.py); tests/integration/test_intrusion.py tests
    detection itself. It serves in fp32, where greedy tokens must equal transformers'
    (test_inference.py); the failover stack serves the machine's default precision.
    Every service exports its traces to `traces`, as production would to a collector."""
    env = {"LLMOS_PRECISION": "fp32", **traces.env()}
    with running_stack(tmp_path_factory, model_folder, False, **env) as running:
        yield running


@pytest.fixture(scope="module")
def stack(shared_stack: RunningStack) -> RunningStack:
    """The stack a test runs against (modules that disturb it override this)."""
    return shared_stack

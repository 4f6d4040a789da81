"""The whole stack, started exactly as `make run` starts it, once per test module."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

LLMOS = str(Path(sys.executable).parent / "llmos")


@dataclass
class RunningStack:
    proc: subprocess.Popen[str]
    fields: dict[str, str]
    data_dir: Path
    output: list[str]

    @property
    def gateway(self) -> str:
        return self.fields["gateway"]

    def status(self) -> dict[str, Any]:
        result = subprocess.run(
            [LLMOS, "--gateway", self.gateway, "status", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return dict(json.loads(result.stdout))


def parse_ready_line(line: str) -> dict[str, str]:
    """`LLM OS ready k=v k=v` -> {k: v}: the contract scripts rely on."""
    assert line.startswith("LLM OS ready ")
    return dict(pair.split("=", 1) for pair in line.removeprefix("LLM OS ready ").split())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_folder: Path) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("stack") / "var"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.devstack",
            "--data-dir",
            str(data_dir),
            "--gateway-port",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 180
        while True:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            if line.startswith("LLM OS ready"):
                break
        yield RunningStack(proc, parse_ready_line(line.strip()), data_dir, output)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

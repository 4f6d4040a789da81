"""The whole stack, started exactly as `make run` starts it, once per test module."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tools.devstack.process import StackProcess

LLMOS = str(Path(sys.executable).parent / "llmos")


@dataclass
class RunningStack:
    launcher: StackProcess
    fields: dict[str, str]
    data_dir: Path

    @property
    def gateway(self) -> str:
        return self.fields["gateway"]

    @property
    def output(self) -> list[str]:
        return self.launcher.output

    def status(self) -> dict[str, Any]:
        result = subprocess.run(
            [LLMOS, "--gateway", self.gateway, "status", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_folder: Path) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("stack") / "var"
    # the model was imported once for the session; the worker reads it from there
    launcher = StackProcess(data_dir, env={"LLMOS_MODELS_DIR": str(model_folder.parent)}, cwd=ROOT)
    try:
        yield RunningStack(launcher, launcher.start(), data_dir)
    finally:
        launcher.stop()

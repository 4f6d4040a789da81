"""The launcher as a child process, for tests, benchmarks and the demo: start it (as
`python -m tools.devstack`, or through `make run` exactly as a user does), wait for the
ready line, read its fields, stop it. The ready line is the contract scripts rely on."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tools.harness import ROOT, Process, start_process

READY_PREFIX = "LLM OS ready "


def format_ready_line(fields: dict[str, str]) -> str:
    """`LLM OS ready k=v k=v ...` (values never contain spaces)."""
    return READY_PREFIX + " ".join(f"{key}={value}" for key, value in fields.items())


def parse_ready_line(line: str) -> dict[str, str]:
    """The `key=value` fields of a ready line."""
    if not line.startswith(READY_PREFIX):
        raise ValueError(f"not a ready line: {line!r}")
    return dict(pair.split("=", 1) for pair in line.removeprefix(READY_PREFIX).split())


class StackProcess:
    """The whole stack in a child process (the launcher, or `make run` around it), with
    its output in a log file beside the data directory."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        via_make: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd or ROOT
        self.via_make = via_make
        self.fields: dict[str, str] = {}
        self.process: Process | None = None

    @property
    def output(self) -> list[str]:
        """What the launcher printed so far, line by line."""
        if self.process is None:
            return []
        try:
            return self.process.log_path.read_text(errors="replace").splitlines(keepends=True)
        except OSError:
            return []

    def _ready_line(self) -> str:
        return next((line for line in self.output if line.startswith(READY_PREFIX)), "")

    def command(self) -> list[str]:
        """How the stack is started: the launcher on free ports (through make if asked)."""
        ports = ["--gateway-port", "0", "--auth-port", "0"]
        if self.via_make:
            return ["make", "--no-print-directory", "-C", str(self.cwd), "run",
                    f"DATA_DIR={self.data_dir}", f"RUN_ARGS={' '.join(ports)}"]  # fmt: skip
        return [sys.executable, "-m", "tools.devstack", "--data-dir", str(self.data_dir), *ports]

    def start(self, timeout_s: float = 240.0) -> dict[str, str]:
        """Start the stack and return the ready line's fields once every service serves."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.process = start_process("launcher", self.command(), self.env, self.data_dir.parent)
        self.process.wait_ready(self._ready_line, timeout_s)
        self.fields = parse_ready_line(self._ready_line().strip())
        return self.fields

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def terminate(self, timeout_s: float = 120.0) -> int:
        """SIGTERM to the launcher (or to make) alone, as a user's `kill` would send it,
        and its exit code; unlike `stop`, nothing else is ended on its behalf."""
        assert self.process is not None
        self.process.signal(signal.SIGTERM)
        return self.process.proc.wait(timeout_s)

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM the launcher (it stops everything) and return its exit code."""
        if self.process is None:
            return 0
        code = self.process.stop(timeout_s)
        return 0 if code is None else code

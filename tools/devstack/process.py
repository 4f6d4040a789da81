"""The launcher as a child process, for tests and benchmarks: start it, wait for the
ready line, read its fields, stop it. The ready line is the contract scripts rely on."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

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
    """`python -m tools.devstack` in a child process, with its output collected."""

    def __init__(
        self, data_dir: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.output: list[str] = []
        self.fields: dict[str, str] = {}
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 240.0) -> dict[str, str]:
        """Start the stack and return the ready line's fields once every service serves."""
        args = ["--data-dir", str(self.data_dir), "--gateway-port", "0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.devstack", *args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.output.append(line)
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                self.stop()
                raise TimeoutError(
                    f"no ready line after {timeout_s:g}s:\n{''.join(self.output)}"
                ) from None
            if line.startswith(READY_PREFIX):
                self.fields = parse_ready_line(line.strip())
                return self.fields
            if proc.poll() is not None and lines.empty():
                raise RuntimeError(f"the launcher exited early:\n{''.join(self.output)}")

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM the launcher (it stops everything) and return its exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

"""Debian packages the tests need and a fresh machine lacks (Prometheus, Chromium),
installed on first use: tests and CI run as root, and apt's registry answers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tools.devstack.infra import InfraError


def ensure_commands(commands: dict[str, str]) -> dict[str, Path]:
    """Each command's path ({command: Debian package}); missing ones' packages are
    installed, with the package lists refreshed once if they are stale."""
    missing = sorted({pkg for command, pkg in commands.items() if not shutil.which(command)})
    if missing:
        install = [
            "apt-get", "install", "-y", "-q", "--no-install-recommends",
            "-o", "DPkg::Lock::Timeout=300", *missing,
        ]  # fmt: skip
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:  # stale package lists on a fresh machine: refresh, again
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
            done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            why = done.stderr.strip()[-500:]
            raise InfraError(f"could not install {', '.join(missing)}: {why}")
    found = {command: shutil.which(command) for command in commands}
    absent = [command for command, path in found.items() if not path]
    if absent:
        raise InfraError(f"installed, yet not on PATH: {', '.join(absent)}")
    return {command: Path(str(path)) for command, path in found.items()}

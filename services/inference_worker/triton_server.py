"""The `tritonserver` a worker runs as its own process, watched and restarted.

The binary and its Python backend come from the `nvidia-pytriton` wheel (the real
Triton Inference Server, which runs on CPU too); nothing of PyTriton's Python API is
used: the server loads the worker's generated model repository (repository.py) in
explicit model-control mode, and the worker reaches it through `tritonclient` only. On a
GPU node an NGC Triton container takes this process's place (`LLMOS_TRITON_URL`).

The server listens on loopback only, and every protocol but health answers only to
this worker's access token, so another local user can neither run nor unload models.
Its programs run from the worker's footprint directory (leftovers.py), so that the
Python-backend stubs it starts, which survive a server that died and ignore SIGTERM,
can be found and ended by their ids before a restart and at stop.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from llmos.errors import Unavailable
from llmos.ports import free_port, port_open
from services.inference_worker.leftovers import STUB, TritonFootprint

log = logging.getLogger("llmos.triton")

#: the gRPC metadata Triton checks on restricted protocols, and its value's key there
ACCESS_KEY = "triton-access-token"
ACCESS_TOKEN_HEADER = f"triton-grpc-protocol-{ACCESS_KEY}"
RESTRICTED = "inference,model-repository,model-config,shared-memory,statistics,trace,logging"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


def distribution() -> Path:
    """Where the nvidia-pytriton wheel keeps the server (its package is not imported)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable("nvidia-pytriton is not installed: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def server_environment() -> dict[str, str]:
    """The server's environment: its shared libraries and this interpreter's libpython
    on the library path, and this virtualenv first on PATH, which is how the embedded
    Python of the backend stub finds this environment's packages."""
    env = dict(os.environ)
    libs = [
        str(sysconfig.get_config_var("LIBDIR") or ""),
        str(distribution().parent.parent / "nvidia_pytriton.libs"),
        *env.get("LD_LIBRARY_PATH", "").split(os.pathsep),
    ]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(p for p in libs if p))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class TritonServer:
    """One tritonserver process serving `repository`, started and restarted by its worker."""

    def __init__(
        self, footprint: TritonFootprint, repository: Path, log_file: Path, host: str = "127.0.0.1"
    ) -> None:
        self.footprint = footprint
        self.repository = repository
        self.log_file = log_file
        self.host = host
        self.access_token = secrets.token_urlsafe(32)
        self.grpc_port = 0
        self.metrics_port = 0
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's gRPC address."""
        return f"{self.host}:{self.grpc_port}"

    def _install(self) -> Path:
        """Place the server and the backend for this Python in the footprint directory."""
        dist = distribution()
        workspace = self.footprint.workspace
        backend = workspace / "backends" / "python"
        if not backend.is_dir():
            backend.mkdir(parents=True)
            for item in (dist / "backends" / "python").iterdir():
                if item.is_file():
                    shutil.copy2(item, backend / item.name)
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            shutil.copy2(dist / "python_backend_stubs" / version / STUB, backend / STUB)
            (workspace / "bin").mkdir()
            (workspace / "bin" / "tritonserver").symlink_to(dist / "bin" / "tritonserver")
        return workspace

    def _command(self, workspace: Path) -> list[str]:
        tag = self.footprint.directory.name
        return [
            str(workspace / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={workspace / 'backends'}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--grpc-restricted-protocol={RESTRICTED}:{ACCESS_KEY}={self.access_token}",
            "--allow-http=false",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            # shared-memory regions of this server's stubs must not collide with another's
            f"--backend-config=python,shm-region-prefix-name={tag}-{self.restarts}-",
            # generations were ended before a stop: nothing is left to wait for
            "--exit-timeout-secs=2",
            "--log-verbose=0",
        ]

    def start(self) -> str:
        """Start the server (again, after a restart) and wait until it accepts calls."""
        workspace = self._install()
        self.repository.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if not self.grpc_port or port_open(self.host, self.grpc_port):
            self.grpc_port = free_port(self.host)
        if not self.metrics_port or port_open(self.host, self.metrics_port):
            self.metrics_port = free_port(self.host)
        # Triton takes the token only on its command line, which other local users can
        # read unless /proc is mounted with hidepid; the server listens on loopback only
        with open(self.log_file, "ab") as log_output:
            self._proc = subprocess.Popen(
                self._command(workspace),
                stdin=subprocess.DEVNULL,
                stdout=log_output,
                stderr=subprocess.STDOUT,
                env=server_environment(),
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(self.host, self.grpc_port):
            if self._proc.poll() is not None:
                raise Unavailable(
                    f"tritonserver exited with code {self._proc.returncode} while starting; "
                    f"see {self.log_file}"
                )
            if time.monotonic() > deadline:
                self._end()
                raise Unavailable(f"tritonserver did not start in {START_TIMEOUT_S:g}s")
            time.sleep(0.05)
        log.info("Triton serving", extra={"url": self.url, "pid": self._proc.pid})
        return self.url

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self._proc is not None and self._proc.poll() is None

    def restart(self) -> str:
        """End what is left of a server that died (its stubs too), start a new one."""
        self._end()
        self.restarts += 1
        return self.start()

    def _end(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL), then kill every stub it left."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        killed = self.footprint.end_processes()
        if killed:
            log.info("ended processes Triton left behind", extra={"processes": killed})

    def stop(self) -> None:
        """Stop the server and remove everything it ran from."""
        self._end()
        self.footprint.end()

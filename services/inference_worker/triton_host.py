"""Where the Triton Inference Server comes from: embedded (PyTriton) or external.

Embedded: PyTriton starts the real `tritonserver` binary it ships, in its own workspace,
listening on loopback only, and the engine runs in this process behind it. External
(`LLMOS_TRITON_URL`): an NGC Triton container serves the same models from a model
repository. Either way requests go through `tritonclient` only (see client.py).
"""

from __future__ import annotations

import logging
import os
import secrets
import sysconfig
from pathlib import Path

from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

from llmos import processes
from llmos.ports import free_port
from services.inference_worker.leftovers import TritonFootprint
from services.inference_worker.triton_models import ServedModel, bindings

log = logging.getLogger("llmos.triton")


def python_library_path() -> str:
    """LD_LIBRARY_PATH that lets Triton's Python backend stub load this interpreter's libpython."""
    libdir = str(sysconfig.get_config_var("LIBDIR") or "")
    current = os.environ.get("LD_LIBRARY_PATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    return os.pathsep.join([libdir, *[p for p in parts if p != libdir]]) if libdir else current


class EmbeddedTriton:
    """A tritonserver child process, started and stopped with the worker; nothing of it
    outlives the worker (see `leftovers`)."""

    def __init__(self, footprint: TritonFootprint, log_file: Path, host: str = "127.0.0.1") -> None:
        self.footprint = footprint
        self.log_file = log_file
        self.host = host
        self.url = ""
        self._triton: Triton | None = None
        self.served: dict[str, ServedModel] = {}
        # Triton's model-control protocol answers only to this token (PyTriton restricts it)
        self.access_token = secrets.token_urlsafe(32)
        # PyTriton 0.7 cannot serve a model again in the same process after unloading it
        # (a second binding's tensor store fails authentication), so that is refused
        self._released: set[str] = set()

    def start(self) -> str:
        """Start the server; return its gRPC address."""
        os.environ["LD_LIBRARY_PATH"] = python_library_path()
        processes.become_subreaper()  # stubs whose server died stay ours to end
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        grpc_port = free_port(self.host)
        config = TritonConfig(
            grpc_address=self.host,
            grpc_port=grpc_port,
            http_address=self.host,
            http_port=free_port(self.host),
            metrics_address=self.host,
            metrics_port=free_port(self.host),
            log_verbose=0,
            log_file=self.log_file,
            # the worker has ended its generations before it stops Triton: nothing is left
            # to wait for (5 s here cost every worker stop 4 s for nothing)
            exit_timeout_secs=1,
        )
        self._triton = Triton(
            config=config,
            workspace=self.footprint.workspace,
            security_config=TritonSecurityConfig(access_token=self.access_token),
        )
        self._triton.run()
        self.url = f"{self.host}:{grpc_port}"
        log.info("embedded Triton serving", extra={"url": self.url})
        return self.url

    def serve(self, served: ServedModel) -> None:
        """Bind a model's Triton models (loads them into the running server)."""
        assert self._triton is not None, "start() first"
        first = not self.served and not self._released
        if first:  # Triton's Python backend starts with the first model (see leftovers)
            self.footprint.starting()
        try:
            for spec in bindings(served):
                self._triton.bind(**spec, strict=False)
        finally:
            if first:
                self.footprint.started()
        self.served[served.name] = served
        self.footprint.note_model_folders()

    def release(self, name: str) -> None:
        """Stop the engine of a model whose Triton models were unloaded."""
        served = self.served.pop(name, None)
        if served is not None:
            served.stop()
            self._released.add(name)

    def alive(self) -> bool:
        """Whether the tritonserver process still runs. (PyTriton's public `is_alive` also
        asks every model, which reads False while a model is being bound; this is the
        process check it builds on, in the pinned nvidia-pytriton 0.7.0.)"""
        triton = self._triton
        return triton is not None and bool(triton._is_alive_impl())

    def can_serve(self, name: str) -> bool:
        """False for a model this process served and released (see `_released`)."""
        return name not in self._released

    def stop(self) -> None:
        """Stop every engine, then Triton, then end whatever Triton left."""
        for name in list(self.served):
            self.release(name)
        if self._triton is not None:
            self._triton.stop()
            self._triton = None
        killed = self.footprint.end()
        if killed:
            log.info("ended processes Triton left behind", extra={"processes": killed})

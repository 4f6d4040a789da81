"""The services that make up LLM OS, and the modules that start them."""

from __future__ import annotations

#: Service name -> `python -m` module. Order is start order; stop is the reverse.
SERVICE_MODULES: dict[str, str] = {
    "storage": "services.storage",
    "audit": "services.audit",
    "scheduler": "services.scheduler",
    "trainer": "services.trainer",
    "inference-worker": "services.inference_worker",
    "gateway": "gateway",
}

REQUIRED_SERVICES: tuple[str, ...] = tuple(SERVICE_MODULES)

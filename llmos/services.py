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

#: Service name -> `module:function` reading its own variables (its `configure`); with the
#: common settings, what `python -m tools.envdoc` runs to list every variable.
SERVICE_OPTIONS: dict[str, str] = {
    "gateway": "gateway.options:read_gateway_options",
    "scheduler": "services.scheduler.options:read_scheduler_options",
    "inference-worker": "services.inference_worker.options:read_worker_options",
    "trainer": "services.trainer.options:read_trainer_options",
    "storage": "services.storage.options:read_storage_options",
    "audit": "services.audit.options:read_audit_options",
}

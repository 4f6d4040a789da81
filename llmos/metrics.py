"""Prometheus metrics: every service serves its registry on `LLMOS_METRICS_ADDR`.

prometheus_client's own server runs on a thread of its own, so a scrape never waits on
the service's event loop (nor slows it). Label values are bounded: tenants, models,
priority classes and outcomes, never request ids or text.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from prometheus_client import REGISTRY, start_http_server

from llmos.config import HostPort
from llmos.node_metrics import NodeCollector

log = logging.getLogger("llmos.metrics")


def serve_metrics(listen: HostPort, stack: AsyncExitStack) -> int:
    """Serve /metrics on `listen` until `stack` closes (with the node's own metrics);
    the bound port."""
    collector = NodeCollector()
    stack.callback(collector.close)
    REGISTRY.register(collector)
    stack.callback(REGISTRY.unregister, collector)
    server, thread = start_http_server(listen.port, addr=listen.host)
    stack.callback(thread.join, 5)
    stack.callback(server.server_close)
    stack.callback(server.shutdown)
    port = int(server.server_address[1])
    log.info("metrics served", extra={"metrics": f"{listen.host}:{port}"})
    return port

"""A real Prometheus server scraping a running stack through the launcher's file-based
discovery targets (`<data dir>/prometheus/targets.json`), with LLM OS's alert rules
loaded: for the tests, and for people who want one next to `make run`:

    python -m tools.prometheus var    # then open http://127.0.0.1:9090

Debian's `prometheus` package provides the server and `promtool`; `ensure_installed`
installs it when missing (tests and CI run as root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmos.ports import free_port
from tools.debian import ensure_commands
from tools.devstack.infra import InfraError, spawn, terminate, wait_until

ROOT = Path(__file__).resolve().parent.parent
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def service_targets(discovery: Path) -> dict[str, str]:
    """service -> the address Prometheus scrapes, from the launcher's targets.json."""
    groups = json.loads(discovery.read_text())
    return {group["labels"]["service"]: group["targets"][0] for group in groups}


def scrape(address: str) -> Samples:
    """(name, sorted labels) -> value of every sample a target exposes now."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def ensure_installed() -> Path:
    """The `prometheus` binary, installed from Debian's package when missing."""
    return ensure_commands({"prometheus": "prometheus"})["prometheus"]


def scrape_config(targets: Path, every_s: float) -> dict[str, Any]:
    """A configuration scraping the stack whose launcher wrote `targets`."""
    interval = f"{int(every_s * 1000)}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [
            {
                "job_name": "llmos",
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": interval}],
            }
        ],
    }


@dataclass
class Prometheus:
    """A running Prometheus: its HTTP API at `url`."""

    url: str

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(address, timeout=10) as response:
            answer = json.load(response)
        if answer.get("status") != "success":
            raise InfraError(f"Prometheus refused {expression!r}: {answer}")
        return list(answer["data"]["result"])

    def value(self, expression: str) -> float | None:
        """The single value of a query that yields one sample (None if it yields none)."""
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return json.load(response)


@contextmanager
def prometheus(
    targets: Path, workdir: Path, every_s: float = 1.0, port: int = 0
) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` every `every_s` seconds until the block ends."""
    binary = ensure_installed()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets.resolve(), every_s)))
    port = port or free_port()
    proc = spawn(
        [
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        workdir / "prometheus.log",
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_until(lambda: _ready(server.url), proc, "prometheus", timeout_s=60)
        yield server
    finally:
        terminate(proc, 10)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="the stack's data directory (make run: var)")
    parser.add_argument("--port", type=int, default=9090)
    args = parser.parse_args()
    targets = args.data_dir / "prometheus" / "targets.json"
    with prometheus(targets, args.data_dir / "prometheus" / "server", 5.0, args.port) as server:
        print(f"Prometheus at {server.url} scraping {targets} (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()

"""deploy/: the Prometheus configurations, alert rules and Grafana dashboard ask only for
metrics the services export, and Prometheus itself accepts them (`promtool`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tools.devstack.stack import SCRAPE_TARGETS

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
CONFIGS = (DEPLOY / "prometheus" / "prometheus.yml", DEPLOY / "prometheus" / "local.yml")
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "llmos.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

#: Every `llmos_*` metric the services export (histograms by their family name).
EXPORTED = {
    # gateway
    "llmos_time_to_first_token_seconds",
    "llmos_time_per_output_token_seconds",
    "llmos_e2e_request_latency_seconds",
    "llmos_request_queue_time_seconds",
    "llmos_prompt_tokens_total",
    "llmos_generation_tokens_total",
    "llmos_rate_limited_total",
    "llmos_auth_failures_total",
    "llmos_intrusion_events_total",
    "llmos_app_texts_total",
    "llmos_app_latency_seconds",
    "llmos_assistant_answers_total",
    # scheduler
    "llmos_requests_running",
    "llmos_requests_waiting",
    "llmos_jobs_queued",
    "llmos_jobs_running",
    "llmos_workers",
    # inference worker
    "llmos_kv_cache_usage_ratio",
    "llmos_worker_slots_in_use",
    "llmos_task_requests",
    "llmos_task_batches",
    # trainer
    "llmos_training_tokens_per_second",
    "llmos_training_loss",
    # storage
    "llmos_storage_bytes",
    # audit
    "llmos_audit_ingest_lag_seconds",
    # every service
    "llmos_healthy",
    "llmos_dependency_up",
    "llmos_node_cpu_usage_ratio",
    "llmos_node_memory_used_bytes",
    "llmos_node_memory_total_bytes",
    "llmos_gpu_utilization_ratio",
    "llmos_gpu_memory_used_bytes",
    "llmos_gpu_memory_total_bytes",
}
#: what the issue asks an operator be alerted to
ALERT_NAMES = {
    "LLMOSWorkerDown",
    "LLMOSServiceUnhealthy",
    "LLMOSQueueGrowing",
    "LLMOSTimeToFirstTokenHigh",
    "LLMOSAuditIngestLag",
    "LLMOSIntrusion",
}
METRIC = re.compile(r"\bllmos_[a-z0-9_]*[a-z0-9]")
HISTOGRAM_SERIES = re.compile(r"_(bucket|count|sum)$")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not on PATH (it comes with Prometheus)"
)


def _metrics_named(text: str) -> set[str]:
    return {HISTOGRAM_SERIES.sub("", name) for name in METRIC.findall(text)}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels() -> list[dict[str, Any]]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("path", [ALERTS, ALERT_TESTS, DASHBOARD], ids=lambda p: p.name)
def test_only_exported_metrics_are_asked_for(path: Path) -> None:
    named = _metrics_named(path.read_text())
    assert named, f"{path.name} names no llmos_ metric"
    assert named <= EXPORTED, f"not exported: {sorted(named - EXPORTED)}"


def test_each_issue_alert_exists_and_says_how_bad_and_what_happened() -> None:
    rules = _rules()
    assert not ALERT_NAMES - {rule["alert"] for rule in rules}, "an alert is missing"
    for rule in rules:
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_dashboard_panel_has_a_title_and_a_query_on_the_provisioned_datasource() -> None:
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    panels = _panels()
    assert len(panels) >= 15
    for panel in panels:
        assert panel["title"], panel
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == uid
    ids = [panel["id"] for panel in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_local_prometheus_reads_the_targets_make_run_writes() -> None:
    local = yaml.safe_load(CONFIGS[1].read_text())
    files = [
        f for job in local["scrape_configs"] for c in job["file_sd_configs"] for f in c["files"]
    ]
    # file_sd paths are relative to the configuration file; `make run`'s data dir is ./var
    resolved = {(CONFIGS[1].parent / f).resolve() for f in files}
    assert resolved == {ROOT / "var" / "prometheus" / SCRAPE_TARGETS}


@needs_promtool
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_prometheus_accepts_the_configuration_and_its_rules(path: Path) -> None:
    result = _promtool("check", "config", path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alerts_fire_on_the_series_they_are_written_for() -> None:
    result = _promtool("test", "rules", ALERT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses rules offline: each query, its Grafana variables filled in, as one."""
    rules = [
        {
            "record": f"dashboard:panel{panel['id']}_{target['refId']}",
            "expr": re.sub(r"\$\w+", ".*", target["expr"].replace("$__rate_interval", "1m")),
        }
        for panel in _panels()
        for target in panel["targets"]
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr

"""The alerting rules and the Grafana dashboard under config/: `promtool check rules` accepts them
(the dashboard's queries too, as recording rules), and every `sai_` metric they name is one the
exposition has (a renamed metric would leave a silent alert or an empty panel)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from daemon import __version__
from daemon.monitor.service_metrics import DaemonState
from tests.monitor.mon_helpers import GIB, sample

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "config" / "grafana" / "secure-ai-studio.json"
METRIC = re.compile(r"\bsai_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "info": ("_info",), "gauge": ("",)}
GPU = {"index": 0, "name": "Test GPU", "uuid": "GPU-0", "memory": {"used": 10 * GIB, "total": 80 * GIB},
       "utilization": 50, "temperature": 60, "power_w": 300, "processes": [{"pid": 1, "used_memory": GIB}]}


def promtool_check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


async def exposed_names(open_monitor) -> set[str]:
    """Every sample name the exposition can carry: a sample with a GPU and a worker, and the
    service metrics with the daemon's state attached; a family with no series yet (jobs finished by
    a model) still counts by its TYPE line."""
    monitor, _, _ = await open_monitor()
    monitor.ring.append({**sample(1_800_000_000.0, gpus=[GPU], worker_rss=GIB, wait=5.0, failure_rate=1.0),
                         "worker": {"rss": GIB, "torch_allocated": 1, "torch_reserved": 2, "torch_peak": 3}})
    monitor.service.state.read_from(DaemonState(
        jobs=list, paused=lambda: False, workers=lambda: [("cpu0", "cpu", True)], audit_size=lambda: 10,
        audit_checkpointed=lambda: (10, 1_800_000_000.0), audit_checkpoints=lambda: 1, version=__version__))
    families = text_string_to_metric_families(monitor.prometheus_text())
    return {family.name + suffix for family in families for suffix in SUFFIXES[family.type]}


def test_promtool_accepts_the_alerting_rules() -> None:
    check = promtool_check_rules(RULES)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert {"SaiDaemonDown", "SaiQueueStuck", "SaiWorkerRestarting", "SaiAuditCheckpointStale",
            "SaiOutputsDiskLow", "SaiGpuMemoryHigh"} <= {rule["alert"] for rule in rules}
    assert all(rule["labels"]["severity"] in ("warning", "critical") for rule in rules)


def test_the_dashboard_queries_are_promql_promtool_accepts(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    grafana_vars = {"$__rate_interval": "5m", "$instance": ".*"}
    records = []
    for n, query in enumerate(queries):
        for name, value in grafana_vars.items():
            query = query.replace(name, value)
        records.append({"record": f"dashboard:query{n}", "expr": query})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    check = promtool_check_rules(path)
    assert check.returncode == 0, check.stdout + check.stderr


async def test_rules_and_dashboard_name_only_metrics_the_exposition_has(open_monitor) -> None:
    names = await exposed_names(open_monitor)
    assert {"sai_queue_jobs", "sai_jobs_finished_total", "sai_gpu_memory_used_bytes"} <= names
    used = {"rules": set(METRIC.findall(RULES.read_text())),
            "dashboard": {m for query in dashboard_queries() for m in METRIC.findall(query)}}
    for where, metrics in used.items():
        assert len(metrics) >= 8, where
        missing = {m for m in metrics if m not in names}
        assert not missing, f"{where} names metrics the daemon does not export: {sorted(missing)}"

"""The Prometheus config and rules pass promtool; the dashboards query only exported metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import check_metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: install Prometheus (Debian/Ubuntu: apt-get install prometheus)"
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_prometheus_config_is_valid(config: str) -> None:
    done = promtool("check", "config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout + done.stderr


def test_alerts_go_to_alertmanager() -> None:
    for name in ("prometheus.yml", "prometheus.compose.yml"):
        config = yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))
        targets = [
            target
            for manager in config["alerting"]["alertmanagers"]
            for static in manager["static_configs"]
            for target in static["targets"]
        ]
        assert len(targets) == 1, name
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    host, port = targets[0].rsplit(":", 1)
    assert host in compose["services"]
    assert f"127.0.0.1:{port}:{port}" in compose["services"][host]["ports"]


def test_alertmanager_config_is_valid() -> None:
    exe = shutil.which("amtool")
    if exe is None:
        pytest.skip("amtool not found (Debian/Ubuntu: apt-get install prometheus-alertmanager)")
    done = subprocess.run(
        [exe, "check-config", "alertmanager.yml"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_compose_stack_mounts_files_that_exist() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert set(compose["services"]) == {"prometheus", "alertmanager", "grafana"}
    named = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        assert service["image"].count(":") == 1, f"{name}: pin the image's version"
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
            assert target.startswith("/"), volume
    # harchos runs on the host: Prometheus reaches it at host.docker.internal.
    prometheus = compose["services"]["prometheus"]
    assert "host.docker.internal:host-gateway" in prometheus["extra_hosts"]
    config = yaml.safe_load((ROOT / "prometheus.compose.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    harchos = jobs["harchos"]["static_configs"][0]["targets"][0]
    assert not harchos.startswith(("localhost:", "127.0.0.1:")), harchos
    # The dashboards are where the provisioning says they are.
    provider = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "dashboards" / "harchos.yml").read_text("utf-8")
    )["providers"][0]
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["grafana"]["volumes"])
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"


_JOB_LABEL = re.compile(
    r"(?:\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\bjob\b[^()]*\))"
    r"|(?:[{,]\s*job\s*(?:=|!=|=~|!~))|(?:\$labels\.job\b)|(?:\{\{\s*job\s*\}\})"
)


def test_no_query_reads_the_job_label_of_a_harchos_metric() -> None:
    # Prometheus's own `job` label is the scrape job; harchos names a job `job_id`. A query on
    # `job` would group every harchos job into one series, `harchos`.
    texts = [path.read_text(encoding="utf-8") for path in DASHBOARDS]
    texts.append((ROOT / "rules" / "harchos.rules.yml").read_text(encoding="utf-8"))
    for text in texts:
        assert not _JOB_LABEL.search(text), _JOB_LABEL.search(text)


def test_scrape_jobs_for_harchos_and_vllm() -> None:
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) >= {"harchos", "vllm"}
    targets = [t for c in jobs["vllm"]["static_configs"] for t in c["targets"]]
    assert targets
    assert all(t.rsplit(":", 1)[1].isdigit() for t in targets)
    assert jobs["vllm"]["metrics_path"] == "/metrics"


def test_rules_are_valid() -> None:
    rules = yaml.safe_load((ROOT / "rules" / "harchos.rules.yml").read_text(encoding="utf-8"))
    count = sum(len(group["rules"]) for group in rules["groups"])
    done = promtool("check", "rules", "rules/harchos.rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {count} rules found" in done.stdout + done.stderr


def test_alerts_fire_when_they_should() -> None:
    done = promtool("test", "rules", "rules/harchos.rules.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_every_queried_metric_is_exported_by_harchos_or_vllm() -> None:
    used = check_metrics.used_metrics()
    assert any(name.startswith("harchos_") for name in used)
    assert any(name.startswith("vllm:") for name in used)
    assert check_metrics.unknown_metrics() == {}


def test_the_check_catches_a_metric_nobody_exports(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "grafana", tmp_path / "grafana")
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    path = tmp_path / "grafana" / "dashboards" / DASHBOARDS[0].name
    board = json.loads(path.read_text(encoding="utf-8"))
    board["panels"][0]["targets"].append({"refId": "Z", "expr": "rate(harchos_made_up_total[5m])"})
    path.write_text(json.dumps(board), encoding="utf-8")
    assert list(check_metrics.unknown_metrics(tmp_path)) == ["harchos_made_up_total"]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('harchos_replica_up{hub=~"$hub"} == 0', {"harchos_replica_up"}),
        (
            "histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket"
            "[$__rate_interval])))",
            {"vllm:e2e_request_latency_seconds_bucket"},
        ),
        (
            "sum by (job_id) (a_total) > on (job_id) group_left (hub) 0.8 * b_kgco2 offset 1h",
            {"a_total", "b_kgco2"},
        ),
        ("sum(x) without (le) or y unless bool z and 1e3", {"x", "y", "z"}),
        ('count(up{job="sum"}) > 2', {"up"}),
    ],
)
def test_metric_names_are_read_out_of_promql(expr: str, names: set[str]) -> None:
    assert check_metrics.metric_names(expr) == names


def test_variable_queries() -> None:
    assert check_metrics.variable_names("label_values(vllm:num_requests_running, model_name)") == {
        "vllm:num_requests_running"
    }
    assert check_metrics.variable_names("label_values(hub)") == set()


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboards_are_well_formed(path: Path) -> None:
    board: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    assert board["uid"] == path.stem
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for target in panel["targets"]:
            used = set(check_metrics.GRAFANA_VARIABLES.findall(target["expr"]))
            assert used <= {f"${v}" for v in variables} | {"$__rate_interval"}, target["expr"]


def test_dashboards_cover_what_users_watch() -> None:
    used = check_metrics.used_metrics()
    for name in (
        "harchos_carbon_intensity_gco2_per_kwh",
        "harchos_job_energy_kwh_total",
        "harchos_job_emissions_kgco2_total",
        "harchos_router_decisions_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
    ):
        assert any(".json:" in place for place in used[name]), name

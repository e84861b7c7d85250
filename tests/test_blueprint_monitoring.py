"""The monitoring blueprint: promtool accepts it, and it queries only metrics that are exported.

Also the metric catalogue (`harchos_cli.metrics`) it is checked against.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from clirunner import harchos
from conftest import REPO

from harchos_cli import metrics


def promtool(cwd: Path, *args: str) -> str:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: apt-get install prometheus"
    done = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def load_checker(dest: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "rendered_check_metrics", dest / "check_metrics.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_monitoring_passes_its_own_tests(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = harchos(capsys, "new", "monitoring", str(tmp_path / "mon"), "--defaults")
    assert result.code == 0, result.err
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path / "mon", capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def test_answers_reach_the_config_and_the_alerts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dest = tmp_path / "mon"
    result = harchos(
        capsys, "new", "monitoring", str(dest), "--defaults",
        "--data", "vllm_targets=gpu-a:8000, gpu-b:8001",
        "--data", "carbon_threshold=250",
        "--data", "scrape_interval=30s",
    )  # fmt: skip
    assert result.code == 0, result.err
    config = yaml.safe_load((dest / "prometheus.yml").read_text())
    assert config["global"] == {"scrape_interval": "30s", "evaluation_interval": "30s"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["vllm"]["static_configs"][0]["targets"] == ["gpu-a:8000", "gpu-b:8001"]
    assert jobs["harchos"]["static_configs"][0]["targets"] == ["localhost:9464"]
    rules = yaml.safe_load((dest / "rules" / "harchos.rules.yml").read_text())
    carbon = next(
        rule for group in rules["groups"] for rule in group["rules"]
        if rule.get("alert") == "HubCarbonIntensityHigh"
    )  # fmt: skip
    assert carbon["expr"].endswith("> 250")
    assert "SUCCESS" in promtool(dest, "check", "config", "prometheus.yml")
    assert "SUCCESS" in promtool(dest, "test", "rules", "rules/harchos.rules.test.yml")


def test_the_compose_stack_is_wired(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dest = tmp_path / "mon"
    result = harchos(
        capsys, "new", "monitoring", str(dest), "--defaults",
        "--data", "harchos_target=localhost:9500",
        "--data", "vllm_targets=127.0.0.1:8000, gpu-b:8001",
        "--data", "alertmanager_target=alerts.example:9093",
    )  # fmt: skip
    assert result.code == 0, result.err
    local = yaml.safe_load((dest / "prometheus.yml").read_text())
    assert local["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alerts.example:9093"
    ]
    stack = yaml.safe_load((dest / "prometheus.compose.yml").read_text())
    assert stack["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]
    jobs = {job["job_name"]: job for job in stack["scrape_configs"]}
    assert jobs["harchos"]["static_configs"][0]["targets"] == ["host.docker.internal:9500"]
    assert jobs["vllm"]["static_configs"][0]["targets"] == [
        "host.docker.internal:8000", "gpu-b:8001",
    ]  # fmt: skip
    compose = yaml.safe_load((dest / "compose.yaml").read_text())
    assert set(compose["services"]) == {"prometheus", "alertmanager", "grafana"}
    for service in compose["services"].values():
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            assert not source.startswith(".") or (dest / source).exists(), volume
    assert "SUCCESS: 1 rule files found" in promtool(
        dest, "check", "config", "prometheus.compose.yml"
    )
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: apt-get install prometheus-alertmanager"
    done = subprocess.run(
        [amtool, "check-config", "alertmanager.yml"],
        cwd=dest, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    readme = (dest / "README.md").read_text()
    assert "docker compose up -d" in readme
    assert "harchos metrics serve --host 0.0.0.0" in readme


def test_a_bad_target_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = harchos(
        capsys, "new", "monitoring", str(tmp_path / "m"), "--defaults",
        "--data", "vllm_targets=http://gpu-a",
    )  # fmt: skip
    assert result.code == 2
    assert not (tmp_path / "m").exists()


def test_every_queried_metric_is_in_the_catalogue(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dest = tmp_path / "mon"
    assert harchos(capsys, "new", "monitoring", str(dest), "--defaults").code == 0
    checker = load_checker(dest)
    used = checker.used_metrics(dest)
    assert set(used) <= metrics.series_names()
    queried_families = {m.name for m in metrics.METRICS if set(m.series()) & set(used)}
    # Every vLLM metric harchos relies on is on a dashboard; so is nearly every harchos one.
    assert {m.name for m in metrics.VLLM_METRICS} <= queried_families
    unused = {m.name for m in metrics.HARCHOS_METRICS} - queried_families
    assert unused <= {"harchos_build_info", "harchos_hub_gpus"}, unused


def test_catalogue_names_follow_prometheus_conventions() -> None:
    names = [m.name for m in metrics.METRICS]
    assert len(names) == len(set(names))
    for metric in metrics.HARCHOS_METRICS:
        assert metric.name.startswith("harchos_")
        assert metric.help.endswith(".")
        assert (metric.type == "counter") == metric.name.endswith("_total"), metric.name
    for metric in metrics.VLLM_METRICS:
        assert metric.name.startswith("vllm:")
        # vLLM's V1 engine labels every metric with the served model and the engine index.
        assert metric.labels[:2] == ("model_name", "engine"), metric.name
    intensity = metrics.by_name("harchos_carbon_intensity_gco2_per_kwh")
    assert intensity.type == "gauge"
    assert {"hub", "zone", "provider", "signal"} <= set(intensity.labels)
    assert metrics.by_name("vllm:e2e_request_latency_seconds").series() == (
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_sum",
        "vllm:e2e_request_latency_seconds_count",
    )
    with pytest.raises(KeyError):
        metrics.by_name("harchos_nothing")
    assert list(metrics.unknown_series(["vllm:num_requests_running", "nope", "nope"])) == ["nope"]


def test_the_manual_lists_the_catalogue() -> None:
    text = (REPO / "docs" / "blueprints.md").read_text(encoding="utf-8")
    section = text[text.index("<!-- monitoring:begin -->") : text.index("<!-- monitoring:end -->")]
    rows = {
        cells[0].strip("` "): (cells[1].strip(), cells[2].strip())
        for line in section.splitlines()
        if line.startswith("| `")
        for cells in [line.strip("|").split("|")]
    }
    assert {name: kind for name, (kind, _) in rows.items()} == {
        m.name: m.type for m in metrics.METRICS
    }
    for metric in metrics.HARCHOS_METRICS:
        labels = rows[metric.name][1]
        assert labels == ", ".join(f"`{label}`" for label in metric.labels), metric.name


def test_no_harchos_metric_has_a_job_label() -> None:
    # Prometheus sets `job` (the scrape job) on every series it scrapes and renames a clashing
    # label to `exported_job`: per-job queries and the budget alerts would then match nothing.
    for metric in metrics.HARCHOS_METRICS:
        assert not {"job", "instance"} & set(metric.labels), metric.name

"""`harchos metrics serve`: what the exporter shows, and a real Prometheus scraping it.

The job store, the hub inventory and the meter's samples are seeded under the test's own
HARCHOS_HOME; energy, emissions and cost come from the real ledger (harchos_cli.meter.ledger),
intensity from the embedded model.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from clirunner import harchos
from polling import wait_until
from prometheus_client.parser import text_string_to_metric_families

from harchos_cli import metrics, metrics_export
from harchos_cli.hubs import inventory
from harchos_cli.hubs.base import Hub
from harchos_cli.jobs.store import Job, JobStore
from harchos_cli.meter.samples import SampleStore
from harchos_cli.timeparse import iso, utcnow

HUB = "gpu-a"
GPU_WATTS, CPU_WATTS = 1200.0, 100.0
HOUR_KWH = (GPU_WATTS + CPU_WATTS) / 1000  # one hour at the seeded draw


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def add_hub() -> Hub:
    hub = Hub(name=HUB, transport="ssh", host="gpu-a.example", region="DE", gpus=4)
    return inventory.add(hub)


def add_job(
    store: JobStore,
    job_id: str,
    state: Any,
    *,
    hub: Hub | None = None,
    finished_ago: timedelta | None = None,
    budget_kg: float | None = None,
    metered_hours: int = 0,
    gpu_ids: str | None = None,
) -> Job:
    """A job in the store; `metered_hours` of meter samples at the seeded draw on its hub."""
    now = utcnow()
    start = now - timedelta(hours=metered_hours + 1)
    request: dict[str, Any] = {"provider": "embedded", "gpus": 4}
    if hub is not None:
        request["launch"] = {"hub": inventory.as_json(hub)}
    if budget_kg is not None:
        request["emissions_budget_kg"] = budget_kg
    job = store.create(
        Job(
            id=job_id, kind="train", name=job_id, project_dir=os.getcwd(), state=state,
            request=request, hub=hub.name if hub else None,
            started_at=iso(start) if hub else None,
            finished_at=iso(now - finished_ago) if finished_ago is not None else None,
            gpu_ids=gpu_ids,
        )
    )  # fmt: skip
    if metered_hours and hub is not None:
        t0 = start.timestamp()
        lines = [
            {"t": t0 + 3600 * i, "gpu_j": GPU_WATTS * 3600 * i, "cpu_j": CPU_WATTS * 3600 * i,
             "gpu_w": GPU_WATTS, "cpu_w": CPU_WATTS, "gpu_source": "nvml-energy",
             "cpu_source": "rapl", "gpu_names": ["H100"] * 4}
            for i in range(metered_hours + 1)
        ]  # fmt: skip
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        SampleStore(store.db).ingest(job_id, job_id, hub.name, 0, data)
    return job


@pytest.fixture
def store() -> Iterator[JobStore]:
    opened = JobStore()
    yield opened
    opened.close()


def scrape(collector: metrics_export.HarchosCollector) -> dict[str, Any]:
    """Family name (as in the catalogue) → the parsed family."""
    text = metrics_export.exposition(metrics_export.registry(collector)).decode()
    parsed = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        parsed[name] = family
    return parsed


def values(family: Any, **labels: str) -> list[float]:
    return [
        s.value
        for s in family.samples
        if all(s.labels.get(key) == value for key, value in labels.items())
    ]


def test_every_family_is_the_catalogues_with_its_labels(store: JobStore, tmp_path: Path) -> None:
    hub = add_hub()
    add_job(store, "run-1", "running", hub=hub, budget_kg=0.01, metered_hours=2,
            gpu_ids=f"{HUB}=0,1,2")  # fmt: skip
    add_job(store, "done-1", "done", hub=hub, finished_ago=timedelta(hours=1), metered_hours=1)
    add_job(store, "old-1", "done", hub=hub, finished_ago=timedelta(days=2), metered_hours=1)
    add_job(store, "wait-1", "waiting")
    store.decide("run-1", "defer", HUB, "greener later")
    store.decide("run-1", "start", HUB, "window opened")
    store.decide("run-1", "migrate", HUB, "greener there", source="local")
    store.decide("run-1", "migrate", HUB, "greener there", source="local")
    notices: list[str] = []

    families = scrape(metrics_export.HarchosCollector("embedded", notice=notices.append))

    assert notices == []
    for name, family in families.items():
        metric = metrics.by_name(name)
        assert family.type == metric.type, name
        for sample in family.samples:
            assert set(sample.labels) == set(metric.labels), (name, sample.labels)
    assert values(families["harchos_build_info"]) == [1.0]
    state = families["harchos_job_state"]
    assert {s.labels["job_id"] for s in state.samples} == {"run-1", "done-1", "wait-1"}
    assert values(state, job_id="run-1", hub=HUB, state="running") == [1.0]
    assert values(state, job_id="run-1", state="paused") == [0.0]
    assert values(state, job_id="wait-1", hub="none", state="waiting") == [1.0]
    decisions = families["harchos_job_decisions_total"]
    assert values(decisions, job_id="run-1", action="migrate") == [2.0]
    assert values(decisions, job_id="run-1", action="defer") == [1.0]
    migrations = families["harchos_job_migrations_total"]
    assert values(migrations, job_id="run-1", from_hub="local", to_hub=HUB) == [2.0]
    assert values(families["harchos_job_power_watts"], job_id="run-1", hub=HUB) == [
        GPU_WATTS + CPU_WATTS
    ]
    energy = families["harchos_job_energy_kwh_total"]
    assert values(energy, job_id="run-1", hub=HUB) == [pytest.approx(2 * HOUR_KWH)]
    assert values(energy, job_id="done-1", hub=HUB) == [pytest.approx(HOUR_KWH)]
    emitted = values(families["harchos_job_emissions_kgco2_total"], job_id="run-1", hub=HUB)
    assert len(emitted) == 1
    assert 0 < emitted[0] < 2 * HOUR_KWH  # the German grid is under 1 kg/kWh
    assert values(families["harchos_job_emissions_budget_kgco2"], job_id="run-1") == [0.01]
    assert len(values(families["harchos_job_cost_total"], job_id="run-1")) <= 1
    gpus = families["harchos_hub_gpus"]
    assert values(gpus, hub=HUB, state="busy") == [3.0]
    assert values(gpus, hub=HUB, state="free") == [1.0]
    intensity = families["harchos_carbon_intensity_gco2_per_kwh"]
    (reading,) = [s for s in intensity.samples if s.labels["hub"] == HUB]
    assert reading.labels["zone"] == "DE"
    assert reading.labels["provider"] == "embedded"
    assert 0 < reading.value < 1000
    assert set(values(families["harchos_exporter_errors_total"])) == {0.0}
    assert {s.labels["part"] for s in families["harchos_exporter_errors_total"].samples} == set(
        metrics_export.PARTS
    )


def test_a_failing_part_is_left_out_logged_and_counted(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = add_hub()
    add_job(store, "run-1", "running", hub=hub, metered_hours=1)

    def broken() -> Any:
        raise RuntimeError("the meter's tables are locked")

    monkeypatch.setattr(metrics_export, "_ledger_module", broken)
    notices: list[str] = []
    collector = metrics_export.HarchosCollector("embedded", notice=notices.append)

    scrape(collector)
    families = scrape(collector)

    assert "harchos_job_energy_kwh_total" not in families
    assert "harchos_job_power_watts" not in families
    assert values(families["harchos_job_state"], job_id="run-1", state="running") == [1.0]
    errors = families["harchos_exporter_errors_total"]
    assert values(errors, part="ledger") == [2.0]
    assert values(errors, part="power") == [2.0]
    assert values(errors, part="jobs") == [0.0]
    assert any("ledger left out" in line and "locked" in line for line in notices)


def test_a_damaged_job_store_leaves_the_job_families_out(store: JobStore) -> None:
    add_hub()
    add_job(store, "run-1", "running")
    store.db.execute("UPDATE jobs SET request = '{' WHERE id = 'run-1'")
    notices: list[str] = []

    families = scrape(metrics_export.HarchosCollector("embedded", notice=notices.append))

    assert not {name for name in families if name.startswith("harchos_job_")}
    assert values(families["harchos_exporter_errors_total"], part="jobs") == [1.0]
    assert values(families["harchos_carbon_intensity_gco2_per_kwh"], hub=HUB)
    assert [line for line in notices if "damaged" in line]


def test_intensity_is_fetched_once_per_five_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    add_hub()
    clock = [1000.0]
    collector = metrics_export.HarchosCollector("embedded", monotonic=lambda: clock[0])
    fetched: list[str] = []
    fetch = collector._fetch

    def counting(region: str) -> Any:
        fetched.append(region)
        return fetch(region)

    monkeypatch.setattr(collector, "_fetch", counting)
    for _ in range(3):
        scrape(collector)
        clock[0] += 15
    assert fetched == ["DE"]
    clock[0] += metrics_export.INTENSITY_TTL_S
    families = scrape(collector)
    assert fetched == ["DE", "DE"]
    assert values(families["harchos_carbon_intensity_gco2_per_kwh"], hub=HUB)


def test_a_finished_jobs_account_is_built_once(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = add_hub()
    add_job(store, "run-1", "running", hub=hub, metered_hours=1)
    add_job(store, "done-1", "done", hub=hub, finished_ago=timedelta(hours=1), metered_hours=1)
    asked: list[list[str]] = []
    real = metrics_export.job_accounts

    def spy(job_ids: list[str]) -> list[metrics_export.JobAccount]:
        asked.append(sorted(job_ids))
        return real(job_ids)

    monkeypatch.setattr(metrics_export, "job_accounts", spy)
    collector = metrics_export.HarchosCollector("embedded")
    scrape(collector)
    families = scrape(collector)
    assert asked == [["done-1", "run-1"], ["run-1"]]
    energy = families["harchos_job_energy_kwh_total"]
    assert values(energy, job_id="done-1") == [pytest.approx(HOUR_KWH)]


def test_textfile_is_written_whole_for_node_exporter(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "collector" / "harchos.prom"
    path.parent.mkdir()
    result = harchos(capsys, "metrics", "serve", "--textfile", str(path), "--once",
                     "--provider", "embedded")  # fmt: skip
    assert result.code == 0, result.err
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["harchos.prom"]
    names = {f.name for f in text_string_to_metric_families(path.read_text())}
    assert "harchos_build_info" in names


def test_textfile_in_a_missing_folder_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = harchos(capsys, "metrics", "serve", "--textfile", str(tmp_path / "no" / "h.prom"))
    assert result.code == 2
    assert result.err.startswith("harchos: error: the folder ")
    assert "does not exist" in result.err
    assert len(result.err.strip().splitlines()) == 2  # the error and its hint


def test_once_needs_a_textfile(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "metrics", "serve", "--once")
    assert result.code == 2
    assert "--once needs --textfile" in result.err


def test_a_port_in_use_is_one_line_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = harchos(capsys, "metrics", "serve", "--port", str(port))
    assert result.code == 2
    assert result.err.splitlines() == [
        f"harchos: error: port {port} on 127.0.0.1 is in use",
        "  hint: stop what listens there, or choose another port with --port",
    ]


# --- A real Prometheus scraping `harchos metrics serve`, with the blueprint's config and rules.


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:  # Prometheus answers a bad query with 400/422
        return json.load(error)


def query(base: str, promql: str) -> Any:
    return get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_prometheus_scrapes_the_exporter_and_the_budget_alerts_evaluate(
    capsys: pytest.CaptureFixture[str], store: JobStore, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is missing: apt-get install prometheus"
    hub = add_hub()
    add_job(store, "over-1", "running", hub=hub, budget_kg=0.01, metered_hours=1)
    add_job(store, "under-1", "running", hub=hub, budget_kg=1000.0, metered_hours=1)
    exporter_port, prometheus_port = free_port(), free_port()
    dest = tmp_path / "mon"
    result = harchos(
        capsys, "new", "monitoring", str(dest), "--defaults",
        "--data", f"harchos_target=127.0.0.1:{exporter_port}",
        "--data", f"vllm_targets=127.0.0.1:{free_port()}",
        "--data", f"alertmanager_target=127.0.0.1:{free_port()}",
        "--data", "scrape_interval=1s",
    )  # fmt: skip
    assert result.code == 0, result.err
    logs = tmp_path / "logs"
    logs.mkdir()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "harchos_cli", "metrics", "serve", "--port", str(exporter_port),
         "--provider", "embedded"],
        stdout=subprocess.DEVNULL, stderr=(logs / "exporter.err").open("wb"),
    )  # fmt: skip
    server = None
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{exporter_port}/metrics"), timeout=15)
        server = subprocess.Popen(
            [prometheus, f"--config.file={dest / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(logs / "prometheus.err").open("wb"),
        )  # fmt: skip
        base = f"http://127.0.0.1:{prometheus_port}"

        def ready() -> bool:
            if server.poll() is not None:
                raise AssertionError((logs / "prometheus.err").read_text())
            return answers(f"{base}/-/ready")

        wait_until(ready, timeout=20)

        def scraped() -> Any:
            answer = query(base, 'harchos_job_state{job_id="over-1",state="running"}')
            return answer["data"]["result"]

        series = wait_until(scraped, timeout=20)
        for one in series:
            labels = one["metric"]
            assert labels["job"] == "harchos"  # the scrape job: Prometheus's own label
            assert labels["job_id"] == "over-1"
            assert "exported_job" not in labels
            assert one["value"][1] == "1"
        intensity = query(base, f'harchos_carbon_intensity_gco2_per_kwh{{hub="{HUB}"}}')
        assert intensity["data"]["result"], intensity

        def firing() -> Any:
            alerts = get_json(f"{base}/api/v1/alerts")["data"]["alerts"]
            return {
                (a["labels"]["alertname"], a["labels"].get("job_id"))
                for a in alerts
                if a["state"] == "firing"
            }

        both = {(name, "over-1") for name in ("JobEmissionsBudgetExceeded",
                                               "JobEmissionsBudgetNearlySpent")}  # fmt: skip
        # The two rules are evaluated one after the other: wait for both, not the first.
        fired = wait_until(lambda: (a := firing()) and both <= a and a, timeout=15)
        assert both <= fired
        assert not {alert for alert in fired if alert[1] == "under-1"}

        def evaluated() -> Any:
            groups = get_json(f"{base}/api/v1/rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if all(rule["health"] != "unknown" for rule in rules) else None

        rules = wait_until(evaluated, timeout=10)
        assert {r["name"] for r in rules} >= {
            "JobEmissionsBudgetExceeded", "JobEmissionsBudgetNearlySpent",
        }  # fmt: skip
        broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
        assert broken == {}
        # The same alert on harchos's old `job` label: every job is the scrape job `harchos`.
        old = query(
            base,
            "sum by (job) (harchos_job_emissions_kgco2_total) "
            "> on (job) harchos_job_emissions_budget_kgco2",
        )
        assert old["status"] == "error"
        assert "duplicate series" in old["error"]
    finally:
        if server is not None:
            stop(server)
        stop(exporter)
    errors = (logs / "exporter.err").read_text()
    assert "Traceback" not in errors
    assert "left out" not in errors, errors


def test_the_exporter_runs_within_time() -> None:
    # Guard against a scrape that fetches intensity or builds ledgers without bound.
    collector = metrics_export.HarchosCollector("embedded")
    started = time.monotonic()
    for _ in range(5):
        scrape(collector)
    assert time.monotonic() - started < 5


def test_the_manual_lists_what_the_exporter_exports() -> None:
    from conftest import REPO

    text = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    section = text[text.index("## The metrics") : text.index("## For node_exporter")]
    rows = {
        cells[0].strip("` "): cells[2].strip()
        for line in section.splitlines()
        if line.startswith("| `")
        for cells in [line.strip("|").split("|")]
    }
    exported = scrape(metrics_export.HarchosCollector("embedded"))
    assert set(rows) == set(exported)
    for name, labels in rows.items():
        assert labels == ", ".join(f"`{label}`" for label in metrics.by_name(name).labels), name

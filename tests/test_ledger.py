"""The ledger: energy from meter samples, emissions at the replayed trace's hours, cost at the
hubs' prices, the counterfactual of running at once on the submission hub, and the samples'
journey from a hub's meter file into the store."""

from __future__ import annotations

import csv
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from browser import inspect_page
from clirunner import harchos

from harchos_cli.carbon.history import HistoryStore, lifecycle_series
from harchos_cli.carbon.service import ForecastService
from harchos_cli.carbon.types import Observation
from harchos_cli.hubs import inventory
from harchos_cli.hubs.base import Hub
from harchos_cli.jobs.store import Job, JobStore
from harchos_cli.meter import ledger
from harchos_cli.meter.model import FigureSource, IntensityPoint, Ledger
from harchos_cli.meter.samples import SampleStore
from harchos_cli.timeparse import floor_hour, iso, utcnow

DE_TRACE = "eco4cast/DE_2022_hourly.csv"
T0 = datetime(2022, 3, 1, tzinfo=UTC)


def trace_values(path: Path) -> dict[datetime, float]:
    """The Electricity Maps export's lifecycle intensity by hour, read straight from the CSV."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    column = next(c for c in rows[0] if "LCA" in c)
    return {
        datetime.fromisoformat(row["Datetime (UTC)"]).replace(tzinfo=UTC): float(row[column])
        for row in rows
    }


def line(t: float, cpu_j: float, gpu_j: float | None = None, **extra: object) -> bytes:
    sample = {"t": t, "gpu_j": gpu_j, "cpu_j": cpu_j, "gpu_w": None, "cpu_w": 10.0,
              "gpu_source": "nvml-energy" if gpu_j is not None else None,
              "cpu_source": "tdp-estimate", "gpus": [0] if gpu_j is not None else [],
              "gpu_names": ["H200"] if gpu_j is not None else [], "shared_gpu": False,
              "cpu_tdp_w": 85.0, **extra}  # fmt: skip
    return json.dumps(sample).encode() + b"\n"


def hub_json(name: str, **values: object) -> dict[str, object]:
    return inventory.as_json(Hub(name=name, transport="ssh", host="h", region="DE", **values))  # type: ignore[arg-type]


def make_job(store: JobStore, trace: Path, *, hub: str = "a", **request: object) -> Job:
    clock = {"origin": T0.isoformat(), "speedup": 1.0, "anchor": T0.timestamp()}
    data = {"hub": hub, "gpus": 1, "provider": f"replay:{trace}", "clock": clock,
            "hubs_used": [hub_json("a", price_per_gpu_hour=2.0, pue=1.5,
                                   electricity_price_per_kwh=0.25, currency="EUR"),
                          hub_json("b", price_per_gpu_hour=1.0, currency="EUR")],
            **request}  # fmt: skip
    job = Job(id="j1", kind="train", name="demo", project_dir="/p", state="done",
              request=data, hub=hub, created_at="2026-11-30T00:00:00Z")  # fmt: skip
    return store.create(job)


def test_emissions_are_energy_times_the_hours_intensity_times_pue(traces: Path) -> None:
    trace = traces / DE_TRACE
    values = trace_values(trace)
    store = JobStore()
    job = make_job(store, trace)
    samples = SampleStore(store.db)
    # On hub a from 02:00 to 04:00 (clock speed 1): 2 intervals of 1 h, 1.8 and 3.6 MJ.
    start = T0.timestamp() + 2 * 3600
    data = (
        line(start, 0.0, 0.0) + line(start + 3600, 0.3e6, 1.5e6) + line(start + 7200, 0.6e6, 4.8e6)
    )
    assert samples.ingest(job.id, "j1", "a", 0, data) == len(data)

    result = ledger.build(store.get(job.id), store)

    kwh = [0.5, 1.0]  # (0.3 + 1.5) MJ and (0.3 + 3.3) MJ
    hours = [T0 + timedelta(hours=2), T0 + timedelta(hours=3)]
    assert result.energy_kwh.value == pytest.approx(sum(kwh))
    assert result.energy_kwh.source == "mixed"  # GPU measured, CPU estimated
    expected = sum(k * values[h] * 1.5 / 1000 for k, h in zip(kwh, hours, strict=True))
    assert result.emissions_kg.value == pytest.approx(expected)
    assert result.emissions_kg.source == "replayed"
    # 2 GPU-hours at 2.0, plus 1.5 kWh × PUE 1.5 × 0.25.
    assert result.cost.value == pytest.approx(2 * 2.0 + 1.5 * 1.5 * 0.25)
    assert result.currency == "EUR"
    # Run at once: from 00:00 on hub a, the same two hours of energy.
    before = [T0, T0 + timedelta(hours=1)]
    counterfactual = sum(k * values[h] * 1.5 / 1000 for k, h in zip(kwh, before, strict=True))
    assert result.counterfactual.emissions_kg.value == pytest.approx(counterfactual)
    assert result.saving_emissions_kg.value == pytest.approx(counterfactual - expected)
    assert result.saving_cost.value == pytest.approx(0.0)
    assert [p.kind for p in result.periods] == ["waiting", "running"]
    assert result.average_power_w.value == pytest.approx(1.5 * 3.6e6 / 7200)
    data_json = result.as_json()
    for key in ("energy_kwh", "emissions_kg", "cost"):
        assert data_json[key]["source"]
        assert data_json[key]["value"] is not None
    assert data_json["counterfactual"]["emissions_kg"]["value"] == pytest.approx(
        counterfactual, rel=1e-5
    )
    assert data_json["saving"]["percent"] == pytest.approx(
        100 * (counterfactual - expected) / counterfactual, abs=0.01
    )


def test_a_move_makes_one_ledger_across_hubs_with_a_pause_between(traces: Path) -> None:
    trace = traces / DE_TRACE
    store = JobStore()
    job = make_job(store, trace)
    samples = SampleStore(store.db)
    t = T0.timestamp()
    first = line(t, 0.0) + line(t + 1800, 0.9e6)
    second = line(t + 7200, 0.0) + line(t + 9000, 1.8e6)  # the counters start again on b
    samples.ingest(job.id, "j1", "a", 0, first)
    samples.ingest(job.id, "j1-a2", "b", 0, second)

    result = ledger.build(store.get(job.id), store)

    assert result.hubs == ("a", "b")
    assert result.energy_kwh.value == pytest.approx(0.25 + 0.5)
    assert [(p.kind, p.hub) for p in result.periods] == [
        ("running", "a"), ("paused", "a"), ("running", "b"),
    ]  # fmt: skip
    # Half an hour on each: 1 GPU at 2.0 + 0.25 kWh × 1.5 × 0.25 on a, 1 GPU at 1.0 on b.
    assert result.cost.value == pytest.approx(0.5 * 2.0 + 0.25 * 1.5 * 0.25 + 0.5 * 1.0)
    assert set(result.intensity) == {"a", "b"}


def test_samples_are_stored_once_and_a_half_written_line_waits(traces: Path) -> None:
    store = JobStore()
    job = make_job(store, traces / DE_TRACE)
    samples = SampleStore(store.db)
    whole = line(1.0, 0.0) + line(2.0, 5.0)
    partial = line(3.0, 9.0)[:-10]
    offset = samples.ingest(job.id, "j1", "a", 0, whole + partial)
    assert offset == len(whole)
    assert samples.offset(job.id, "j1") == len(whole)
    # The same bytes again (a supervisor killed before it saw the commit) add nothing.
    samples.ingest(job.id, "j1", "a", 0, whole)
    assert [s.at for s in samples.samples(job.id)] == [1.0, 2.0]
    rest = line(3.0, 9.0)
    assert samples.ingest(job.id, "j1", "a", offset, rest) == offset + len(rest)
    assert [s.cpu_j for s in samples.samples(job.id)] == [0.0, 5.0, 9.0]
    assert samples.latest_power(job.id) == {"a": 10.0}


def test_without_samples_energy_is_the_flat_estimate_and_says_so(traces: Path) -> None:
    store = JobStore()
    job = make_job(store, traces / DE_TRACE)
    store.update(job.id, started_at="2026-11-30T00:00:00Z", finished_at="2026-11-30T00:30:00Z")

    result = ledger.build(store.get(job.id), store)

    assert result.energy_kwh.source == "estimated"
    assert result.energy_kwh.value == pytest.approx((300 + 100) / 1000 * 0.5)
    assert any("no meter samples" in w for w in result.warnings)


def test_hubs_pricing_in_two_currencies_give_no_total_cost(traces: Path) -> None:
    store = JobStore()
    job = make_job(store, traces / DE_TRACE, hubs_used=[
        hub_json("a", price_per_gpu_hour=2.0, currency="EUR"),
        hub_json("b", price_per_gpu_hour=1.0, currency="USD"),
    ])  # fmt: skip
    samples = SampleStore(store.db)
    samples.ingest(job.id, "j1", "a", 0, line(0.0, 0.0) + line(60.0, 1.0))
    samples.ingest(job.id, "j1-a2", "b", 0, line(120.0, 0.0) + line(180.0, 1.0))

    result = ledger.build(store.get(job.id), store)

    assert result.cost.value is None
    assert any("different currencies" in w for w in result.warnings)


def test_a_metered_run_through_harchos_fills_the_ledger_and_the_next_plan(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    project = tmp_path / "proj"
    project.mkdir()
    burn = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\n"
    (project / "harchos.toml").write_text(
        f'[job]\ncommand = ["python3", "-c", {json.dumps(burn)}]\n\n'
        '[carbon]\nregion = "DE"\n\n'
        '[hubs.local]\ntransport = "local"\nprice_per_gpu_hour = 2.0\n'
        'electricity_price_per_kwh = 0.3\ncurrency = "EUR"\npue = 1.2\n'
    )
    os.chdir(project)
    monkeypatch.setenv("HARCHOS_METER_INTERVAL", "0.2")
    trace = traces / DE_TRACE
    result = harchos(
        capsys, "run", "batch", "--hub", "local", "--defer-until-green", "--duration", "1h",
        "--deadline", "12h", "--provider", f"replay:{trace}", "--at", "2022-03-01T00:00:00Z",
        "--speedup", "3600", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    job_id = json.loads(result.out)["job_id"]

    (entry,) = ledger.ledgers([job_id])
    assert entry.energy_kwh.source == "estimated"  # no RAPL, no GPU here: the TDP estimate
    assert entry.energy_kwh.value
    assert entry.energy_kwh.value > 0
    assert len(entry.intervals) >= 3
    values = trace_values(trace)
    for interval in entry.intervals:
        middle = interval.start + (interval.end - interval.start) / 2
        hour = middle.replace(minute=0, second=0, microsecond=0)
        assert interval.intensity == pytest.approx(values[hour])
    assert entry.emissions_kg.source == "replayed"
    assert entry.cost.source == "configured"
    assert entry.currency == "EUR"
    assert entry.counterfactual.hub == "local"
    assert entry.saving_emissions_kg.value is not None

    # `harchos report` lists it, every figure with its source, and draws it in the HTML page.
    page = tmp_path / "report.html"
    report = harchos(capsys, "report", job_id, "--json", "--html", str(page))
    assert report.code == 0, report.err
    (listed,) = json.loads(report.out)["jobs"]
    for key in ("energy_kwh", "emissions_kg", "cost"):
        assert listed[key]["value"] == pytest.approx(getattr(entry, key).value, rel=1e-5)
        assert listed[key]["source"] == getattr(entry, key).source
    assert listed["counterfactual"]["emissions_kg"]["source"] == "replayed"
    assert listed["saving"]["emissions_kg"]["value"] is not None
    shown = inspect_page(page, {
        "charts": "document.querySelectorAll('svg.chart').length",
        "running": "document.querySelectorAll('rect.band.running').length",
        "text": "document.body.innerText",
    }, tmp_path / "report.png")  # fmt: skip
    assert shown.errors == []
    assert shown.values["charts"] >= 2
    assert shown.values["running"] >= 1
    assert job_id in shown.values["text"]

    # The measured power is what the next plan of this workload expects.
    again = harchos(
        capsys, "run", "batch", "--hub", "local", "--defer-until-green", "--duration", "1h",
        "--deadline", "12h", "--provider", f"replay:{trace}", "--at", "2022-03-01T00:00:00Z",
        "--dry-run", "--json",
    )  # fmt: skip
    assert again.code == 0, again.err
    plan = json.loads(again.out)
    assert plan["energy_basis"].startswith("measured:"), plan["energy_basis"]
    assert job_id in plan["energy_basis"]
    watts = entry.average_power_w.value
    assert watts is not None
    assert plan["energy_kwh"] == pytest.approx(watts / 1000, rel=0.05)


# --- past hours at the actuals the history store kept --------------------------------------

P0 = datetime(2026, 11, 20, 2, tzinfo=UTC)  # a week and more before these tests were written
HOUR = timedelta(hours=1)


def live_job(store: JobStore) -> Job:
    """A job that ran on hub a (cloud region → zone DE, PUE 1.5) from P0 for two hours, 0.5 then
    1.0 kWh, priced with the embedded model's intensity (no clock: the job's hours are the wall's).
    """
    hub = inventory.as_json(Hub(name="a", transport="ssh", host="h", region="gcp:europe-west3",
                                pue=1.5))  # fmt: skip
    job = Job(id="j1", kind="train", name="demo", project_dir="/p", state="done",
              request={"hub": "a", "gpus": 1, "provider": "embedded", "hubs_used": [hub]},
              hub="a", created_at=iso(P0))  # fmt: skip
    job = store.create(job)
    t = P0.timestamp()
    data = line(t, 0.0) + line(t + 3600, 1.8e6) + line(t + 7200, 5.4e6)
    SampleStore(store.db).ingest(job.id, "j1", "a", 0, data)
    return store.get(job.id)


def stored(provider: str, first: datetime, *values: float, estimated: bool = False) -> None:
    """Keep `values` as `provider`'s actuals of DE's lifecycle intensity, hourly from `first`."""
    history = HistoryStore()
    observations = [
        Observation(first + i * HOUR, first + (i + 1) * HOUR, v, estimated)
        for i, v in enumerate(values)
    ]
    assert history.record(lifecycle_series("DE"), provider, observations, first + 48 * HOUR)
    history.close()


def forecast_only(store: JobStore, job: Job) -> Ledger:
    """The ledger with a history store that answers nothing: what the forecast alone gives."""
    service = ForecastService.from_settings("embedded")
    service.store = HistoryStore(enabled=False)
    return ledger.build(job, store, ledger.IntensityLookup("embedded", service=service))


def kg(kwh_and_intensity: list[tuple[float, float]]) -> float:
    return sum(kwh * value * 1.5 / 1000 for kwh, value in kwh_and_intensity)


def test_past_hours_are_priced_at_the_stored_actuals_not_the_forecast() -> None:
    store = JobStore()
    job = live_job(store)
    baseline = forecast_only(store, job)
    forecast = [i.intensity for i in baseline.intervals]
    assert baseline.emissions_kg.source == "forecast"
    # Two providers gave the first hour: the measured value wins over the estimate (the
    # service's rule); the second hour is measured too.
    stored("electricitymaps", P0, 111.0, 222.0)
    stored("entsoe", P0, 500.0, estimated=True)
    assert 111.0 not in forecast
    assert 222.0 not in forecast

    result = ledger.build(job, store)

    assert [i.intensity for i in result.intervals] == [111.0, 222.0]
    assert result.emissions_kg.value == pytest.approx(kg([(0.5, 111.0), (1.0, 222.0)]))
    assert result.emissions_kg.value != pytest.approx(baseline.emissions_kg.value)
    # Measured intensities times an energy estimated from the CPU's TDP: an estimate, never
    # more certain than its energy.
    assert result.energy_kwh.source == "estimated"
    assert result.emissions_kg.source == "estimated"
    assert result.emissions_kg.detail == "energy × intensity of each hour it ran × hub PUE"
    # Run at once is the same hours here, so no saving; its energy is always an estimate.
    assert result.counterfactual.emissions_kg.source == "estimated"
    assert result.saving_emissions_kg.value == pytest.approx(0.0)
    points = {p.at: p for p in result.intensity["a"]}
    assert (points[P0].value, points[P0].source) == (111.0, "measured")
    assert (points[P0 + HOUR].value, points[P0 + HOUR].source) == (222.0, "measured")
    assert points[P0 + 2 * HOUR].source == "forecast"  # the hour after it ran: not stored
    assert result.as_json()["intensity"]["a"][0] == {
        "at": iso(P0), "value": 111.0, "source": "measured",
    }  # fmt: skip


def test_hours_without_a_stored_actual_keep_the_forecast_and_the_sum_says_mixed() -> None:
    store = JobStore()
    job = live_job(store)
    first_forecast = forecast_only(store, job).intervals[0].intensity
    assert first_forecast is not None
    stored("electricitymaps", P0 + HOUR, 222.0, estimated=True)  # the second hour only

    result = ledger.build(job, store)

    assert [i.intensity for i in result.intervals] == [pytest.approx(first_forecast), 222.0]
    expected = kg([(0.5, first_forecast), (1.0, 222.0)])
    assert result.emissions_kg.value == pytest.approx(expected)
    assert result.emissions_kg.source == "mixed"
    assert result.emissions_kg.detail.endswith(
        "; intensity estimated for 67% of the energy, forecast for 33%"
    )
    sources = {p.at: p.source for p in result.intensity["a"]}
    assert (sources[P0], sources[P0 + HOUR]) == ("forecast", "estimated")
    assert result.saving_emissions_kg.source == "mixed"


def test_a_store_that_cannot_be_read_leaves_the_forecast(tmp_path: Path) -> None:
    store = JobStore()
    job = live_job(store)
    baseline = forecast_only(store, job)
    stored("entsoe", P0, 111.0, 222.0)
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database" * 100)
    service = ForecastService.from_settings("embedded")
    service.store = HistoryStore(damaged)

    result = ledger.build(job, store, ledger.IntensityLookup("embedded", service=service))

    assert service.store.error is not None
    assert result.emissions_kg == baseline.emissions_kg
    assert result.emissions_kg.source == "forecast"
    assert [i.intensity for i in result.intervals] == [i.intensity for i in baseline.intervals]


def test_hours_not_over_yet_are_never_priced_from_the_store() -> None:
    lookup = ledger.IntensityLookup("embedded")
    now = floor_hour(utcnow())
    past, soon = now - 3 * HOUR, now + HOUR
    # A row for an hour still to come (a clock gone wrong somewhere) is no actual of it.
    history = HistoryStore()
    row = [Observation(soon, soon + HOUR, 1.0)]
    assert history.record(lifecycle_series("DE"), "entsoe", row, soon + 2 * HOUR)
    history.close()
    stored("entsoe", past, 111.0)

    point = lookup.at("DE", soon)
    assert point is not None
    assert point.source == "forecast"
    assert point.value != 1.0
    assert lookup.at("DE", past) == IntensityPoint(past, 111.0, "measured")


def test_a_replayed_job_keeps_the_trace_even_where_the_store_has_actuals(traces: Path) -> None:
    trace = traces / DE_TRACE
    values = trace_values(trace)
    store = JobStore()
    job = make_job(store, trace)
    start = T0.timestamp() + 2 * 3600
    SampleStore(store.db).ingest(job.id, "j1", "a", 0, line(start, 0.0) + line(start + 3600, 1.8e6))
    history = HistoryStore()
    hour = T0 + 2 * HOUR
    history.record(
        lifecycle_series("DE"), "entsoe", [Observation(hour, hour + HOUR, 1.0)], T0 + 9 * HOUR
    )
    history.close()

    result = ledger.build(store.get(job.id), store)

    (interval,) = result.intervals
    assert interval.intensity == pytest.approx(values[hour])
    assert result.emissions_kg.source == "replayed"
    assert {p.source for p in result.intensity["a"]} == {"replayed"}


@pytest.mark.parametrize(
    ("energy", "intensities", "expected"),
    [
        ("measured", {"measured"}, "measured"),
        ("estimated", {"measured"}, "estimated"),
        ("mixed", {"measured"}, "mixed"),
        ("measured", {"estimated"}, "estimated"),
        ("estimated", {"estimated"}, "estimated"),
        ("estimated", {"forecast"}, "forecast"),
        ("measured", {"forecast"}, "forecast"),
        ("estimated", {"replayed"}, "replayed"),
        ("estimated", {"measured", "forecast"}, "mixed"),
    ],
)
def test_emissions_are_never_labelled_more_certain_than_their_energy(
    energy: FigureSource, intensities: set[FigureSource], expected: FigureSource
) -> None:
    assert ledger._emission_source(energy, intensities) == expected

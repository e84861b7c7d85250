"""The planner: deadline always met, threshold, greenest window, hub choice with --hub auto."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harchos_cli.carbon.types import Forecast, Point, Region, Source
from harchos_cli.errors import UsageError
from harchos_cli.hubs.base import Hub
from harchos_cli.plan import planner
from harchos_cli.plan.planner import Candidate

T0 = datetime(2022, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def forecast(values: Sequence[float], *, zone: str = "DE", signal: str = "average") -> Forecast:
    points = [Point(T0 + i * HOUR, T0 + (i + 1) * HOUR, v, v, v) for i, v in enumerate(values)]
    region = Region(zone.lower(), zone, zone, "zone", ())
    source = Source("replay", signal, "recorded trace", "replayed", T0)  # type: ignore[arg-type]
    return Forecast(region, points, source)


def hub(name: str, **values: object) -> Hub:
    return Hub(name=name, transport="ssh", host="h", **values)  # type: ignore[arg-type]


def choose(values: Sequence[float], **kwargs: object) -> planner.Plan:
    options: dict[str, object] = {
        "now": T0,
        "duration": HOUR,
        "deadline": T0 + 12 * HOUR,
        "threshold": None,
        "gpus": 0,
    }
    options.update(kwargs)
    return planner.choose([Candidate(hub("a"), forecast(values))], **options)  # type: ignore[arg-type]


def test_greenest_window_is_the_lowest_mean_before_the_deadline() -> None:
    values = [500, 480, 300, 310, 200, 450, 100, 90, 80, 600, 600, 600, 10, 10]
    plan = choose(values, duration=2 * HOUR)
    # Two-hour windows ending by hour 12: the lowest mean is hours 7-8 (85).
    assert plan.choice.start == T0 + 7 * HOUR
    assert plan.choice.expected_intensity == pytest.approx(85.0)
    assert plan.choice.now_intensity == pytest.approx(490.0)
    assert plan.choice.saving_vs_now == pytest.approx(1 - 85 / 490)
    assert plan.as_json()["planned_start"] == "2022-03-01T07:00:00Z"


def test_threshold_starts_at_the_first_hour_at_or_under_it() -> None:
    values = [500, 480, 250, 200, 150, 90, 80, 600, 600, 600, 600, 600, 600]
    plan = choose(values, threshold=200.0)
    assert plan.choice.start == T0 + 3 * HOUR
    assert plan.choice.reason == "under threshold"


def test_threshold_never_reached_falls_back_to_the_greenest_window() -> None:
    values = [500, 480, 450, 300, 350, 400, 420, 430, 440, 450, 460, 470, 480]
    plan = choose(values, threshold=100.0)
    assert plan.choice.start == T0 + 3 * HOUR
    assert plan.choice.reason == "greenest window"


def test_threshold_under_now_starts_at_once_mid_hour() -> None:
    now = T0 + timedelta(minutes=20)
    plan = choose([100, 500, 500], now=now, threshold=150.0, deadline=T0 + 3 * HOUR)
    assert plan.choice.start == now


def test_past_the_latest_start_the_job_starts_at_once_and_says_so() -> None:
    now = T0 + timedelta(hours=11, minutes=30)
    plan = choose([100.0] * 14, now=now)
    assert plan.choice.start == now
    assert any("can no longer be met" in w for w in plan.warnings)


def test_a_job_longer_than_the_time_to_the_deadline_is_refused() -> None:
    with pytest.raises(UsageError, match="cannot finish by the deadline"):
        planner.check_feasible(T0, 3 * HOUR, T0 + 2 * HOUR)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.floats(1, 1000), min_size=1, max_size=30),
    minutes_in=st.integers(0, 59),
    duration_min=st.integers(10, 300),
    slack_min=st.integers(0, 1500),
    threshold=st.one_of(st.none(), st.floats(0, 1000)),
)
def test_the_deadline_is_always_met(
    values: list[float], minutes_in: int, duration_min: int, slack_min: int, threshold: float | None
) -> None:
    now = T0 + timedelta(minutes=minutes_in)
    duration = timedelta(minutes=duration_min)
    deadline = now + duration + timedelta(minutes=slack_min)
    plan = choose(values, now=now, duration=duration, deadline=deadline, threshold=threshold)
    assert now <= plan.choice.start
    assert plan.choice.start + duration <= deadline
    if threshold is not None and plan.choice.reason == "under threshold":
        hour = [p for p in forecast(values).points if p.start <= plan.choice.start < p.end]
        assert hour
        assert hour[0].intensity <= threshold


def test_auto_picks_the_lowest_emissions_counting_pue() -> None:
    green_but_wasteful = Candidate(
        hub("a", region="FR", pue=2.0), forecast([100.0] * 13, zone="FR")
    )
    efficient = Candidate(hub("b", region="DE", pue=1.1), forecast([150.0] * 13))
    plan = planner.choose(
        [green_but_wasteful, efficient],
        now=T0, duration=HOUR, deadline=T0 + 12 * HOUR, threshold=None, gpus=1,
    )  # fmt: skip
    # 100 × 2.0 = 200 against 150 × 1.1 = 165 per kWh at the plug.
    assert plan.choice.hub == "b"
    assert [alt.hub for alt in plan.alternatives] == ["a"]
    energy = planner.energy_kwh(1, HOUR)
    assert plan.choice.emissions_kg == pytest.approx(energy * 1.1 * 150 / 1000)


def test_auto_ties_go_to_the_cheaper_hub_then_the_name() -> None:
    same = [200.0] * 13
    pricey = Candidate(hub("a", price_per_gpu_hour=3.0), forecast(same))
    cheap = Candidate(hub("b", price_per_gpu_hour=1.0), forecast(same))
    free_z = Candidate(hub("z"), forecast(same))
    free_c = Candidate(hub("c"), forecast(same))
    kwargs = {"now": T0, "duration": HOUR, "deadline": T0 + 12 * HOUR, "threshold": None}
    assert planner.choose([pricey, cheap], gpus=2, **kwargs).choice.hub == "b"  # type: ignore[arg-type]
    assert planner.choose([free_z, free_c, cheap], gpus=2, **kwargs).choice.hub == "c"  # type: ignore[arg-type]


def test_auto_with_threshold_prefers_the_hub_that_gets_under_it_first() -> None:
    early = Candidate(hub("a"), forecast([300, 150, 300, 300, 300, 300, 300]))
    later_greener = Candidate(hub("b"), forecast([300, 300, 300, 20, 300, 300, 300]))
    plan = planner.choose(
        [later_greener, early],
        now=T0, duration=HOUR, deadline=T0 + 6 * HOUR, threshold=200.0, gpus=0,
    )  # fmt: skip
    assert (plan.choice.hub, plan.choice.start) == ("a", T0 + HOUR)


def test_marginal_signals_rank_after_average_ones() -> None:
    marginal = Candidate(hub("m"), forecast([10.0] * 13, signal="marginal"))
    average = Candidate(hub("a"), forecast([400.0] * 13))
    plan = planner.choose(
        [marginal, average], now=T0, duration=HOUR, deadline=T0 + 12 * HOUR, threshold=None,
        gpus=0,
    )  # fmt: skip
    assert plan.choice.hub == "a"
    assert any("not comparable" in w for w in plan.warnings)


def test_a_hub_without_carbon_data_starts_at_once() -> None:
    plan = planner.choose(
        [Candidate(hub("x"), None)], now=T0, duration=HOUR, deadline=T0 + 5 * HOUR,
        threshold=None, gpus=0,
    )  # fmt: skip
    assert plan.choice.start == T0
    assert plan.choice.expected_intensity is None


def test_objectives_rank_hubs_by_emissions_money_or_money_plus_priced_carbon() -> None:
    # a: green and dear; b: dirty and cheap. One GPU-hour at the flat 400 W is 0.4 kWh.
    green = Candidate(hub("a", price_per_gpu_hour=4.0), forecast([100.0] * 13))
    cheap = Candidate(hub("b", price_per_gpu_hour=1.0), forecast([500.0] * 13))

    def rank(objective: planner.Objective = "carbon", price: float | None = None) -> planner.Plan:
        return planner.choose([green, cheap], now=T0, duration=HOUR, deadline=T0 + 12 * HOUR,
                              threshold=None, gpus=1, objective=objective,
                              carbon_price=price)  # fmt: skip

    carbon = rank()
    assert carbon.choice.hub == "a"
    assert rank("cost").choice.hub == "b"
    # b emits 0.16 kg more for 3.0 less: carbon must cost over 3.0 / 0.00016 per tonne.
    energy = planner.energy_kwh(1, HOUR)
    extra_tonnes = energy * (500 - 100) / 1000 / 1000
    breakeven = 3.0 / extra_tonnes
    below = rank("balanced", breakeven * 0.9)
    above = rank("balanced", breakeven * 1.1)
    assert (below.choice.hub, above.choice.hub) == ("b", "a")
    data = above.as_json()
    assert data["objective"] == "balanced"
    assert data["by_objective"] == {"carbon": "a", "cost": "b", "balanced": "a"}
    assert carbon.as_json()["by_objective"]["balanced"] is None  # no carbon price given


def test_balanced_without_a_carbon_price_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="carbon price"):
        choose([100.0] * 13, objective="balanced")


def test_electricity_price_and_measured_power_enter_the_plan() -> None:
    power = planner.Power(1000.0, "measured: 1000 W average on job j")
    priced = hub("a", electricity_price_per_kwh=0.5, pue=1.2)
    plan = planner.choose(
        [Candidate(priced, forecast([100.0] * 13))], now=T0, duration=2 * HOUR,
        deadline=T0 + 12 * HOUR, threshold=None, gpus=0, power=power,
    )  # fmt: skip
    assert plan.choice.energy_kwh == pytest.approx(2.0)
    assert plan.choice.cost == pytest.approx(2.0 * 1.2 * 0.5)
    assert plan.as_json()["energy_basis"] == power.basis


def test_no_run_now_figure_when_the_forecast_begins_later() -> None:
    plan = choose([100.0] * 13, now=T0 - 2 * HOUR, deadline=T0 + 12 * HOUR)
    assert plan.choice.start == T0
    assert plan.choice.now_intensity is None
    assert plan.choice.saving_vs_now is None


def test_a_queue_wait_moves_a_hubs_start_and_one_past_the_deadline_loses() -> None:
    # Hub "queued" is greener at once, but its queue holds the job for three hours, past the
    # greenest hour; hub "box" can start at once.
    values = [50.0, 300.0, 300.0, 300.0, 200.0, 300.0] + [300.0] * 7
    queued = Candidate(hub("queued"), forecast(values), earliest=T0 + 3 * HOUR)
    box = Candidate(hub("box"), forecast([250.0] * 13))
    plan = planner.choose([queued, box], now=T0, duration=HOUR, deadline=T0 + 12 * HOUR,
                          threshold=None, gpus=1)  # fmt: skip
    (alternative,) = plan.alternatives
    assert (plan.choice.hub, plan.choice.start) == ("queued", T0 + 4 * HOUR)
    assert "Slurm's queue: not before 2022-03-01T03:00:00Z" in plan.choice.reason
    assert alternative.start == T0
    # A queue that cannot start the job before its latest start loses to any hub that can.
    late = Candidate(hub("queued"), forecast([10.0] * 13), earliest=T0 + 12 * HOUR)
    plan = planner.choose([late, box], now=T0, duration=HOUR, deadline=T0 + 12 * HOUR,
                          threshold=None, gpus=1)  # fmt: skip
    assert plan.choice.hub == "box"


def test_full_hours_are_skipped_and_the_plan_says_the_job_was_pushed() -> None:
    values = [300.0, 100.0, 150.0, 120.0] + [300.0] * 9
    hour1 = (T0 + HOUR, T0 + 2 * HOUR)
    free = planner.choose([Candidate(hub("a"), forecast(values), booked=(hour1,), slots=2)],
                          now=T0, duration=HOUR, deadline=T0 + 12 * HOUR, threshold=None,
                          gpus=0)  # fmt: skip
    assert (free.choice.start, free.choice.reason) == (T0 + HOUR, "greenest window")
    full = planner.choose([Candidate(hub("a"), forecast(values), booked=(hour1, hour1), slots=2)],
                          now=T0, duration=HOUR, deadline=T0 + 12 * HOUR, threshold=None,
                          gpus=0)  # fmt: skip
    # Hour 1 holds two jobs: the next greenest free hour, 120 g at hour 3.
    assert full.choice.start == T0 + 3 * HOUR
    assert full.choice.reason == (
        "greenest window left (greener hours are full: hub a runs 2 job(s) at once)"
    )
    assert full.choice.expected_intensity == 120.0
    # A threshold never starts a job in a full hour either.
    under = planner.choose([Candidate(hub("a"), forecast(values), booked=(hour1, hour1), slots=2)],
                           now=T0, duration=HOUR, deadline=T0 + 12 * HOUR, threshold=130.0,
                           gpus=0)  # fmt: skip
    assert under.choice.start == T0 + 3 * HOUR


def test_a_hub_full_until_the_deadline_loses_to_a_free_one_however_green() -> None:
    every_hour = tuple((T0 + i * HOUR, T0 + (i + 1) * HOUR) for i in range(4))
    full = Candidate(hub("green"), forecast([50.0] * 13), booked=every_hour, slots=1)
    free = Candidate(hub("dirty"), forecast([400.0] * 13))
    plan = planner.choose([full, free], now=T0, duration=HOUR, deadline=T0 + 4 * HOUR,
                          threshold=None, gpus=0, min_saving=0.02)  # fmt: skip
    assert plan.choice.hub == "dirty"
    (green,) = plan.alternatives
    assert "every hour before the deadline is full" in green.reason

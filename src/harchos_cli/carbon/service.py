"""The forecast service: pick a provider, fetch, fall back, and label where every number came from.

Offline first: whatever goes wrong with a live provider, the embedded model answers and the result
says so. Only a replay trace that cannot serve the request is an error (exit 3).

Every hourly actual a live provider returns is kept in the history store (carbon/history.py), and
the first time a region is used with a provider that offers past ranges, a week is backfilled.
The embedded model conditions on the store's average lifecycle values for the zone together with
what was just fetched: the longest recent history harchos has. Replayed traces are neither
recorded nor read: they are recordings (often of other years), not fetches, and carry their own
history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.embedded import HISTORY_HOURS, MAX_LEAD, EmbeddedModel
from harchos_cli.carbon.history import (
    RETENTION,
    RETRY_FAILED,
    RETRY_REFUSED,
    Gathered,
    HistoryStore,
    Series,
    StoredHour,
    area_for,
    complete_hours,
    lifecycle_series,
    resolve,
)
from harchos_cli.carbon.providers.base import (
    HistoryBackfill,
    LiveProvider,
    PlanRefused,
    ProviderData,
)
from harchos_cli.carbon.providers.live import LIVE_PROVIDERS, make_live_provider, worth_trying
from harchos_cli.carbon.providers.replay import ReplayProvider, parse_replay_spec
from harchos_cli.carbon.types import Comparison, Forecast, Observation, Point, Region, Source
from harchos_cli.config import Config
from harchos_cli.errors import ProviderError, UsageError
from harchos_cli.timeparse import floor_hour, iso

PROVIDER_CHOICES = ("auto", "embedded", *LIVE_PROVIDERS, "replay:PATH")
# Preference for --provider auto among configured providers that cover the zone. WattTime comes
# after the average-signal forecasters: its default signal is marginal, which must never be ranked
# against the average signals. ENTSO-E comes after every provider that forecasts by itself: it
# gives actuals only (a week of them), which the embedded model forecasts from (no zone in the
# catalog has both a WattTime region and an ENTSO-E area).
AUTO_ORDER = ("electricitymaps", "ukgrid", "watttime", "entsoe")
HOUR = timedelta(hours=1)
#: How far back a backfill reaches: a week, or the model's whole window when that is longer,
#: never past what the store keeps.
BACKFILL_HOURS = min(max(168, HISTORY_HOURS), int(RETENTION / HOUR))


@dataclass
class ForecastService:
    """Forecasts for regions from one provider spec (`auto`, a provider name, `replay:PATH`)."""

    config: Config
    cache: ResponseCache
    provider_spec: str = "auto"
    #: The history store (default: in the state database the response cache uses).
    history: HistoryStore | None = None

    def __post_init__(self) -> None:
        spec = self.provider_spec.strip()
        name = spec.split(":", 1)[0].lower()
        if name not in {"auto", "embedded", "replay", *LIVE_PROVIDERS}:
            raise UsageError(
                f"unknown provider {spec!r}", hint=f"choose one of: {', '.join(PROVIDER_CHOICES)}"
            )
        self._name = name
        # One trace per zone; a region no trace is for gets the first one (with a warning).
        self._replays = (
            [ReplayProvider(path) for path in parse_replay_spec(spec)] if name == "replay" else []
        )
        self._replay = self._replays[0] if self._replays else None
        self._live: dict[str, LiveProvider] = {}
        self.store = self.history or HistoryStore(self.cache.path)

    @classmethod
    def from_settings(
        cls, provider: str | None = None, *, project_file: Path | None = None
    ) -> ForecastService:
        """The service for `--provider` (None: the configured one), with its cache."""
        config = Config.load({"provider": provider}, project_file=project_file)
        cache = ResponseCache(enabled=bool(config.get("cache.enabled")))
        spec = str(config.get("provider"))
        project = config.project_file
        if spec.startswith("replay:") and config.origin("provider") == "project" and project:
            # A trace named in a project's harchos.toml is relative to that project, not to cwd.
            paths = spec.removeprefix("replay:").split(",")
            spec = "replay:" + ",".join(str(project.parent / Path(p)) for p in paths if p)
        return cls(config, cache, spec)

    @property
    def replay(self) -> ReplayProvider | None:
        """The (first) replayed trace: its time is the clock's, its zone the default region."""
        return self._replay

    def replayed_zones(self) -> list[str]:
        """The zones of the replayed traces (empty: not replaying, or traces without a zone)."""
        return [r.trace.zone for r in self._replays if r.trace.zone]

    def _replay_for(self, region: Region) -> ReplayProvider:
        assert self._replay is not None
        return next((r for r in self._replays if r.trace.zone == region.zone), self._replay)

    def default_now(self, wall_clock: datetime) -> datetime:
        """ "Now" for this provider: the wall clock, or 14 days into a replayed trace."""
        return self._replay.default_now() if self._replay else wall_clock

    def forecast(self, region: Region, now: datetime, hours: int) -> Forecast:
        if self._replay is not None:
            replay = self._replay_for(region)
            history, points, source = replay.window(now, hours)
            forecast = Forecast(region, points, source, history, history_source="replay")
            if replay.trace.zone and replay.trace.zone != region.zone:
                forecast.warnings.append(
                    f"the replayed trace is for {replay.trace.zone}, not {region.zone}"
                )
            return forecast
        if self._name == "embedded":
            return self._embedded(region, now, hours, self._gather(region, now))
        warnings: list[str] = []
        for name in self._candidates(region, warnings):
            provider = self._provider(name)
            try:
                data = provider.fetch(region, now, hours)
            except ProviderError as exc:
                warnings.append(f"{exc}; using the embedded model instead")
                continue
            forecast = self._from_live(name, region, now, hours, data)
            forecast.warnings[:0] = warnings
            return forecast
        forecast = self._embedded(region, now, hours, self._gather(region, now))
        forecast.warnings[:0] = warnings
        return forecast

    def _candidates(self, region: Region, warnings: list[str]) -> list[str]:
        if self._name != "auto":
            provider = self._provider(self._name)
            if not provider.covers(region):
                raise UsageError(
                    f"{self._name} has no data for {region.name} ({region.zone})",
                    hint="use --provider auto or embedded",
                )
            if not provider.configured():
                warnings.append(
                    f"{self._name} has no credentials (see `harchos config show`); "
                    "using the embedded model instead"
                )
                return []
            return [self._name]
        return [name for name in AUTO_ORDER if worth_trying(name, region, self.config)]

    def _provider(self, name: str) -> LiveProvider:
        if name not in self._live:
            self._live[name] = make_live_provider(name, self.config, self.cache)
        return self._live[name]

    def _gather(
        self,
        region: Region,
        now: datetime,
        series: Series | None = None,
        *,
        provider: str | None = None,
        fetched: Sequence[Observation] = (),
        backfilled: Sequence[Observation] = (),
        backfill: str | None = None,
    ) -> Gathered:
        """The recent history of `series` (default: the zone's average lifecycle intensity):
        the last `HISTORY_HOURS` whole hours before `now`, from the store and this run's fetch
        and backfill, one value per hour (the rule in carbon/history.py, `provider` first)."""
        series = series or lifecycle_series(region.zone)
        end = floor_hour(now)
        start = end - HISTORY_HOURS * HOUR
        rows = self.store.rows(series, start, end)
        if provider is not None:
            fresh = complete_hours([*fetched, *backfilled], now)
            rows.extend(
                StoredHour(o.start, o.intensity, o.estimated, provider, now)
                for o in fresh
                if start <= o.start < end
            )
        return Gathered(
            series,
            resolve(rows, provider),
            provider,
            fetched={o.start for o in fetched},
            backfilled={o.start for o in backfilled},
            backfill=backfill,
        )

    def stored_actuals(
        self, forecast: Forecast, start: datetime, end: datetime
    ) -> list[Observation]:
        """What the history store holds for the hours in [start, end) of the series `forecast`
        is a forecast of, one value per hour by the store's rule (`forecast`'s provider first).

        That series is the zone's average lifecycle intensity, the one the embedded model
        conditions on. A forecast of anything else (a marginal or direct signal, a replayed
        trace) gets nothing: stored values would not be values of what it forecasts. A store
        that cannot be read answers nothing.
        """
        source = forecast.source
        same_series = source.signal == "average" and source.method == "lifecycle"
        if source.provider == "replay" or not same_series:
            return []
        prefer = source.provider if source.provider in LIVE_PROVIDERS else None
        rows = self.store.rows(lifecycle_series(forecast.region.zone), start, end)
        return [hour.observation() for hour in resolve(rows, prefer)]

    def _backfill(
        self, name: str, region: Region, series: Series, now: datetime
    ) -> tuple[str | None, list[Observation], str | None]:
        """Fill the hours of the last `BACKFILL_HOURS` that the store lacks from `name`, older
        than what every fetch returns, where the provider offers past ranges.

        Returns (status for `HistoryInfo.backfill`, the observations fetched, a warning). At most
        one attempt per series and provider: a marker in the store says what was done, so a later
        call asks only for hours the last backfill did not cover (the gap after days away, or
        older hours when the model's window grew), waits `RETRY_FAILED` after a failure and
        `RETRY_REFUSED` after the plan refused. Without a working store nothing is backfilled
        (it could not be remembered).
        """
        provider = self._provider(name)
        if not isinstance(provider, HistoryBackfill):
            return None, [], None
        end = floor_hour(now) - provider.recent_hours * HOUR
        start = floor_hour(now) - BACKFILL_HOURS * HOUR
        if end <= start:
            return None, [], None
        if not self.store.writable:
            return None, [], None
        mark = self.store.marker(name, series)
        if mark is not None:
            age = now - mark.attempted_at
            if mark.status == "refused" and age < RETRY_REFUSED:
                return "not offered", [], None
            if mark.status == "failed" and age < RETRY_FAILED:
                return "failed", [], None
        known = self.store.known(series, name, start, end)
        # Hours a completed backfill asked for and did not get are not asked for again.
        missing = [
            hour
            for hour in (start + i * HOUR for i in range(int((end - start) / HOUR)))
            if hour not in known and not (mark is not None and mark.covers(hour))
        ]
        if not missing:
            return "not needed", [], None
        first, last = missing[0], missing[-1] + HOUR
        try:
            found = provider.backfill(region, first, last, now)
        except PlanRefused as exc:
            self.store.mark(name, series, "refused", attempted_at=now, note=str(exc))
            return (
                "not offered",
                [],
                f"{exc}; the history builds up from each run's last "
                f"{provider.recent_hours} h instead (asked again in {RETRY_REFUSED.days} days)",
            )
        except ProviderError as exc:
            self.store.mark(name, series, "failed", attempted_at=now, note=str(exc))
            hours = int(RETRY_FAILED / HOUR)
            return (
                "failed",
                [],
                f"{exc}; no backfill of {region.zone} history now (tried again in {hours} h)",
            )
        self.store.record(series, name, found, now)
        # Every hour of [start, end) is now stored, was asked for, or was covered before.
        self.store.mark(
            name, series, "done", attempted_at=now, since=start, through=end, note=f"{len(found)} h"
        )
        return "fetched", found, None

    def _embedded(
        self, region: Region, now: datetime, hours: int, gathered: Gathered | None = None
    ) -> Forecast:
        model = EmbeddedModel.load()
        history = gathered.observations if gathered is not None else []
        points = model.forecast(region.zone, now, hours, history=history)
        if gathered is not None and history:
            detail = f"conditioned on {gathered.describe()}"
        else:
            detail = "seasonal profile only (no recent history)"
        source = Source(
            provider="embedded",
            signal="average",
            method="lifecycle",
            kind="forecast",
            fetched_at=now,
            model=model.model_name,
            detail=detail,
        )
        forecast = Forecast(region, points, source, list(history))
        if gathered is not None and history:
            forecast.history_source = gathered.main_source
            forecast.history_info = gathered.info(used_by_model=True)
        return forecast

    def _from_live(
        self, name: str, region: Region, now: datetime, hours: int, data: ProviderData
    ) -> Forecast:
        # The embedded model knows average lifecycle intensity only: it neither conditions on,
        # nor lends its error band to, marginal or direct-emission data.
        same_kind = data.source.signal == "average" and data.source.method == "lifecycle"
        series = Series(region.zone, data.source.signal, data.source.method, area_for(name, region))
        self.store.record(series, name, data.history, now)
        status, backfilled, note = self._backfill(name, region, series, now)
        own = self._gather(
            region,
            now,
            series,
            provider=name,
            fetched=data.history,
            backfilled=backfilled,
            backfill=status,
        )
        if data.forecast is None:
            # Without the provider's own series the model still has the zone's stored lifecycle
            # history (from earlier runs, other providers).
            gathered = own if same_kind else self._gather(region, now)
            forecast = self._embedded(region, now, hours, gathered)
            if not same_kind and data.history:
                forecast.warnings.append(
                    f"{data.source.provider} gave {data.source.signal} {data.source.method} "
                    "history, which the embedded model (average, lifecycle) cannot use"
                )
        else:
            points = _with_band(region, now, hours, data.forecast, same_kind)
            history = own.observations
            forecast = Forecast(region, points, data.source, history, data.source.provider)
            if history:
                forecast.history_source = own.main_source
                forecast.history_info = own.info(used_by_model=same_kind)
            if same_kind:
                forecast.comparison = _compare(region, now, hours, history, points)
        if note:
            forecast.warnings.append(note)
        forecast.warnings.extend(data.warnings)
        return forecast


def _with_band(
    region: Region, now: datetime, hours: int, values: list[Observation], comparable: bool
) -> list[Point]:
    """A provider forecast gets the embedded model's calibrated P10–P90 error band per lead.

    Providers publish no spread; the band is the embedded model's backtested error, a stand-in
    that is wide rather than overconfident. For a signal the model does not forecast (marginal,
    direct) there is no band to lend: low = high = the value.
    """
    start = floor_hour(now)
    ahead = [v for v in values if v.end > start and v.start < start + timedelta(hours=hours)]
    model = EmbeddedModel.load()
    if not comparable or not model.has_zone(region.zone) or not ahead:
        return [Point(v.start, v.end, v.intensity, v.intensity, v.intensity) for v in ahead]
    low, high = model.band_ratios(region.zone, max(1, hours), with_history=True)
    points = []
    for value in ahead:
        lead = max(0, min(len(low) - 1, int((value.start - start).total_seconds() // 3600)))
        points.append(
            Point(
                value.start,
                value.end,
                value.intensity,
                min(value.intensity, value.intensity * float(low[lead])),
                max(value.intensity, value.intensity * float(high[lead])),
            )
        )
    return points


def _compare(
    region: Region, now: datetime, hours: int, history: Sequence[Observation], used: list[Point]
) -> Comparison | None:
    """Run the embedded model on the provider's own history and measure the disagreement."""
    model = EmbeddedModel.load()
    if not history or not used or not model.has_zone(region.zone):
        return None
    ours = {p.start: p.intensity for p in model.forecast(region.zone, now, hours, history=history)}
    # The model is hourly; a finer provider forecast is compared by its hourly means.
    sums: dict[datetime, list[float]] = {}
    for point in used:
        seconds = (point.end - point.start).total_seconds()
        total = sums.setdefault(floor_hour(point.start), [0.0, 0.0])
        total[0] += point.intensity * seconds
        total[1] += seconds
    pairs = [(ours[hour], area / seconds) for hour, (area, seconds) in sums.items() if hour in ours]
    if not pairs:
        return None
    mean_abs = sum(abs(a - b) for a, b in pairs) / len(pairs)
    level = sum(b for _, b in pairs) / len(pairs)
    return Comparison(model.model_name, mean_abs, mean_abs / level if level else 0.0, len(pairs))


def horizon_warning(forecast: Forecast, now: datetime, deadline: datetime) -> str | None:
    """A warning when a search up to `deadline` reaches past what the forecast can know (beyond
    the embedded model's last lead, only the usual pattern is left); None when it does not. A
    replayed trace knows every hour it holds."""
    if forecast.source.provider == "replay":
        return None
    known = floor_hour(now) + timedelta(hours=MAX_LEAD)
    if deadline <= known:
        return None
    return (
        f"{forecast.region.name}: after {iso(known)} ({MAX_LEAD} h ahead) the forecast is only "
        "the usual pattern for the season, weekday and hour, not a forecast of those days; a "
        "window found there is typical, not predicted"
    )

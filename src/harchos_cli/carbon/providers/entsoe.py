"""ENTSO-E Transparency Platform: a week of actual generation per production type, made intensity.

ENTSO-E publishes what each European bidding zone generated, per production type (document type
A75, process type A16), and the day-ahead wind and solar generation forecast (A69, process A01),
free with a security token. It publishes no CO2 figures: harchos turns each hour's mix into
carbon intensity with the default emission factors Electricity Maps publishes (`LIFECYCLE`,
`DIRECT`, below) as

    intensity = Σ (generation of type × factor of type) / Σ generation

the intensity of the zone's **own generation** (production-based). Imports and exports are
ignored, and the figures say so. ENTSO-E has no intensity forecast: the week of history goes to
the embedded model, which forecasts from it (the service does that when `forecast` is None). The
lifecycle series is the history; the direct series, the hourly mix and the wind/solar forecast are
returned beside it in `EntsoeData` for later models.

Answers are XML: a `GL_MarketDocument` of `TimeSeries` (one per production type, and for pumped
storage one more for what it consumed), each with `Period`s of `Point`s (position, quantity in
MW) at a `resolution` of PT15M, PT30M or PT60M. Curve type A01 gives every position (a missing one
is a gap); A03 leaves out positions whose value repeats the previous one. "No matching data" comes
back as HTTP 200 with an `Acknowledgement_MarketDocument` (reason code 999); a refused query as
HTTP 400, usually with an acknowledgement saying why; a bad token as HTTP 401 with an HTML page.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from xml.etree import ElementTree

import httpx

from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.providers.base import ProviderData
from harchos_cli.carbon.providers.http import (
    HOUR,
    HttpStatusError,
    ProviderHttp,
    Sample,
    Sleep,
    cache_key,
    chunks,
    hourly_means,
    parse_time,
)
from harchos_cli.carbon.regions import entsoe_eic
from harchos_cli.carbon.types import Observation, Region, Signal, Source
from harchos_cli.config import Config
from harchos_cli.errors import ProviderError
from harchos_cli.secrets import MASK
from harchos_cli.timeparse import as_utc, floor_hour

NAME = "entsoe"
PATH = "api"
GL_NAMESPACE = "urn:iec62325.351:tc57wg16:451-6:generationloaddocument:3:0"
ACK_NAMESPACE = "urn:iec62325.351:tc57wg16:451-1:acknowledgementdocument:7:0"
#: Hours of actual generation fetched on every call: a week, the history the model can use.
HISTORY_HOURS = 168
#: The day-ahead wind and solar forecast is fetched for at least this many hours ahead.
FORECAST_MIN_HOURS = 24
FORECAST_MAX_HOURS = 72
#: The platform answers a period of at most one year per request; older actuals (beyond the week
#: every fetch gets) are backfilled in pieces of this size.
BACKFILL_MAX = timedelta(days=365)
#: A production type whose data end at most this long before the newest hour is late, not gone:
#: the hours after its last value are left out rather than computed without it.
PUBLICATION_LAG = timedelta(hours=6)
NO_DATA_CODE = "999"
#: Characters of an acknowledgement's reason shown in an error message.
REASON_MAX = 300
TOKEN_HINT = (
    "set ENTSOE_SECURITY_TOKEN or entsoe.token in `harchos config path`; the token is free: "
    "register at transparency.entsoe.eu and ask for Restful API access"
)
IMPORTS_NOTE = (
    "entsoe: {zone}'s own generation only (production-based): imports and exports are ignored"
)

#: ENTSO-E production types (psrType) and the Electricity Maps mode each one counts as, as in
#: Electricity Maps' own ENTSO-E parser: waste counts as biomass, coal-derived gas as gas, oil
#: shale and peat as coal; marine, other renewable and other as unknown. Pumped storage (B10) and
#: energy storage (B25) count when they generate, as storage discharge.
PSR_TYPES: dict[str, tuple[str, str]] = {
    "B01": ("Biomass", "biomass"),
    "B02": ("Fossil Brown coal/Lignite", "coal"),
    "B03": ("Fossil Coal-derived gas", "gas"),
    "B04": ("Fossil Gas", "gas"),
    "B05": ("Fossil Hard coal", "coal"),
    "B06": ("Fossil Oil", "oil"),
    "B07": ("Fossil Oil shale", "coal"),
    "B08": ("Fossil Peat", "coal"),
    "B09": ("Geothermal", "geothermal"),
    "B10": ("Hydro Pumped Storage", "storage discharge"),
    "B11": ("Hydro Run-of-river and poundage", "hydro"),
    "B12": ("Hydro Water Reservoir", "hydro"),
    "B13": ("Marine", "unknown"),
    "B14": ("Nuclear", "nuclear"),
    "B15": ("Other renewable", "unknown"),
    "B16": ("Solar", "solar"),
    "B17": ("Waste", "biomass"),
    "B18": ("Wind Offshore", "wind"),
    "B19": ("Wind Onshore", "wind"),
    "B20": ("Other", "unknown"),
    "B25": ("Energy storage", "storage discharge"),
}

#: Lifecycle emission factors in gCO2eq/kWh: Electricity Maps' published defaults
#: (electricitymaps-contrib, config/defaults.yaml, `emissionFactors.lifecycle`), mostly the medians
#: of IPCC (2014) AR5 WG3 Annex III. Storage discharge is Electricity Maps' fallback for it, the
#: 2021 annual mean intensity of all its zones.
LIFECYCLE: dict[str, float] = {
    "biomass": 230.0,  # IPCC 2014
    "coal": 820.0,  # IPCC 2014
    "gas": 490.0,  # IPCC 2014
    "geothermal": 38.0,  # IPCC 2014
    "hydro": 24.0,  # IPCC 2014
    "nuclear": 12.0,  # IPCC 2014
    "oil": 650.0,  # UK POST 2014
    "solar": 45.0,  # IPCC 2014
    "wind": 11.0,  # IPCC 2014
    "unknown": 700.0,  # Electricity Maps: assumed thermal
    "storage discharge": 391.33,  # Electricity Maps: 2021 mean of all zones
}

#: Direct (combustion-only) emission factors in gCO2eq/kWh, Electricity Maps' published defaults
#: (`emissionFactors.direct`): IPCC 2014 for coal and gas, EIA 2020 / BEIS 2021 for oil, BEIS 2021
#: for biomass (0: biogenic), zero for the sources that burn nothing.
DIRECT: dict[str, float] = {
    "biomass": 0.0,  # BEIS 2021
    "coal": 760.0,  # IPCC 2014
    "gas": 370.0,  # IPCC 2014
    "geothermal": 0.0,  # IPCC 2014
    "hydro": 0.0,  # IPCC 2014
    "nuclear": 0.0,  # IPCC 2014
    "oil": 406.0,  # EIA 2020 / BEIS 2021
    "solar": 0.0,  # IPCC 2014
    "wind": 0.0,  # IPCC 2014
    "unknown": 575.0,  # Electricity Maps: assumed thermal
    "storage discharge": 324.69,  # Electricity Maps: 2021 mean of all zones
}
FACTOR_SOURCE = "Electricity Maps default emission factors (mostly IPCC 2014)"

_DURATION = re.compile(r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?)?$")


def psr_mode(psr_type: str) -> str:
    """The Electricity Maps mode a production type counts as (`unknown` for codes not listed)."""
    return PSR_TYPES.get(psr_type, ("", "unknown"))[1]


def intensity(mw: Mapping[str, float], factors: Mapping[str, float]) -> float | None:
    """Generation-weighted mean emission factor of a mix (psrType → MW); None for no generation."""
    total = sum(value for value in mw.values() if value > 0)
    if total <= 0:
        return None
    emitted = sum(value * factors[psr_mode(psr)] for psr, value in mw.items() if value > 0)
    return emitted / total


class AcknowledgementError(ProviderError):
    """The platform answered with an `Acknowledgement_MarketDocument` instead of data."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(NAME, f"the Transparency Platform answered {code}: {text}")
        self.code = code
        self.text = text


@dataclass(frozen=True)
class Series:
    """One parsed `TimeSeries`: a production type's MW values over their periods."""

    psr_type: str
    generation: bool
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class GenerationHour:
    """Mean power per production type (psrType code → MW) over one UTC hour."""

    start: datetime
    end: datetime
    mw: dict[str, float]


@dataclass
class EntsoeData(ProviderData):
    """What `Entsoe.fetch` returns: `ProviderData` plus what the intensity was made of.

    Attributes:
        eic: The area's EIC code.
        direct: The same hours as `history`, with direct (combustion-only) factors.
        mix: The hourly generation mix behind both series.
        wind_solar_forecast: The day-ahead wind and solar generation forecast (psrTypes B16,
            B18, B19), hourly, from the current hour on; empty where none was published.
        wind_solar_note: Why the wind/solar forecast is empty, when it is.
    """

    eic: str = ""
    direct: list[Observation] = field(default_factory=list)
    mix: list[GenerationHour] = field(default_factory=list)
    wind_solar_forecast: list[GenerationHour] = field(default_factory=list)
    wind_solar_note: str = ""


def api_time(moment: datetime) -> str:
    """The platform's `periodStart`/`periodEnd` form, `yyyyMMddHHmm` in UTC."""
    return as_utc(moment).strftime("%Y%m%d%H%M")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ElementTree.Element, name: str) -> ElementTree.Element | None:
    return next((c for c in element if _local(c.tag) == name), None)


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [c for c in element if _local(c.tag) == name]


def _text(element: ElementTree.Element, *path: str) -> str | None:
    node: ElementTree.Element | None = element
    for name in path:
        node = _child(node, name) if node is not None else None
    if node is None or node.text is None:
        return None
    return node.text.strip()


def parse_resolution(text: str | None) -> timedelta:
    """An ISO 8601 duration as the platform writes resolutions (`PT15M`, `PT60M`, `PT1H`)."""
    match = _DURATION.match(text or "")
    if not text or match is None or not any(match.groupdict().values()):
        raise ProviderError(NAME, f"unexpected resolution {text!r} in the answer")
    parts = {k: int(v) for k, v in match.groupdict().items() if v}
    step = timedelta(**parts)
    if step <= timedelta(0):
        raise ProviderError(NAME, f"unexpected resolution {text!r} in the answer")
    return step


def _quantity(text: str | None) -> float:
    try:
        value = float(text or "")
    except ValueError:
        raise ProviderError(NAME, f"unexpected quantity {text!r} in the answer") from None
    if not math.isfinite(value):
        raise ProviderError(NAME, f"unexpected quantity {text!r} in the answer")
    return max(value, 0.0)


def _period_samples(period: ElementTree.Element, curve_type: str) -> list[Sample]:
    start = parse_time(_text(period, "timeInterval", "start"), NAME)
    end = parse_time(_text(period, "timeInterval", "end"), NAME)
    step = parse_resolution(_text(period, "resolution"))
    slots = int((end - start) / step)
    points: dict[int, float] = {}
    for point in _children(period, "Point"):
        position_text = _text(point, "position")
        try:
            position = int(position_text or "")
        except ValueError:
            raise ProviderError(
                NAME, f"unexpected position {position_text!r} in the answer"
            ) from None
        if 1 <= position <= slots:
            points[position] = _quantity(_text(point, "quantity"))
    if curve_type == "A03":
        # Variable-sized blocks: a point holds until the next given position (or the period's
        # end); the positions left out repeat the previous value.
        positions = sorted(points)
        ends = [*positions[1:], slots + 1]
        return [
            Sample(start + (p - 1) * step, start + (until - 1) * step, points[p])
            for p, until in zip(positions, ends, strict=True)
        ]
    # A01 (and the default): one point per position; a missing position is a gap.
    return [Sample(start + (p - 1) * step, start + p * step, points[p]) for p in sorted(points)]


def _check_document(body: bytes) -> ElementTree.Element:
    if b"<!DOCTYPE" in body[:1024] or b"<!ENTITY" in body:
        raise ProviderError(NAME, "the answer is not a Transparency Platform document")
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise ProviderError(NAME, "the answer is not valid XML") from None
    name = _local(root.tag)
    if name == "Acknowledgement_MarketDocument":
        reason = _child(root, "Reason")
        code = (_text(reason, "code") if reason is not None else None) or "?"
        text = (_text(reason, "text") if reason is not None else None) or "no reason given"
        raise AcknowledgementError(code, " ".join(text.split()))
    if name != "GL_MarketDocument":
        raise ProviderError(NAME, f"unexpected document {name!r} in the answer")
    return root


def acknowledgement_reason(body: bytes) -> str | None:
    """The `Reason` text of an `Acknowledgement_MarketDocument`; None for any other body."""
    try:
        _check_document(body)
    except AcknowledgementError as exc:
        return exc.text
    except ProviderError:
        return None
    return None


def check_answer(body: Any) -> None:
    """Raise for an answer that is an error in disguise (an acknowledgement with HTTP 200)."""
    if not isinstance(body, bytes):
        raise ProviderError(NAME, "unexpected answer: not a document")
    if b"Acknowledgement_MarketDocument" in body[:2048]:
        _check_document(body)


def parse_document(body: bytes) -> list[Series]:
    """The `TimeSeries` of a `GL_MarketDocument` (A75 or A69), each with its MW samples.

    A series with `outBiddingZone_Domain.mRID` is what a zone consumed (pumped storage pumping);
    it is kept with `generation=False`.

    Raises:
        AcknowledgementError: The answer is an acknowledgement (999: no matching data).
        ProviderError: Not XML, not a generation document, or a value that is not a number.
    """
    root = _check_document(body)
    series: list[Series] = []
    for node in _children(root, "TimeSeries"):
        unit = _text(node, "quantity_Measure_Unit.name")
        if unit is not None and unit != "MAW":
            raise ProviderError(NAME, f"unexpected unit {unit!r} in the answer (expected MAW)")
        psr_type = _text(node, "MktPSRType", "psrType") or "B20"
        generation = _child(node, "outBiddingZone_Domain.mRID") is None
        curve_type = _text(node, "curveType") or "A01"
        samples = [
            sample
            for period in _children(node, "Period")
            for sample in _period_samples(period, curve_type)
        ]
        series.append(Series(psr_type, generation, tuple(samples)))
    return series


def hourly_mix(series: Iterable[Series]) -> tuple[list[GenerationHour], int]:
    """Hourly mean MW per production type over the generating series; hours with an incomplete
    mix are left out.

    A production type is expected in every hour between its first and last value; an hour one
    of them lacks inside that span is left out (its intensity would be computed without that
    type). A type whose data end within `PUBLICATION_LAG` of the newest hour is late rather than
    gone (the platform publishes each type with its own delay): the hours after its last value
    are left out too. Sub-hourly values become hourly means (see `hourly_means`).

    Returns:
        The complete hours, in time order, and how many hours were left out.
    """
    by_type: dict[str, list[Sample]] = {}
    for one in series:
        if one.generation:
            by_type.setdefault(one.psr_type, []).extend(one.samples)
    hourly = {
        psr: {o.start: o.intensity for o in hourly_means(samples)}
        for psr, samples in by_type.items()
    }
    hourly = {psr: values for psr, values in hourly.items() if values}
    if not hourly:
        return [], 0
    spans = {psr: (min(values), max(values)) for psr, values in hourly.items()}
    newest = max(last for _, last in spans.values())
    cut = min(last for _, last in spans.values() if last >= newest - PUBLICATION_LAG)
    hours = sorted({hour for values in hourly.values() for hour in values})
    kept: list[GenerationHour] = []
    for hour in hours:
        expected = [psr for psr, (first, last) in spans.items() if first <= hour <= last]
        if hour > cut or any(hour not in hourly[psr] for psr in expected):
            continue
        mw = {psr: hourly[psr][hour] for psr in expected}
        kept.append(GenerationHour(hour, hour + HOUR, mw))
    return kept, len(hours) - len(kept)


class _XmlHttp(ProviderHttp):
    """`ProviderHttp` for XML: answers stay raw bytes, in the response cache too."""

    def _decode(self, response: httpx.Response) -> Any:
        return response.content

    def lookup(self, zone: str, key: str, now: datetime) -> Any | None:
        if not self.use_cache:
            return None
        return self.cache.get(self.provider, zone, key, now)


class Entsoe:
    """ENTSO-E Transparency Platform client implementing `LiveProvider`.

    Args:
        config: Settings (`entsoe.token`, `entsoe.base_url`, `http.*`, `cache.enabled`).
        cache: Response cache. Keys name the query with the token masked.
        client: Optional shared `httpx.Client`.
        sleep: Delay function between retries.
    """

    name = NAME
    signal: Signal = "average"
    #: Every fetch gets the last week of actual generation.
    recent_hours = HISTORY_HOURS
    backfill_chunk = BACKFILL_MAX

    def __init__(
        self,
        config: Config,
        cache: ResponseCache,
        *,
        client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        token = config.get("entsoe.token")
        self._token: str | None = str(token).strip() if token and str(token).strip() else None
        self.http = _XmlHttp.from_config(NAME, config, cache, client=client, sleep=sleep)

    def covers(self, region: Region) -> bool:
        """Zones harchos knows an ENTSO-E area (EIC code) for."""
        return entsoe_eic(region.zone) is not None

    def configured(self) -> bool:
        """Whether a security token is set."""
        return self._token is not None

    def close(self) -> None:
        """Release the HTTP client."""
        self.http.close()

    def fetch(self, region: Region, now: datetime, hours: int) -> EntsoeData:
        """A week of actual generation for `region`'s area as hourly intensity, plus the
        day-ahead wind and solar forecast.

        `forecast` is always None: the service runs the embedded model on `history` (lifecycle).

        Raises:
            ProviderError: No token, the token was rejected, no data for the zone (999), or no
                hour with a complete mix. A failed wind/solar forecast only leaves it empty.
        """
        now = as_utc(now)
        if self._token is None:
            raise ProviderError(NAME, f"no security token ({TOKEN_HINT})", permanent=True)
        zone = region.zone
        eic = entsoe_eic(zone)
        if eic is None:
            raise ProviderError(
                NAME, f"zone {zone} is not an ENTSO-E area harchos knows", permanent=True
            )
        end = floor_hour(now)
        start = end - HISTORY_HOURS * HOUR
        query = {"documentType": "A75", "processType": "A16", "in_Domain": eic}
        try:
            body, cached = self._get(query, start, end, zone, now)
        except AcknowledgementError as exc:
            if exc.code == NO_DATA_CODE:
                raise ProviderError(
                    NAME,
                    f"no data for zone {zone} ({eic}) in the last {HISTORY_HOURS} h "
                    f"(the Transparency Platform answered: {self._shown(exc.text)})",
                ) from None
            raise self._acknowledged(exc) from None
        mix, dropped = hourly_mix(parse_document(body))
        mix = [hour for hour in mix if hour.start < now]
        history: list[Observation] = []
        direct: list[Observation] = []
        kept: list[GenerationHour] = []
        for hour in mix:
            lifecycle_value = intensity(hour.mw, LIFECYCLE)
            direct_value = intensity(hour.mw, DIRECT)
            if lifecycle_value is None or direct_value is None:
                continue
            kept.append(hour)
            history.append(Observation(hour.start, hour.end, lifecycle_value))
            direct.append(Observation(hour.start, hour.end, direct_value))
        if not history:
            raise ProviderError(
                NAME, f"no hour with a complete generation mix for zone {zone} ({eic})"
            )
        forecast, note = self._wind_solar(eic, zone, now, hours)
        detail = (
            f"A75 actual generation per production type for {eic}, {len(history)} h"
            + (f" ({dropped} h with an incomplete mix left out)" if dropped else "")
            + ("; cached" if cached else "")
            + f"; production-based, imports ignored; {FACTOR_SOURCE}"
            + f"; day-ahead wind/solar forecast: {len(forecast)} h"
        )
        source = Source(
            provider=NAME,
            signal=self.signal,
            method="lifecycle",
            kind="measured",
            fetched_at=now,
            detail=detail,
        )
        return EntsoeData(
            forecast=None,
            history=history,
            source=source,
            warnings=[IMPORTS_NOTE.format(zone=zone)],
            eic=eic,
            direct=direct,
            mix=kept,
            wind_solar_forecast=forecast,
            wind_solar_note=note,
        )

    def backfill(
        self, region: Region, start: datetime, end: datetime, now: datetime
    ) -> list[Observation]:
        """Hourly lifecycle intensity of actual generation (A75) for hours starting in
        [start, end): the history older than the week every fetch gets, for a model that looks
        further back. "No matching data" is an empty answer, not an error.

        Raises:
            ProviderError: No token, a rejected token, or the request failed.
        """
        now = as_utc(now)
        if self._token is None:
            raise ProviderError(NAME, f"no security token ({TOKEN_HINT})", permanent=True)
        eic = entsoe_eic(region.zone)
        if eic is None:
            raise ProviderError(
                NAME, f"zone {region.zone} is not an ENTSO-E area harchos knows", permanent=True
            )
        query = {"documentType": "A75", "processType": "A16", "in_Domain": eic}
        found: list[Observation] = []
        for index, (first, last) in enumerate(chunks(start, end, BACKFILL_MAX)):
            try:
                body, _ = self._get(
                    query, first, last, region.zone, now, suffix=f"#backfill{index}"
                )
            except AcknowledgementError as exc:
                if exc.code == NO_DATA_CODE:
                    continue
                raise self._acknowledged(exc) from None
            mix, _ = hourly_mix(parse_document(body))
            for hour in mix:
                value = intensity(hour.mw, LIFECYCLE)
                if value is not None and first <= hour.start < last:
                    found.append(Observation(hour.start, hour.end, value))
        return found

    def _wind_solar(
        self, eic: str, zone: str, now: datetime, hours: int
    ) -> tuple[list[GenerationHour], str]:
        """The day-ahead wind and solar generation forecast, hourly per psrType, from this hour."""
        start = floor_hour(now)
        ahead = min(max(hours, FORECAST_MIN_HOURS), FORECAST_MAX_HOURS)
        query = {"documentType": "A69", "processType": "A01", "in_Domain": eic}
        try:
            body, _ = self._get(query, start, start + ahead * HOUR, zone, now)
            series = parse_document(body)
        except ProviderError as exc:
            return [], str(exc)
        by_type: dict[str, list[Sample]] = {}
        for one in series:
            if one.generation:
                by_type.setdefault(one.psr_type, []).extend(one.samples)
        values: dict[datetime, dict[str, float]] = {}
        for psr, samples in by_type.items():
            for obs in hourly_means(samples):
                if obs.start >= start:
                    values.setdefault(obs.start, {})[psr] = obs.intensity
        hours_out = [GenerationHour(h, h + HOUR, values[h]) for h in sorted(values)]
        return hours_out, "" if hours_out else "the forecast had no values from this hour on"

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, MASK) if self._token else text

    def _reason(self, body: bytes) -> str | None:
        """The reason text of an acknowledgement sent with an HTTP error, made safe for a
        one-line message; None when the body is no acknowledgement (or was cut short)."""
        text = acknowledgement_reason(body)
        return None if text is None else self._shown(text)

    def _acknowledged(self, exc: AcknowledgementError) -> AcknowledgementError:
        """The acknowledgement `exc` with its reason made safe to show (`_shown`)."""
        return AcknowledgementError(exc.code, self._shown(exc.text))

    def _shown(self, text: str) -> str:
        """The platform's words made safe for a one-line message: the token masked before the
        cut (so that no part of it survives the cut), one line, at most REASON_MAX."""
        text = " ".join(self._scrub(text).split())
        return text if len(text) <= REASON_MAX else text[: REASON_MAX - 1] + "…"

    def _get(
        self,
        query: dict[str, str],
        start: datetime,
        end: datetime,
        zone: str,
        now: datetime,
        *,
        suffix: str = "",
    ) -> tuple[bytes, bool]:
        params = {
            **query,
            "periodStart": api_time(start),
            "periodEnd": api_time(end),
            "securityToken": self._token or "",
        }
        # The key leaves out the period (it follows from `now`'s slot, so a new slot replaces the
        # old row) and masks the token: it is stored in the state database.
        key = cache_key(PATH, {**query, "securityToken": MASK}) + suffix
        try:
            fetched = self.http.get_json(
                PATH, params, zone=zone, now=now, key=key, check=check_answer
            )
        except AcknowledgementError:
            raise
        except HttpStatusError as exc:
            if exc.status == 401:
                raise ProviderError(
                    NAME,
                    f"the security token was rejected (HTTP 401); {TOKEN_HINT}",
                    permanent=True,
                ) from None
            if exc.status == 400:
                reason = self._reason(exc.body)
                raise ProviderError(
                    NAME,
                    f"the Transparency Platform refused the query for {zone} ({query['in_Domain']}"
                    f", {query['documentType']}) (HTTP 400)" + (f": {reason}" if reason else ""),
                    permanent=True,
                ) from None
            raise ProviderError(
                NAME, self._scrub(str(exc).removeprefix(f"{NAME}: ")), permanent=exc.permanent
            ) from None
        except ProviderError as exc:
            raise ProviderError(
                NAME, self._scrub(str(exc).removeprefix(f"{NAME}: ")), permanent=exc.permanent
            ) from None
        if not isinstance(fetched.data, bytes):
            raise ProviderError(NAME, "unexpected answer: not a document")
        return fetched.data, fetched.cached

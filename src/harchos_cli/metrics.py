"""The catalogue of Prometheus metrics: the ones harchos exports and the vLLM ones it relies on.

This module is data only (no prometheus-client): the exporter (`harchos_cli.metrics_export`,
`harchos metrics serve`) and the router build their collectors from this table, the `monitoring`
blueprint's dashboards and alert rules are checked against it, and the serving test double takes
its `vllm:*` help texts from it.

Units follow DESIGN.md and appear in the names: gCO2eq/kWh for intensity, kWh for energy, kgCO2eq
for emissions, seconds for durations. Average and marginal intensities carry a `signal` label so
that a query never mixes them by accident.

Label meanings: `hub` is a hub name from the project's harchos.toml, `zone` an Electricity Maps
zone id, `provider` the carbon data provider (`embedded`, `electricitymaps`, ...), `job_id` a
harchos job id, `replica` a serving replica id (`<hub>/<index>`), `model_name` the name vLLM
serves (the first `--served-model-name`), `engine` vLLM's engine-core index (data parallelism; "0"
otherwise). No harchos metric has a `job` label: Prometheus gives every scraped series its own
`job` (the scrape job's name) and would rename a clashing one to `exported_job`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "HARCHOS_METRICS",
    "METRICS",
    "VLLM_METRICS",
    "Metric",
    "MetricType",
    "by_name",
    "series_names",
    "unknown_series",
]

MetricType = Literal["gauge", "counter", "histogram"]
Source = Literal["harchos", "vllm"]

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Metric:
    """One metric family: its name, Prometheus type, help text and label names."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]
    source: Source

    def series(self) -> tuple[str, ...]:
        """The sample names a query can select: a histogram's `_bucket`, `_sum` and `_count`."""
        if self.type == "histogram":
            return tuple(self.name + suffix for suffix in _HISTOGRAM_SUFFIXES)
        return (self.name,)


def _h(name: str, type_: MetricType, help_: str, *labels: str) -> Metric:
    return Metric(name, type_, help_, labels, "harchos")


def _v(name: str, type_: MetricType, help_: str, *labels: str) -> Metric:
    return Metric(name, type_, help_, ("model_name", "engine", *labels), "vllm")


HARCHOS_METRICS: tuple[Metric, ...] = (
    _h("harchos_build_info", "gauge", "Always 1; the harchos version as a label.", "version"),
    _h(
        "harchos_exporter_errors_total",
        "counter",
        "Times a part of the exporter's scrape failed and was left out of it (jobs, ledger, "
        "power, decisions, hubs, intensity).",
        "part",
    ),
    # Carbon signals, per hub.
    _h(
        "harchos_carbon_intensity_gco2_per_kwh",
        "gauge",
        "Latest grid carbon intensity at the hub, in gCO2eq/kWh.",
        "hub",
        "zone",
        "provider",
        "signal",
    ),
    _h(
        "harchos_carbon_forecast_gco2_per_kwh",
        "gauge",
        "Forecast carbon intensity at the hub for the hour starting `horizon_hours` from now.",
        "hub",
        "zone",
        "provider",
        "signal",
        "horizon_hours",
    ),
    _h(
        "harchos_carbon_data_age_seconds",
        "gauge",
        "Seconds since the hub's carbon intensity was fetched from its provider.",
        "hub",
        "provider",
    ),
    _h(
        "harchos_carbon_fallbacks_total",
        "counter",
        "Times a live provider failed and harchos fell back to the embedded model.",
        "hub",
        "provider",
        "reason",
    ),
    # Hubs.
    _h("harchos_hub_up", "gauge", "1 when the hub answers its health probes, else 0.", "hub"),
    _h("harchos_hub_gpus", "gauge", "GPUs on the hub, by state (free, busy).", "hub", "state"),
    # Jobs: energy, emissions, cost, lifecycle.
    _h(
        "harchos_job_state",
        "gauge",
        "1 for the job's current state, 0 for the others (waiting, syncing, running, paused, done, "
        "failed, cancelled).",
        "job_id",
        "hub",
        "state",
    ),
    _h("harchos_job_power_watts", "gauge", "Power the job draws now, in watts.", "job_id", "hub"),
    _h(
        "harchos_job_energy_kwh_total",
        "counter",
        "Energy the job used at the plug (measured, or estimated without a meter), in kWh.",
        "job_id",
        "hub",
    ),
    _h(
        "harchos_job_emissions_kgco2_total",
        "counter",
        "Emissions of the job's energy at the hub's carbon intensity of each hour it ran, "
        "PUE included, in kgCO2eq.",
        "job_id",
        "hub",
    ),
    _h(
        "harchos_job_emissions_budget_kgco2",
        "gauge",
        "The job's emissions budget, in kgCO2eq (for a job that has one).",
        "job_id",
    ),
    _h(
        "harchos_job_cost_total",
        "counter",
        "Money the job cost, in its hubs' currency.",
        "job_id",
        "currency",
    ),
    _h(
        "harchos_job_deferred_seconds_total",
        "counter",
        "Seconds the job waited for a greener window.",
        "job_id",
    ),
    _h(
        "harchos_job_checkpoints_total",
        "counter",
        "Checkpoints the job saved on harchos's request (pause, migrate, rescale).",
        "job_id",
        "hub",
    ),
    _h(
        "harchos_job_migrations_total",
        "counter",
        "Times the job moved from one hub to another.",
        "job_id",
        "from_hub",
        "to_hub",
    ),
    _h(
        "harchos_job_decisions_total",
        "counter",
        "Decisions harchos took about the job, by action (defer, start, pause, resume, migrate, "
        "rescale, cancel, ...).",
        "job_id",
        "action",
    ),
    # Serving: replicas and the carbon-aware router.
    _h(
        "harchos_replica_up",
        "gauge",
        "1 when the replica's /health answers 200, else 0 (starting, dead or drained).",
        "replica",
        "hub",
    ),
    _h(
        "harchos_router_decisions_total",
        "counter",
        "Requests the router sent to a replica, by the reason it chose that replica "
        "(greenest, latency, failover, only_ready).",
        "replica",
        "reason",
    ),
    _h(
        "harchos_router_requests_total",
        "counter",
        "Requests the router answered, by replica, its region and HTTP status code "
        '(replica and region "none" when no replica could take the request).',
        "replica",
        "region",
        "code",
    ),
    _h(
        "harchos_router_request_duration_seconds",
        "histogram",
        "Time from the router receiving a request to the last byte of its answer, in seconds.",
        "replica",
    ),
    _h(
        "harchos_router_replica_failures_total",
        "counter",
        "Times a replica failed a request the router sent it: connection failures and 503s "
        "(retried on the next replica) and answers cut off midway.",
        "replica",
        "region",
    ),
    _h(
        "harchos_router_estimated_emissions_kgco2_total",
        "counter",
        "Estimated emissions of the requests a replica answered: an assumed energy per request "
        "(kWh) times its region's carbon intensity when answered, in kgCO2eq. An estimate, not "
        "a measurement.",
        "replica",
        "region",
    ),
    _h(
        "harchos_router_replica_state",
        "gauge",
        "1 for the replica's current state in the router's table (starting, ready, dead, "
        "draining, stopped), 0 for the others.",
        "replica",
        "hub",
        "region",
        "state",
    ),
    _h(
        "harchos_router_carbon_intensity_gco2_per_kwh",
        "gauge",
        "Carbon intensity the router ranks a region's replicas by, in gCO2eq/kWh.",
        "region",
    ),
)

# The vLLM metrics that harchos's router and dashboards read (reference/launching.md); vLLM
# exports many more. Names, help texts and labels as vLLM's V1 engine registers them
# (`PrometheusStatLogger` in vllm/v1/metrics/loggers.py, vLLM 0.9 and later): every one is
# labelled `model_name` and `engine`; a counter's name gains `_total` in the exposition.
VLLM_METRICS: tuple[Metric, ...] = (
    _v("vllm:num_requests_running", "gauge", "Number of requests in model execution batches."),
    _v("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
    _v("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."),
    _v("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed."),
    _v("vllm:generation_tokens_total", "counter", "Number of generation tokens processed."),
    _v(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        "finished_reason",
    ),
    _v(
        "vllm:time_to_first_token_seconds",
        "histogram",
        "Histogram of time to first token in seconds.",
    ),
    _v(
        "vllm:e2e_request_latency_seconds",
        "histogram",
        "Histogram of e2e request latency in seconds.",
    ),
)

METRICS: tuple[Metric, ...] = HARCHOS_METRICS + VLLM_METRICS


def by_name(name: str) -> Metric:
    """The metric family called `name`.

    Raises:
        KeyError: no metric in the catalogue has that name.
    """
    for metric in METRICS:
        if metric.name == name:
            return metric
    raise KeyError(name)


def series_names(metrics: Iterable[Metric] = METRICS) -> frozenset[str]:
    """Every sample name a PromQL query may select from `metrics`."""
    return frozenset(name for metric in metrics for name in metric.series())


def unknown_series(names: Iterable[str], metrics: Iterable[Metric] = METRICS) -> Iterator[str]:
    """The names in `names` that no metric in `metrics` exports, in order, without repeats."""
    known = series_names(metrics)
    seen: set[str] = set()
    for name in names:
        if name not in known and name not in seen:
            seen.add(name)
            yield name

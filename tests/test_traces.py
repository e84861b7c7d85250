"""The trace reader: every supported format, resampling, gaps and malformed input."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from harchos_cli.carbon.traces import read_trace, read_wide_traces, zone_from_filename
from harchos_cli.errors import ExitCode, UsageError

EM_HEADER = (
    "Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
    "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,"
    "Data Source,Data Estimated,Data Estimation Method"
)


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_electricitymaps_export_uses_lca_column_and_zone_id(tmp_path: Path) -> None:
    rows = [
        f"2022-01-01 0{h}:00:00,Germany,Germany,DE,{100 + h},{200 + h},80,70,entsoe.eu,false,"
        for h in range(4)
    ]
    trace = read_trace(write(tmp_path / "export.csv", [EM_HEADER, *rows]))
    assert trace.zone == "DE"
    assert trace.start == datetime(2022, 1, 1, tzinfo=UTC)
    np.testing.assert_allclose(trace.values, [200, 201, 202, 203])
    assert trace.values.dtype == np.float64


def test_two_columns_with_offsets_are_converted_to_utc(tmp_path: Path) -> None:
    path = write(
        tmp_path / "series.csv",
        [
            "datetime,carbon_intensity",
            "2022-03-01T02:00:00+02:00,10",
            "2022-03-01T01:00:00Z,20",
            "2022-03-01T02:00:00+00:00,30",
        ],
    )
    trace = read_trace(path, zone="FR")
    assert trace.zone == "FR"
    assert trace.start == datetime(2022, 3, 1, 0, tzinfo=UTC)
    np.testing.assert_allclose(trace.values, [10, 20, 30])
    assert trace.end() == datetime(2022, 3, 1, 3, tzinfo=UTC)


def test_quarter_hours_are_averaged_and_zone_comes_from_file_name(tmp_path: Path) -> None:
    lines = ["Time,Carbon Intensity"]
    for hour in range(3):
        for quarter, value in enumerate((100.0, 200.0, 300.0, 400.0)):
            lines.append(f"2020-01-01 {hour:02d}:{15 * quarter:02d}:00,{value + hour}")
    trace = read_trace(write(tmp_path / "ger_ci.csv", lines))
    assert trace.zone == "DE"
    np.testing.assert_allclose(trace.values, [250, 251, 252])


def test_ensembleci_format(tmp_path: Path) -> None:
    lines = [",UTC time,carbon_intensity,coal,nat_gas,nuclear,oil,hydro,solar,wind,other"]
    lines += [f"{i},2019-01-01 0{i}:00:00+00:00,{300 + i},1,2,3,4,5,6,7,8" for i in range(5)]
    trace = read_trace(write(tmp_path / "CISO_lifecycle_emissions.csv", lines))
    assert trace.zone == "US-CAL-CISO"
    np.testing.assert_allclose(trace.values, [300, 301, 302, 303, 304])


def test_wide_file_needs_a_zone_and_lists_some(tmp_path: Path) -> None:
    lines = ["datetime_utc,AT,DE,FR"] + [
        f"2022-01-01 0{h}:00:00,{h},{10 + h},{20 + h}" for h in range(3)
    ]
    path = write(tmp_path / "wide.csv", lines)
    with pytest.raises(UsageError) as info:
        read_trace(path)
    assert info.value.hint is not None
    assert "DE" in info.value.hint
    trace = read_trace(path, zone="de")
    np.testing.assert_allclose(trace.values, [10, 11, 12])
    with pytest.raises(UsageError, match="not a column"):
        read_trace(path, zone="XX")
    every = {t.zone: t.values.tolist() for t in read_wide_traces(path)}
    assert every == {"AT": [0, 1, 2], "DE": [10, 11, 12], "FR": [20, 21, 22]}


def test_short_gap_is_linearly_interpolated(tmp_path: Path) -> None:
    lines = ["datetime,carbon_intensity", "2022-01-01 00:00,100", "2022-01-01 01:00,"]
    lines += ["2022-01-01 03:00,400"]  # 02:00 missing entirely, 01:00 empty
    trace = read_trace(write(tmp_path / "gap.csv", lines), zone="X")
    np.testing.assert_allclose(trace.values, [100, 200, 300, 400])
    assert trace.filled_hours == 2
    assert not np.isnan(trace.values).any()


def test_long_gap_is_an_error(tmp_path: Path) -> None:
    lines = ["datetime,carbon_intensity", "2022-01-01 00:00,100", "2022-01-10 00:00,100"]
    with pytest.raises(UsageError, match="missing"):
        read_trace(write(tmp_path / "hole.csv", lines), zone="X")


def test_index_at_floors_to_the_hour(tmp_path: Path) -> None:
    lines = ["datetime,carbon_intensity"] + [f"2022-01-01 0{h}:00,1" for h in range(5)]
    trace = read_trace(write(tmp_path / "t.csv", lines), zone="X")
    assert trace.index_at(datetime(2022, 1, 1, 2, 59, tzinfo=UTC)) == 2
    assert trace.index_at(datetime(2021, 12, 31, 23, 30, tzinfo=UTC)) == -1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("datetime,carbon_intensity\n", "no data"),
        ("a,b,c\n1,2,3\n", "unknown trace format"),
        ("datetime,carbon_intensity\n2022-01-01 00:00,abc\n", "non-numeric"),
        ("datetime,carbon_intensity\nyesterday,12\n", "bad timestamp"),
    ],
)
def test_malformed_files_are_usage_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match=message) as info:
        read_trace(path, zone="X")
    assert info.value.exit_code == ExitCode.USAGE


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        read_trace(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("name", "zone"),
    [
        ("ERCO_direct_emissions.csv", "US-TEX-ERCO"),
        ("PJM_lifecycle_emissions.csv", "US-MIDA-PJM"),
        ("gb_ci.csv", "GB"),
        ("fr_ci.csv", "FR"),
        ("DE_2022_hourly.csv", "DE"),
        ("US-CAL-CISO_2021_hourly.csv", "US-CAL-CISO"),
        ("my_trace.csv", None),
    ],
)
def test_zone_from_filename(name: str, zone: str | None) -> None:
    assert zone_from_filename(Path(name)) == zone


def test_real_trace_reads_a_year(traces: Path) -> None:
    trace = read_trace(traces / "eco4cast" / "DE_2022_hourly.csv")
    assert trace.zone == "DE"
    assert len(trace.values) == 8760
    assert 300 < trace.values.mean() < 600


@pytest.mark.parametrize(
    "lca_header",
    ["Carbon intensity gCO₂eq/kWh (Life cycle)", "Carbon Intensity gCO2eq/kWh (LCA)"],
)
def test_newer_electricity_maps_headers_use_lifecycle_and_zone(
    tmp_path: Path, lca_header: str
) -> None:
    path = tmp_path / "export.csv"
    rows = [
        f"2022-01-01 {h:02d}:00:00,France,France,FR,{20 + h},{40 + h},1,1,x,false,"
        for h in range(24)
    ]
    header = (
        "Datetime (UTC),Country,Zone name,Zone id,Carbon intensity gCO₂eq/kWh (direct),"
        f"{lca_header},Low carbon percentage,Renewable percentage,Data source,"
        "Data estimated,Data estimation method"
    )
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    trace = read_trace(path)
    assert trace.zone == "FR"
    assert trace.values[:3].tolist() == [40.0, 41.0, 42.0]


def test_export_with_only_direct_values_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "direct.csv"
    header = "Datetime (UTC),Zone id,Carbon intensity gCO₂eq/kWh (direct)"
    body = "\n".join(f"2022-01-01 {h:02d}:00:00,FR,{20 + h}" for h in range(24))
    path.write_text(f"{header}\n{body}\n", encoding="utf-8")
    with pytest.raises(UsageError, match="no lifecycle"):
        read_trace(path)

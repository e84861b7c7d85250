"""What ships: the wheel carries the package data, and the licence notices are right."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "src" / "harchos_cli" / "carbon" / "data"
ODBL = (
    "Contains data from Electricity Maps (https://www.electricitymaps.com), made available under "
    "the Open Database License (ODbL) 1.0"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("harchos_cli-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_carries_the_package_data(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert "harchos_cli/carbon/data/regions.json" in names
    assert "harchos_cli/carbon/data/embedded_model.json.gz" in names
    assert "harchos_cli/py.typed" in names
    assert not any(name.endswith(".csv") for name in names), "no raw traces may ship"


def test_wheel_carries_the_licence_and_attribution(wheel: zipfile.ZipFile) -> None:
    notice = next(n for n in wheel.namelist() if n.endswith("licenses/NOTICE"))
    assert ODBL in " ".join(wheel.read(notice).decode().split())


def test_embedded_data_is_compact() -> None:
    shipped = sum(p.stat().st_size for p in DATA.iterdir() if p.is_file())
    assert shipped < 2_000_000


def test_notice_and_model_docs_carry_the_attribution() -> None:
    for path in (REPO / "NOTICE", REPO / "docs" / "model.md"):
        assert ODBL in " ".join(path.read_text().split()), path

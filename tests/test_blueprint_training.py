"""The training blueprints render with defaults and pass their own test suites.

The generated tests run real training on the CPU (one process, and two over gloo) with this venv's
torch and accelerate, and interrupt it with real signals.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from harchos_cli import blueprints
from harchos_cli.errors import UsageError


def render_and_test(name: str, dest: Path) -> str:
    blueprints.create(name, dest, defaults=True)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=dest,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # Nothing skipped: the Hugging Face and TensorBoard tests need their packages installed here.
    assert "skipped" not in done.stdout
    return done.stdout


@pytest.mark.slow
def test_pytorch_training_passes_its_own_tests(tmp_path: Path) -> None:
    out = render_and_test("pytorch-training", tmp_path / "demo")
    assert "21 passed" in out


@pytest.mark.slow
def test_multi_region_training_passes_its_own_tests(tmp_path: Path) -> None:
    out = render_and_test("multi-region-training", tmp_path / "fleet")
    assert " passed" in out
    assert "failed" not in out


SHARED = REPO / "blueprints" / "_shared"


def shared_links() -> list[Path]:
    return [p for p in (REPO / "blueprints").rglob("*") if p.is_symlink()]


def test_files_two_blueprints_share_live_once_in_the_shared_folder() -> None:
    """A file two blueprints share is a relative link into blueprints/_shared, so a fix lands in
    one place; nothing else in a template is a link."""
    links = shared_links()
    for link in links:
        target = os.readlink(link)
        assert not os.path.isabs(target), link
        assert link.resolve().is_file(), f"{link} -> {target} is dangling"
        assert link.resolve().is_relative_to(SHARED.resolve()), link
    by_blueprint = {
        name: {str(p.relative_to(REPO / "blueprints" / name / "template")) for p in links
               if p.is_relative_to(REPO / "blueprints" / name)}
        for name in ("pytorch-training", "multi-region-training", "llm-inference",
                     "multi-hub-inference")
    }  # fmt: skip
    training = {"train.py.jinja", "tests/conftest.py", "{{ package_name }}/model.py",
                "{{ package_name }}/data.py", "requirements.txt", "requirements-hf.txt",
                "accelerate-configs/cpu.yaml", "accelerate-configs/multi-node.yaml"}  # fmt: skip
    assert training <= by_blueprint["pytorch-training"]
    assert by_blueprint["pytorch-training"] == by_blueprint["multi-region-training"]
    assert {"serve.py", "client.py"} <= by_blueprint["llm-inference"]
    assert by_blueprint["llm-inference"] == by_blueprint["multi-hub-inference"]
    # Every shared file is used by some blueprint (ruff.toml only lints them where they live).
    used = {link.resolve() for link in links}
    caches = {"__pycache__", ".ruff_cache", ".mypy_cache", ".pytest_cache"}
    files = {p.resolve() for p in SHARED.rglob("*")
             if p.is_file() and p.name != "ruff.toml" and not caches & set(p.parts)}  # fmt: skip
    assert files == used


def test_the_training_blueprints_share_one_train_py() -> None:
    single = REPO / "blueprints" / "pytorch-training" / "template" / "train.py.jinja"
    multi = REPO / "blueprints" / "multi-region-training" / "template" / "train.py.jinja"
    assert single.resolve() == multi.resolve() == SHARED / "training" / "train.py.jinja"


def test_harchos_new_renders_the_shared_files_as_files(tmp_path: Path) -> None:
    """The blueprint cache repository (what `harchos update` diffs) holds the shared files'
    contents, not links, and so does the project."""
    project = blueprints.create("multi-region-training", tmp_path / "fleet", defaults=True)
    repo, _ = blueprints.snapshot("multi-region-training")
    cached = Path(repo) / "template"
    assert not [p for p in Path(repo).rglob("*") if p.is_symlink()]
    for name in ("train.py.jinja", "accelerate-configs/gpu.yaml", "tests/conftest.py"):
        assert (cached / name).read_bytes() == (SHARED / "training" / name).read_bytes()
    rendered = project / "tests" / "conftest.py"
    assert not rendered.is_symlink()
    assert rendered.read_bytes() == (SHARED / "training" / "tests" / "conftest.py").read_bytes()
    assert (project / "fleet" / "model.py").read_bytes() == (
        SHARED / "training" / "{{ package_name }}" / "model.py"
    ).read_bytes()


def test_the_wheel_carries_the_shared_files_into_every_blueprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built by hatchling as `pip install .` builds it: links become files inside
    harchos_cli/_blueprints, and `harchos new` renders from them."""
    from hatchling.builders.wheel import WheelBuilder

    wheel = next(iter(WheelBuilder(str(REPO)).build(directory=str(tmp_path / "dist"))))
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith("harchos_cli/_blueprints/")]
        archive.extractall(tmp_path / "site", members)
        links = [info for info in archive.infolist() if info.external_attr >> 28 == 0o12]
    assert not links
    installed = tmp_path / "site" / "harchos_cli" / "_blueprints"
    for name in ("pytorch-training", "multi-region-training"):
        template = installed / name / "template"
        assert (template / "train.py.jinja").read_bytes() == (
            SHARED / "training" / "train.py.jinja"
        ).read_bytes()
    for name in ("llm-inference", "multi-hub-inference"):
        for file in ("serve.py", "client.py"):
            assert (installed / name / "template" / file).read_bytes() == (
                SHARED / "serving" / file
            ).read_bytes()
    monkeypatch.setenv("HARCHOS_BLUEPRINTS_DIR", str(installed))
    project = blueprints.create("pytorch-training", tmp_path / "demo", defaults=True)
    assert "def save_model(" in (project / "train.py").read_text()
    assert (project / "accelerate-configs" / "multi-gpu.yaml").is_file()


def test_multi_region_training_runs_on_the_gpus_of_a_hub(tmp_path: Path) -> None:
    project = blueprints.create("multi-region-training", tmp_path / "fleet", defaults=True)
    job = tomllib.loads((project / "harchos.toml").read_text())["job"]
    # Without [job] gpus, harchos would launch the training on a GPU hub's CPU.
    assert job["gpus"] >= 1
    assert job["gpus"] == job["max_processes"]
    batch = tomllib.loads((project / "train.toml").read_text())["train"]["batch_size"]
    assert all(batch % n == 0 for n in range(job["min_processes"], job["max_processes"] + 1))


def test_multi_region_training_refuses_more_processes_than_a_hub_has(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="must be at most gpus_per_hub"):
        blueprints.create(
            "multi-region-training", tmp_path / "fleet", defaults=True,
            data={"gpus_per_hub": "2", "max_processes": "4"},
        )  # fmt: skip
    assert not (tmp_path / "fleet").exists()

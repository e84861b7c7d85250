"""`harchos new` and `harchos update`: real copier renders, real git, real built-in blueprints."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from clirunner import harchos
from conftest import REPO

from harchos_cli import __version__, blueprints
from harchos_cli.errors import UsageError

SIX = {
    "pytorch-training",
    "multi-region-training",
    "llm-inference",
    "multi-hub-inference",
    "data-pipeline",
    "monitoring",
}
HEAVY = ("httpx", "copier", "numpy", "torch", "accelerate", "rich", "yaml", "jinja2")


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def commit_all(project: Path, message: str) -> None:
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", message)


def make_template(root: Path, files: dict[str, str]) -> Path:
    """A copier template from a dict of relative path -> content."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return root


SIMPLE = {
    "copier.yml": "_subdirectory: template\n_templates_suffix: .jinja\n"
    "name:\n  type: str\n  default: world\n",
    "template/{{ _copier_conf.answers_file }}.jinja": "{{ _copier_answers|to_nice_yaml }}",
    "template/hello.txt.jinja": "hello {{ name }}\n",
}


def test_help_imports_nothing_heavy() -> None:
    probe = (
        "import sys\n"
        "from harchos_cli.cli.app import run\n"
        "codes = [run(['new', '--help']), run(['update', '--help'])]\n"
        f"print(codes, [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[0, 0] []"


def test_list_json_names_the_six(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "new", "--list", "--json")
    assert result.code == 0
    listing = result.json()
    assert {item["name"] for item in listing} == SIX
    assert all(item["description"] for item in listing)
    text = harchos(capsys, "new", "--list")
    assert all(name in text.out for name in SIX)


def test_new_renders_a_builtin_with_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = harchos(capsys, "new", "pytorch-training", "demo", "--defaults", "--json")
    assert result.code == 0, result.err
    report = result.json()
    project = tmp_path / "demo"
    assert report["dest"] == str(project)
    assert report["version"] == __version__
    assert report["answers"]["package_name"] == "demo"
    assert report["next_steps"][0] == "cd demo"
    assert "python train.py" in report["next_steps"]
    assert (project / "demo" / "model.py").is_file()
    assert not list(project.rglob("*.jinja"))
    job = tomllib.loads((project / "harchos.toml").read_text())
    assert job["job"]["checkpoint_dir"] == "checkpoints"
    assert job["carbon"]["region"] == "eu-west"
    recorded = blueprints.answers(project)
    assert recorded["_commit"] == __version__
    # Nothing but the project appears beside it: the temporary render folder is gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "harchos-home"]


def test_new_prints_next_steps(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "new", "pytorch-training", "--defaults")
    assert result.code == 0, result.err
    assert (
        f"Created pytorch-training from the pytorch-training blueprint (version {__version__})"
        in (result.out)
    )
    steps = result.out.split("Next steps:", 1)[1].split()
    assert steps[:2] == ["cd", "pytorch-training"]
    assert "requirements.txt" in steps


def test_data_answers_questions_and_derives_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = harchos(
        capsys, "new", "pytorch-training", "p", "--defaults",
        "--data", "project_name=Carbon-Net", "--data", "region=DE", "--data", "gpus=2",
    )  # fmt: skip
    assert result.code == 0, result.err
    recorded = blueprints.answers(tmp_path / "p")
    assert recorded["package_name"] == "carbon_net"
    job = tomllib.loads((tmp_path / "p" / "harchos.toml").read_text())
    assert job["carbon"]["region"] == "DE"
    assert job["job"]["gpus"] == 2
    assert (tmp_path / "p" / "carbon_net" / "data.py").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "region"], "is not key=value"),
        (["--data", "gpus=-1"], "must be 0 or more"),
        (["--data", "package_name=Not-Valid"], "Python identifier"),
    ],
)
def test_bad_data_is_a_usage_error_and_leaves_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    result = harchos(capsys, "new", "pytorch-training", "p", "--defaults", *args)
    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "p").exists()


def test_refuses_a_non_empty_dest_unless_forced(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    project = tmp_path / "mine"
    project.mkdir()
    (project / "notes.txt").write_text("keep me\n")
    (project / "train.toml").write_text("old\n")
    result = harchos(capsys, "new", "pytorch-training", "mine", "--defaults")
    assert result.code == 2
    assert "is not empty" in result.err
    assert "--force" in result.err
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt", "train.toml"]

    forced = harchos(capsys, "new", "pytorch-training", "mine", "--defaults", "--force")
    assert forced.code == 0, forced.err
    assert (project / "notes.txt").read_text() == "keep me\n"
    assert "[train]" in (project / "train.toml").read_text()
    assert (project / "train.py").is_file()


def test_an_empty_existing_dest_is_fine(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = harchos(capsys, "new", "pytorch-training", "empty", "--defaults")
    assert result.code == 0, result.err
    assert (tmp_path / "empty" / "train.py").is_file()


def test_a_failed_render_leaves_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = make_template(
        tmp_path / "broken",
        {**SIMPLE, "template/zz_broken.txt.jinja": "{% if %}\n"},
    )
    result = harchos(capsys, "new", str(broken), "out/deeper/proj", "--defaults")
    assert result.code == 1
    assert "failed to render" in result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "out").exists()

    # Rendering into an existing folder with --force never touches the user's files on failure.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "hello.txt").write_text("my own\n")
    result = harchos(capsys, "new", str(broken), "mine", "--defaults", "--force")
    assert result.code == 1
    assert [p.name for p in mine.iterdir()] == ["hello.txt"]
    assert (mine / "hello.txt").read_text() == "my own\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "mine"]


def test_template_tasks_need_trust(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = make_template(
        tmp_path / "tasky",
        {
            **SIMPLE,
            "copier.yml": SIMPLE["copier.yml"] + '_tasks:\n  - "touch task-ran"\n',
        },
    )
    refused = harchos(capsys, "new", str(source), "p", "--defaults")
    assert refused.code == 2
    assert "tasks" in refused.err
    assert "--trust" in refused.err
    assert not (tmp_path / "p").exists()

    trusted = harchos(capsys, "new", str(source), "p", "--defaults", "--trust")
    assert trusted.code == 0, trusted.err
    assert (tmp_path / "p" / "task-ran").is_file()
    assert (tmp_path / "p" / "hello.txt").read_text() == "hello world\n"


def test_a_failing_task_leaves_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = make_template(
        tmp_path / "tasky",
        {**SIMPLE, "copier.yml": SIMPLE["copier.yml"] + '_tasks:\n  - "exit 3"\n'},
    )
    result = harchos(capsys, "new", str(source), "p", "--defaults", "--trust")
    assert result.code == 1
    assert "task failed" in result.err
    assert "exited with 3" in result.err
    assert not (tmp_path / "p").exists()


def test_unknown_blueprint_suggests_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "new", "pytorch-trainig", "--defaults")
    assert result.code == 2
    assert "unknown blueprint 'pytorch-trainig'" in result.err
    assert "did you mean pytorch-training" in result.err


def test_new_without_a_blueprint_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "new")
    assert result.code == 2
    assert "--list" in result.err


def test_questions_without_a_terminal_ask_for_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = harchos(capsys, "new", "pytorch-training", "p")
    assert result.code == 2
    assert "--defaults" in result.err
    assert not (tmp_path / "p").exists()


@pytest.fixture
def editable_builtins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the built-in blueprints that a test may change, like a new release."""
    root = tmp_path / "builtins"
    shutil.copytree(REPO / "blueprints" / "pytorch-training", root / "pytorch-training")
    monkeypatch.setenv("HARCHOS_BLUEPRINTS_DIR", str(root))
    return root / "pytorch-training"


def test_update_applies_a_new_version_and_keeps_user_edits(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, editable_builtins: Path
) -> None:
    assert harchos(capsys, "new", "pytorch-training", "demo", "--defaults").code == 0
    project = tmp_path / "demo"
    git(project, "init", "-q")
    commit_all(project, "start")
    config = project / "train.toml"
    config.write_text(config.read_text().replace("learning_rate = 0.01", "learning_rate = 0.003"))
    commit_all(project, "my learning rate")

    readme = editable_builtins / "template" / "README.md.jinja"
    readme.write_text(readme.read_text() + "\nA line from the new blueprint version.\n")

    result = harchos(capsys, "update", "demo", "--defaults", "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["from_version"] == __version__
    assert report["to_version"] == f"{__version__}.post1"
    assert report["conflicts"] == []
    assert "A line from the new blueprint version." in (project / "README.md").read_text()
    assert "learning_rate = 0.003" in config.read_text()
    assert blueprints.answers(project)["_commit"] == f"{__version__}.post1"

    commit_all(project, "update")
    again = harchos(capsys, "update", "demo", "--defaults")
    assert again.code == 0, again.err
    assert f"already on blueprint version {__version__}.post1" in again.out


def test_update_shows_conflicts_one_line_each(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, editable_builtins: Path
) -> None:
    assert harchos(capsys, "new", "pytorch-training", "demo", "--defaults").code == 0
    project = tmp_path / "demo"
    git(project, "init", "-q")
    commit_all(project, "start")
    config = project / "train.toml"
    config.write_text(config.read_text().replace("batch_size = 16", "batch_size = 64"))
    commit_all(project, "mine")
    template = editable_builtins / "template" / "train.toml.jinja"
    template.write_text(template.read_text().replace("batch_size = 16", "batch_size = 32"))

    result = harchos(capsys, "update", "demo", "--defaults")
    assert result.code == 0, result.err
    assert "1 file(s) with conflicts" in result.out
    assert "  conflict: train.toml" in result.out.splitlines()
    text = config.read_text()
    assert "<<<<<<< before updating" in text
    assert "batch_size = 64" in text
    assert "batch_size = 32" in text
    assert blueprints.conflicts(project) == ["train.toml"]


def test_update_needs_a_clean_git_project(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert harchos(capsys, "new", "pytorch-training", "demo", "--defaults").code == 0
    project = tmp_path / "demo"
    no_git = harchos(capsys, "update", "demo")
    assert no_git.code == 2
    assert "not a git repository" in no_git.err
    assert "git init" in no_git.err

    git(project, "init", "-q")
    commit_all(project, "start")
    (project / "train.toml").write_text("changed\n")
    dirty = harchos(capsys, "update", "demo")
    assert dirty.code == 2
    assert "uncommitted changes" in dirty.err
    assert (project / "train.toml").read_text() == "changed\n"


def test_update_outside_a_project_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "update")
    assert result.code == 2
    assert ".copier-answers.yml" in result.err


def test_update_from_a_tagged_git_template(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = make_template(tmp_path / "tpl", SIMPLE)
    git(source, "init", "-q")
    commit_all(source, "v1")
    git(source, "tag", "v1.0.0")
    assert harchos(capsys, "new", str(source), "p", "--defaults", "--data", "name=you").code == 0
    project = tmp_path / "p"
    assert (project / "hello.txt").read_text() == "hello you\n"
    (project / "mine.txt").write_text("mine\n")
    git(project, "init", "-q")
    commit_all(project, "start")

    (source / "template" / "bye.txt.jinja").write_text("bye {{ name }}\n")
    commit_all(source, "v2")
    git(source, "tag", "v2.0.0")
    result = harchos(capsys, "update", "p", "--defaults", "--json")
    assert result.code == 0, result.err
    assert (result.json()["from_version"], result.json()["to_version"]) == ("v1.0.0", "v2.0.0")
    assert (project / "bye.txt").read_text() == "bye you\n"
    assert (project / "mine.txt").read_text() == "mine\n"


def test_snapshot_reuses_a_version_and_tags_changes() -> None:
    first = blueprints.snapshot("pytorch-training")
    assert first[1] == __version__
    assert blueprints.snapshot("pytorch-training") == first
    with pytest.raises(UsageError, match=r"no version '9\.9\.9'"):
        blueprints.snapshot("pytorch-training", "9.9.9")


def test_parse_data() -> None:
    assert blueprints.parse_data(["a=1", "b = x=y", "c="]) == {"a": "1", "b": " x=y", "c": ""}
    with pytest.raises(UsageError):
        blueprints.parse_data(["=1"])


def test_blueprint_source_passes_paths_and_urls_through() -> None:
    assert Path(blueprints.blueprint_source("pytorch-training"), "copier.yml").is_file()
    assert blueprints.blueprint_source("gh:org/repo") == "gh:org/repo"
    assert blueprints.blueprint_source("./somewhere") == "./somewhere"

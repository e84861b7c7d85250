"""Blueprints: copier templates that `harchos new` renders and `harchos update` brings up to date.

A blueprint is a built-in name (shipped inside the package), a local path or a git URL; copier does
the rendering. Built-ins are not git repositories once installed, yet `copier update` needs a
versioned template, so every render of a built-in goes through a small git repository in the user
data directory (`blueprints/<name>`): the installed blueprint is committed there and tagged with the
harchos version (`0.1.0`, then `0.1.0.post1`, ... when the content changes under the same version).
The project's answers file points at that repository and tag, so a later `harchos update` can
render the old version, diff it against the project and apply the change to the new one.

copier is imported inside the functions that use it: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from harchos_cli import __version__, paths
from harchos_cli.errors import HarchosError, UsageError

BUILTIN: dict[str, str] = {
    "pytorch-training": "Train a PyTorch model with accelerate; pauses, resumes and moves on "
    "harchos's signal.",
    "multi-region-training": "The training contract across hubs in several regions, with "
    "migration, rescaling and checkpoint sync.",
    "llm-inference": "Serve one model with vllm serve, with an OpenAI-client example and a "
    "load test.",
    "multi-hub-inference": "Replicas of one model on hubs in several regions behind harchos's "
    "carbon-aware router.",
    "data-pipeline": "Carbon-aware batch ETL: chunks processed in green windows, resumable "
    "through a manifest.",
    "monitoring": "Prometheus scrape config, alert rules and Grafana dashboards for harchos and "
    "vLLM metrics.",
}

ANSWERS_FILE = ".copier-answers.yml"
NEXT_STEPS_MARKER = "<!-- harchos:next-steps -->"
_ROOT_ENV = "HARCHOS_BLUEPRINTS_DIR"
_MARKER = "harchos-blueprint"
_IGNORE = ("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git")
_URL_PREFIXES = ("gh:", "gl:", "git@", "git+", "http://", "https://", "ssh://", "file://")


def builtin_root() -> Path:
    """The folder holding the built-in blueprints.

    `HARCHOS_BLUEPRINTS_DIR` wins (for blueprint authors); then the copy installed inside the
    package (`harchos_cli/_blueprints`, put there by the wheel build); then, for an editable
    install, the repository's top-level `blueprints/` folder.
    """
    override = os.environ.get(_ROOT_ENV)
    if override:
        return Path(os.path.expanduser(override))
    installed = Path(str(resources.files("harchos_cli"))) / "_blueprints"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "blueprints"


def blueprint_source(name_or_path: str) -> str:
    """Where copier should read a blueprint from.

    Args:
        name_or_path: A built-in name, a local path or a git URL.

    Returns:
        The built-in's folder inside the installation, or `name_or_path` unchanged (copier
        resolves local paths and git URLs itself).

    Raises:
        HarchosError: A built-in's folder is missing from this installation.
    """
    if name_or_path not in BUILTIN:
        return name_or_path
    folder = builtin_root() / name_or_path
    if not (folder / "copier.yml").is_file():
        raise HarchosError(
            f"the built-in blueprint {name_or_path!r} is missing from this installation "
            f"(looked in {folder})",
            hint="reinstall harchos-cli",
        )
    return str(folder)


def list_blueprints() -> list[dict[str, str]]:
    """The built-in blueprints, each as `{"name", "description"}`."""
    return [{"name": name, "description": text} for name, text in BUILTIN.items()]


def parse_data(items: Sequence[str]) -> dict[str, str]:
    """Turn `--data key=value` items into answers.

    Raises:
        UsageError: An item has no `=` or an empty key.
    """
    data: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--data {item!r} is not key=value", hint="e.g. --data region=eu-west")
        data[key.strip()] = value
    return data


def default_dest(blueprint: str) -> Path:
    """The folder `harchos new BLUEPRINT` renders into when none is given."""
    name = blueprint.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return Path(name.removesuffix(".git") or "project")


def create(
    blueprint: str,
    dest: Path,
    *,
    data: dict[str, str] | None = None,
    defaults: bool = False,
    trust: bool = False,
    force: bool = False,
    vcs_ref: str | None = None,
) -> Path:
    """Render a blueprint into `dest`.

    The render goes to a temporary folder beside `dest` and is moved into place only once it
    succeeded, so a failure leaves no half-written project and never touches existing files.

    Args:
        blueprint: A built-in name, a local path or a git URL.
        dest: The project folder; it must be missing or empty unless `force`.
        data: Answers to the blueprint's questions.
        defaults: Use the default answer for every question not in `data` (never prompt).
        trust: Allow the blueprint's tasks and extensions to run code.
        force: Render into a non-empty `dest`, overwriting the files the blueprint makes.
        vcs_ref: A git tag or commit of the blueprint (for a built-in, a harchos version).

    Returns:
        The absolute path of the project.

    Raises:
        UsageError: `dest` is not empty, the blueprint is unknown, an answer is invalid, the
            blueprint needs `trust`, or questions need a terminal.
        HarchosError: The blueprint failed to render or one of its tasks failed.
    """
    dest = Path(os.path.expanduser(dest)).absolute()
    with _path_errors(dest):
        if dest.exists() and not dest.is_dir():
            raise UsageError(
                f"{dest} exists and is not a folder", hint="choose another destination"
            )
        if dest.is_dir() and any(dest.iterdir()) and not force:
            raise UsageError(
                f"{dest} is not empty",
                hint="choose a new folder, or pass --force to render into it "
                "(files the blueprint makes are overwritten)",
            )
    ref: str | None
    if blueprint in BUILTIN:
        src, ref = snapshot(blueprint, vcs_ref)
    else:
        _check_source(blueprint)
        src, ref = blueprint, vcs_ref

    import copier

    try:
        created = _make_parents(dest.parent)
    except OSError as exc:
        raise UsageError(
            f"cannot create {dest.parent}: {exc.strerror}", hint="choose another destination"
        ) from None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.harchos-new-", dir=dest.parent))
    except OSError as exc:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise UsageError(
            f"cannot create {dest}: {exc.strerror}", hint="choose another destination"
        ) from None
    # Rendered under the final name: templates see it as copier's `_folder_name`.
    rendered = tmp / dest.name
    try:
        with _copier_errors(src):
            copier.run_copy(
                src,
                rendered,
                data=dict(data or {}),
                vcs_ref=ref,
                defaults=defaults,
                unsafe=trust,
                overwrite=True,
                quiet=True,
                cleanup_on_error=False,
            )
        _move_into_place(rendered, dest)
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return dest


def update(
    dest: Path,
    *,
    defaults: bool = False,
    trust: bool = False,
    vcs_ref: str | None = None,
) -> Path:
    """Bring a project made from a blueprint up to the blueprint's newest version.

    copier renders the old version with the recorded answers, diffs it against the project and
    applies the difference to the new version, so the user's edits stay; where both changed the
    same lines the file gets inline conflict markers (see `conflicts`). The project must be a git
    repository with no uncommitted changes.

    Args:
        dest: The project folder (it holds `.copier-answers.yml`).
        defaults: Never prompt: keep the recorded answers and take defaults for new questions.
        trust: Allow the blueprint's tasks, migrations and extensions to run code.
        vcs_ref: Update to this tag or commit instead of the newest.

    Returns:
        The absolute path of the project.

    Raises:
        UsageError: Not a blueprint project, not a clean git repository, a downgrade, or the
            blueprint version it was made from is not on this machine.
        HarchosError: The blueprint failed to render or one of its tasks failed.
    """
    dest = Path(os.path.expanduser(dest)).absolute()
    recorded = answers(dest)
    _require_clean_git(dest)
    src_path = str(recorded.get("_src_path", ""))
    ref = vcs_ref
    cache = Path(src_path) if src_path and "://" not in src_path else None
    name = _cached_name(cache) if cache is not None else None
    if name is not None and cache is not None:
        _, ref = snapshot(name, vcs_ref, repo=cache)
    elif builtin := _recorded_builtin(dest):
        raise UsageError(
            f"the {builtin} blueprint version {recorded.get('_commit')} this project was made "
            f"from is not on this machine (expected at {src_path})",
            hint="run harchos update where the project was created, or copy that folder here",
        )

    import copier

    with _copier_errors(src_path):
        copier.run_update(
            dest,
            vcs_ref=ref,
            defaults=defaults,
            unsafe=trust,
            overwrite=True,
            skip_answered=True,
            conflict="inline",
            quiet=True,
        )
    return dest


def answers(dest: Path) -> dict[str, Any]:
    """The answers recorded in a project's `.copier-answers.yml`.

    Raises:
        UsageError: The file is missing or malformed.
    """
    import yaml

    path = Path(dest) / ANSWERS_FILE
    with _path_errors(path):
        found = path.is_file()
    if not found:
        raise UsageError(
            f"{Path(dest)} has no {ANSWERS_FILE}",
            hint="harchos update works in a folder made by harchos new",
        )
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{path} does not hold answers")
    return {str(key): value for key, value in loaded.items()}


def conflicts(dest: Path) -> list[str]:
    """Files in a project left with update conflicts, relative to `dest`.

    Inline conflicts are files git marks unmerged; `.rej` files are left by copier's "rej" mode.
    """
    dest = Path(dest)
    found: set[str] = set()
    listing = _git(dest, "ls-files", "--unmerged", check=False)
    for line in listing.splitlines():
        if "\t" in line:
            found.add(line.split("\t", 1)[1])
    for rej in dest.rglob("*.rej"):
        if ".git" not in rej.relative_to(dest).parts:
            found.add(str(rej.relative_to(dest)))
    return sorted(found)


def next_steps(dest: Path) -> list[str]:
    """The commands a new user runs first, from the project's README.

    A blueprint's README marks them with `<!-- harchos:next-steps -->` followed by a fenced block;
    without the marker the answer is to read the README.
    """
    readme = Path(dest) / "README.md"
    if not readme.is_file():
        return []
    text = readme.read_text(encoding="utf-8")
    _, marker, after = text.partition(NEXT_STEPS_MARKER)
    match = re.search(r"```[^\n]*\n(.*?)```", after, re.DOTALL) if marker else None
    if match is None:
        return ["less README.md"]
    return [line.rstrip() for line in match.group(1).splitlines() if line.strip()]


def snapshot(name: str, vcs_ref: str | None = None, *, repo: Path | None = None) -> tuple[str, str]:
    """Commit the installed built-in blueprint into its versioned cache repository.

    Args:
        name: A built-in blueprint name.
        vcs_ref: Return this existing tag instead of the installed version's.
        repo: The cache repository (default: `blueprints/<name>` in the user data directory).

    Returns:
        The repository path (copier's template source) and the tag of the installed version.

    Raises:
        UsageError: `vcs_ref` names no version in the cache.
    """
    source = Path(blueprint_source(name))
    repo = repo or paths.data_dir() / "blueprints" / name
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot write the blueprint cache {repo}: {exc.strerror}",
            hint="check that HARCHOS_HOME (or your user data folder) is writable",
        ) from None
    with _locked(repo.parent / f".{repo.name}.lock"):
        if not (repo / ".git").is_dir():
            _git(repo, "init", "-q")
        (repo / ".git" / _MARKER).write_text(name + "\n", encoding="utf-8")
        for entry in repo.iterdir():
            if entry.name != ".git":
                _remove(entry)
        # Files two built-ins share live once in `blueprints/_shared` and are relative links in
        # each template; copying follows the links, so the cache (what copier renders and
        # `harchos update` diffs) holds their contents. The wheel build resolves them the same way.
        shutil.copytree(source, repo, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*_IGNORE))
        _git(repo, "add", "-A")
        tree = _git(repo, "write-tree").strip()
        listing = _git(repo, "for-each-ref", "--format=%(refname:short) %(tree)", "refs/tags")
        tags = dict(line.split(" ", 1) for line in listing.strip().splitlines())
        if vcs_ref is not None:
            if vcs_ref not in tags:
                known = ", ".join(sorted(tags)) or "none"
                raise UsageError(
                    f"blueprint {name} has no version {vcs_ref!r} on this machine",
                    hint=f"known versions: {known}",
                )
            tag = vcs_ref
        else:
            same = [t for t, t_tree in tags.items() if t_tree == tree]
            tag = same[0] if same else _new_tag(set(tags))
            if not same:
                head = _git(repo, "rev-parse", "-q", "--verify", "HEAD", check=False).strip()
                parent = ["-p", head] if head else []
                commit = _git(repo, "commit-tree", tree, *parent, "-m", f"{name} {tag}").strip()
                _git(repo, "update-ref", "HEAD", commit)
                _git(repo, "tag", tag, commit)
        _git(repo, "reset", "-q", "--hard", tag)
    return str(repo), tag


def _new_tag(existing: set[str]) -> str:
    """The harchos version, or its next `.postN` when that tag already holds other content."""
    from packaging.version import Version

    if __version__ not in existing:
        return __version__
    base = Version(__version__)
    release = ".".join(str(part) for part in base.release)
    pre = "".join(str(part) for part in base.pre) if base.pre else ""
    dev = f".dev{base.dev}" if base.dev is not None else ""
    post = base.post or 0
    while True:
        post += 1
        tag = f"{release}{pre}.post{post}{dev}"
        if tag not in existing:
            return tag


def _cached_name(repo: Path) -> str | None:
    marker = repo / ".git" / _MARKER
    if not marker.is_file():
        return None
    name = marker.read_text(encoding="utf-8").strip()
    return name if name in BUILTIN else None


def _recorded_builtin(dest: Path) -> str | None:
    """The built-in named by the answers file's `# harchos blueprint: NAME` comment."""
    text = (dest / ANSWERS_FILE).read_text(encoding="utf-8")
    match = re.search(r"^# harchos blueprint: (\S+)", text, re.MULTILINE)
    return match.group(1) if match and match.group(1) in BUILTIN else None


def _check_source(blueprint: str) -> None:
    if blueprint.startswith(_URL_PREFIXES) or blueprint.endswith((".git", ".bundle")):
        return
    local = Path(os.path.expanduser(blueprint))
    with _path_errors(local):
        exists = local.exists()
    if exists:
        if not any((local / name).is_file() for name in ("copier.yml", "copier.yaml")):
            raise UsageError(
                f"{blueprint} is not a blueprint: it has no copier.yml",
                hint="give a built-in blueprint (harchos new --list), or a folder or git "
                "repository holding a copier.yml",
            )
        return
    close = difflib.get_close_matches(blueprint, list(BUILTIN), n=2)
    hint = f"did you mean {' or '.join(close)}?" if close else "harchos new --list shows them"
    raise UsageError(f"unknown blueprint {blueprint!r} (not a built-in, a path or a URL)", hint)


@contextlib.contextmanager
def _path_errors(path: Path) -> Iterator[None]:
    """A path the system refuses to look at (too long, not readable) is a usage error."""
    try:
        yield
    except OSError as exc:
        shown = str(path) if len(str(path)) <= 80 else f"{str(path)[:77]}..."
        raise UsageError(
            f"cannot use {shown}: {exc.strerror}", hint="choose another path"
        ) from None


def _require_clean_git(dest: Path) -> None:
    inside = _git(dest, "rev-parse", "--is-inside-work-tree", check=False).strip()
    if inside != "true":
        raise UsageError(
            f"{dest} is not a git repository; harchos update merges through git",
            hint="git init && git add -A && git commit -m 'Start from a harchos blueprint'",
        )
    if not _git(dest, "rev-parse", "-q", "--verify", "HEAD", check=False).strip():
        raise UsageError(
            f"{dest} has no commit yet",
            hint="git add -A && git commit -m 'Start from a harchos blueprint'",
        )
    if _git(dest, "status", "--porcelain", check=False).strip():
        raise UsageError(
            f"{dest} has uncommitted changes", hint="commit or stash them, then update again"
        )


def _make_parents(folder: Path) -> list[Path]:
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created: list[Path] = []
    try:
        for item in reversed(missing):
            item.mkdir()
            created.append(item)
    except OSError:
        for item in reversed(created):
            with contextlib.suppress(OSError):
                item.rmdir()
        raise
    return created


def _move_into_place(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.replace(tmp, dest)
        return
    files = [p for p in tmp.rglob("*") if not p.is_dir() or p.is_symlink()]
    clashes = [
        str(target)
        for p in files
        for target in [dest / p.relative_to(tmp)]
        if target.is_dir() and not target.is_symlink()
    ]
    clashes += [
        str(dest / parent)
        for p in files
        for parent in p.relative_to(tmp).parents
        if parent != Path() and (dest / parent).exists() and not (dest / parent).is_dir()
    ]
    if clashes:
        raise UsageError(
            f"the blueprint makes a file where {dest} has a folder, or the reverse: {clashes[0]}",
            hint="move it aside, or render into a new folder",
        )
    for p in files:
        target = dest / p.relative_to(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, target)
    shutil.rmtree(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Serialise harchos processes that write the same cache repository."""
    with lock_path.open("a") as handle:
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _git(cwd: Path, *args: str, check: bool = True) -> str:
    command = [
        "git",
        "-c", "user.name=harchos",
        "-c", "user.email=harchos@localhost",
        "-c", "commit.gpgsign=false",
        "-c", "tag.gpgsign=false",
        "-c", f"core.hooksPath={os.devnull}",
        *args,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise HarchosError(
            "git is not installed; blueprints are versioned with it",
            hint="install git (e.g. apt install git)",
        ) from None
    if check and done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise HarchosError(f"git {args[0]} failed in {cwd}: {detail}")
    return done.stdout


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _copier_errors(source: str) -> Iterator[None]:
    """Turn copier's exceptions into harchos's one-line errors."""
    import copier.errors as cerr
    import jinja2
    from plumbum import ProcessExecutionError

    try:
        yield
    except cerr.UnsafeTemplateError as exc:
        features = _first_line(exc).split(":", 1)[-1].strip().rstrip(".")
        raise UsageError(
            f"the blueprint uses {features}, which run code on this machine",
            hint="read the blueprint, then pass --trust to allow it",
        ) from None
    except cerr.TaskError as exc:
        raise HarchosError(
            f"a blueprint task failed: {exc.cmd!r} exited with {exc.returncode}",
            hint="the rendered files were not kept; fix the task or render with "
            "--data to change the answers",
        ) from None
    except cerr.InteractiveSessionError:
        raise UsageError(
            "the blueprint has questions but there is no terminal to ask them",
            hint="pass --defaults (and --data key=value for the answers you want)",
        ) from None
    except cerr.UserMessageError as exc:
        message = _first_line(exc)
        hint = None
        if "dirty" in message:
            hint = "commit or stash your changes, then update again"
        elif "Downgrades" in message:
            hint = "install the newer harchos that made this project"
        raise UsageError(message, hint=hint) from None
    except (cerr.ConfigFileError, cerr.InvalidTypeError) as exc:
        raise UsageError(f"invalid blueprint or answer: {_first_line(exc)}") from None
    except ValueError as exc:
        # copier raises ValueError for an answer that fails its question's type or validator.
        raise UsageError(f"invalid answer: {_first_line(exc)}") from None
    except jinja2.TemplateError as exc:
        raise HarchosError(f"the blueprint failed to render: {_first_line(exc)}") from None
    except ProcessExecutionError as exc:
        detail = (str(exc.stderr).strip().splitlines() or ["no output"])[-1]
        raise HarchosError(
            f"could not fetch the blueprint {source}: {detail}",
            hint="check the path or URL, and the network",
        ) from None

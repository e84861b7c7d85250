"""Developer tasks. `nox` runs them all: lint, typecheck, tests, docs."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


# The generated training projects' own tests need PyTorch. Pin the CPU build first: an unpinned
# torch (asked for by accelerate) would pull a multi-GB CUDA build.
TORCH = "torch==2.13.0"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (three workers on CI's two cores)."""
    session.install(TORCH)
    # The training blueprint's own tests: TensorBoard as a tracker, and a tiny transformers
    # model built from a config on a datasets dataset made on the fly (nothing is downloaded).
    session.install(
        TORCH, "accelerate>=1.0", "tensorboard>=2.14", "transformers>=4.46", "datasets>=3.0"
    )
    session.install("-e", ".[test]")
    # Three workers on two cores: much of the suite waits on real processes (sshd, Slurm,
    # supervisors, simulated clocks) rather than computing. worksteal: a worker left with one
    # slow test hands its queue to the others.
    session.run("pytest", "-n", "3", "--dist", "worksteal", "--durations=25", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """The property-based CLI test at length: hundreds of hostile examples per command
    (`HARCHOS_FUZZ_PROFILE=long`; the suite runs a few). Not in the default sessions."""
    session.install("-e", ".[test]")
    session.run(
        "pytest", "-n", "2", "tests/test_cli_fuzz.py", *session.posargs,
        env={"HARCHOS_FUZZ_PROFILE": "long"},
    )  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, tests, scripts and benchmarks."""
    session.install("-e", ".[test,lint]")
    session.run("mypy", "--strict")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the manual; warnings (broken links, missing pages) fail it."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")

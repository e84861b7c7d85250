"""The error types that map to harchos's documented exit codes.

Every expected failure raises a `HarchosError` subclass; the CLI turns it into one line on stderr
(message, then the hint) and the matching exit code. Anything else is a bug and shows a traceback
under `--debug`.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    WORK_FAILED = 1
    USAGE = 2
    NO_CARBON_DATA = 3
    HUB_FAILED = 4
    INTERRUPTED = 130


class HarchosError(Exception):
    """An expected failure with a one-line message and an optional hint."""

    exit_code: ExitCode = ExitCode.WORK_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(HarchosError):
    """Bad usage or input: unknown region, bad duration, malformed file."""

    exit_code = ExitCode.USAGE


class NoCarbonDataError(HarchosError):
    """No carbon data could be had for the request."""

    exit_code = ExitCode.NO_CARBON_DATA


class HubError(HarchosError):
    """A hub or a remote step failed."""

    exit_code = ExitCode.HUB_FAILED


class ProviderError(Exception):
    """A live provider failed (network, HTTP status, unexpected payload).

    Not a `HarchosError`: callers catch it and fall back to the embedded model, labelled.
    `permanent` marks failures that retrying will not fix (bad token, plan lacks the endpoint).
    """

    def __init__(self, provider: str, message: str, *, permanent: bool = False) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.permanent = permanent

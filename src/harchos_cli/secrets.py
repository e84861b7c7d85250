"""Which values are secrets, and masking them for display. Light: imports nothing heavy.

Masking is for what harchos prints (`run --dry-run`, `jobs show`); the workload itself always
gets the real values. A name is secret when it contains one of `SECRET_WORDS` (any case, so
`WANDB_API_KEY`, `HF_TOKEN`, `db_password`) or when the project names it in `[job] secret_env`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

MASK = "********"
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
# harchos's own provider credentials (beside those its settings mark secret): a workload on the
# local hub must not inherit them from harchos's environment.
_PROVIDER_CREDENTIALS = (
    "WATTTIME_USER",
    "WATTTIME_USERNAME",
    "WATTTIME_PASSWORD",
    "ENTSOE_TOKEN",
    "ENTSOE_API_TOKEN",
    "ENTSOE_SECURITY_TOKEN",
)


def is_secret(name: str, marked: Iterable[str] = ()) -> bool:
    """Whether the variable `name` holds a secret: its name looks secret, or it is `marked`."""
    upper = name.upper()
    return name in set(marked) or any(word in upper for word in SECRET_WORDS)


def mask_env(env: Mapping[str, str], marked: Iterable[str] = ()) -> dict[str, str]:
    """`env` with every secret value replaced by `MASK` (an empty value stays empty)."""
    names = set(marked)
    return {k: (MASK if v and is_secret(k, names) else v) for k, v in env.items()}


def provider_credentials() -> tuple[str, ...]:
    """The environment variables that hold harchos's own credentials (never a workload's)."""
    from harchos_cli.config import SETTINGS

    own = tuple(s.env for s in SETTINGS if s.secret)
    return tuple(dict.fromkeys((*own, *_PROVIDER_CREDENTIALS)))


def workload_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without harchos's own credentials: what a process on the local hub inherits."""
    drop = set(provider_credentials())
    return {k: v for k, v in environ.items() if k not in drop}

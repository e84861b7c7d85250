"""Check that every metric the dashboards and alert rules query is one harchos or vLLM exports.

    python check_metrics.py            # exit 1 and list the unknown names, if any

The names are read out of the PromQL with regular expressions: strings, label matchers, ranges,
grouping clauses and Grafana variables are removed, and what is left that looks like a name and
is not a function, a keyword or a number is a metric. The known names are harchos's catalogue,
`harchos_cli.metrics` (its own metrics and the vLLM ones it relies on).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
GRAFANA_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_OFFSET = re.compile(r"\boffset\s+-?\w+", re.IGNORECASE)
_NUMBERS = re.compile(r"(?<![\w:])(?:0x[0-9a-f]+|\d+(?:\.\d*)?(?:e[+-]?\d+)?|\.\d+)(?![\w:])", re.I)
_NAME = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")
_KEYWORDS = {
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "inf", "nan", "atan2",
}  # fmt: skip
_LABEL_VALUES = re.compile(
    r"^\s*label_values\((?:(?P<selector>.*),)?\s*[a-zA-Z_]\w*\s*\)\s*$", re.S
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = _STRINGS.sub(" ", expr)
    text = GRAFANA_VARIABLES.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBERS.sub(" ", text)
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}


def variable_names(query: str) -> set[str]:
    """The metric names a Grafana template-variable query uses.

    `label_values(metric{...}, label)` selects `metric`; `label_values(label)` selects none.
    """
    match = _LABEL_VALUES.match(query)
    if match is None:
        return metric_names(query)
    return metric_names(match.group("selector") or "")


def dashboard_queries(dashboard: Any) -> Iterator[tuple[str, str]]:
    """(where, query) for every panel target and template variable of a Grafana dashboard."""
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            yield f"panel {panel.get('title')!r}", target["expr"]
        for inner in panel.get("panels", []):  # a collapsed row holds its panels
            for target in inner.get("targets", []):
                yield f"panel {inner.get('title')!r}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            yield (
                f"variable {variable['name']!r}",
                (query["query"] if isinstance(query, dict) else query),
            )


def rule_queries(rules: Any) -> Iterator[tuple[str, str]]:
    """(where, expr) for every alerting and recording rule of a Prometheus rules file."""
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            yield f"rule {name}", rule["expr"]


def used_metrics(root: Path = ROOT) -> dict[str, set[str]]:
    """Metric name → where it is used, over the dashboards and rule files under `root`."""
    used: dict[str, set[str]] = {}
    for path in sorted((root / "grafana" / "dashboards").glob("*.json")):
        for where, query in dashboard_queries(json.loads(path.read_text(encoding="utf-8"))):
            names = (variable_names if where.startswith("variable") else metric_names)(query)
            for name in names:
                used.setdefault(name, set()).add(f"{path.name}: {where}")
    for path in sorted((root / "rules").glob("*.rules.yml")):
        for where, expr in rule_queries(yaml.safe_load(path.read_text(encoding="utf-8"))):
            for name in metric_names(expr):
                used.setdefault(name, set()).add(f"{path.name}: {where}")
    return used


def unknown_metrics(root: Path = ROOT) -> dict[str, set[str]]:
    """The used metric names that neither harchos nor vLLM exports, with where they are used."""
    from harchos_cli.metrics import unknown_series

    used = used_metrics(root)
    return {name: used[name] for name in unknown_series(sorted(used))}


def main() -> int:
    """Print the unknown metric names; exit 1 if there are any."""
    unknown = unknown_metrics()
    for name, places in unknown.items():
        print(f"{name}: not exported by harchos or vLLM (used in {', '.join(sorted(places))})")
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())

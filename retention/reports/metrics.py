"""Prometheus metrics of a run, in the node exporter's textfile format (`--metrics-file`).

The node exporter reads `*.prom` files from its textfile directory at every scrape, so the
file is written whole to a temporary name beside it and renamed over the old one: a scrape
never sees half a file.

`retention_rows_total` is a real counter: each run adds its rows to the values of the
previous file, so `increase(retention_rows_total[1d])` means rows changed per day. A
missing or unreadable previous file starts the counters again (Prometheus treats that as a
counter reset). `retention_last_success_timestamp_seconds` is carried over from the
previous file on a failed night, so "no success for 26 hours" alerts keep working.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RowCount", "render", "write_metrics"]

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class RowCount:
    policy: str
    database: str
    action: str  # "deleted", "anonymised" or "cascaded" (child rows deleted with their parent)
    rows: int


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _previous(path: Path) -> tuple[dict[tuple[str, str, str], float], float | None]:
    """Counter values and the last success time from the previous file, if it can be read."""
    counters: dict[tuple[str, str, str], float] = {}
    last_success: float | None = None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return counters, None
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = {k: _unescape(v) for k, v in _LABEL.findall(match["labels"] or "")}
        if match["name"] == "retention_rows_total":
            counters[(labels.get("policy", ""), labels.get("database", ""), labels.get("action", ""))] = value
        elif match["name"] == "retention_last_success_timestamp_seconds":
            last_success = value
    return counters, last_success


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(rows: Iterable[RowCount], *, exit_code: int, duration_s: float, now: float,
           previous: Path | None = None) -> str:
    """The textfile content for a run that ended `now` (Unix time) with `exit_code`."""
    counters, last_success = _previous(previous) if previous is not None else ({}, None)
    for r in rows:
        key = (r.policy, r.database, r.action)
        counters[key] = counters.get(key, 0.0) + r.rows
    if exit_code == 0:
        last_success = now
    lines = [
        "# HELP retention_rows_total Rows deleted or anonymised by retention runs, by policy and action.",
        "# TYPE retention_rows_total counter",
    ]
    for (policy, database, action), value in sorted(counters.items()):
        lines.append(f'retention_rows_total{{policy="{_escape(policy)}",database="{_escape(database)}",'
                     f'action="{_escape(action)}"}} {_number(value)}')
    lines += [
        "# HELP retention_exit_code Exit code of the last run (0 ok, 1 failed part-way, 2 invalid input, "
        "3 blocked by a guard, 4 lock held, 5 purge pending).",
        "# TYPE retention_exit_code gauge",
        f"retention_exit_code {exit_code}",
        "# HELP retention_run_duration_seconds Wall time of the last run.",
        "# TYPE retention_run_duration_seconds gauge",
        f"retention_run_duration_seconds {_number(round(duration_s, 3))}",
        "# HELP retention_last_run_timestamp_seconds When the last run ended (Unix time).",
        "# TYPE retention_last_run_timestamp_seconds gauge",
        f"retention_last_run_timestamp_seconds {_number(round(now, 3))}",
    ]
    if last_success is not None:
        lines += [
            "# HELP retention_last_success_timestamp_seconds When a run last ended with exit 0 (Unix time).",
            "# TYPE retention_last_success_timestamp_seconds gauge",
            f"retention_last_success_timestamp_seconds {_number(round(last_success, 3))}",
        ]
    return "\n".join(lines) + "\n"


def write_metrics(path: Path, rows: Iterable[RowCount], *, exit_code: int, duration_s: float,
                  now: float | None = None) -> None:
    """Write the textfile atomically: a temporary file in the same directory, then a rename."""
    text = render(rows, exit_code=exit_code, duration_s=duration_s, now=time.time() if now is None else now,
                  previous=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The node exporter only reads *.prom, so the temporary name must not end in it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

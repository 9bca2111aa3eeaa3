"""What the run's checks cost: one real run of the shop's policies, in this process, with the
checks timed (or switched off) from the outside; bench/run.py --checks runs it on fresh copies.

The checks (the issues that added them ask for each to cost at most 10 % of the run at 1M):

- **re-identification** (anonymising policies): its own time, measured around its statements
  by `runner._check_reidentification` (also in the run's JSON as `reidentification.duration_ms`);
- **policy ratchet**: reading the audit log's earlier real runs (`guards.read_history`, which
  also serves the clock and rate guards), the effective rules and their comparison
  (`guards.effective_rule`, `guards.rule_changes`): Python, timed by wrapping those functions.
  The run is given a copy of the audit log an earlier real run of the same backlog wrote, so
  there is a history to read and compare;
- **unreadable dates**: SQL terms inside the count and the batch statements (the readable-date
  test, the count of values beyond every date). They cannot be timed apart, so the run is
  repeated with them switched off (`--variant no_unreadable`: `Plan.readable` -> TRUE,
  `dialects.beyond_dates` -> FALSE) and the cost is the difference;
- **holds**: the policies' `exclude` conditions, holds following foreign keys (EXISTS per
  linked table) and the hold registry, also inside the statements: the run is repeated without
  them (`--variant no_holds`: `Plan.held_match` -> FALSE, `Plan.not_held` -> TRUE, no reasons,
  an empty registry); the registry's own reads are also timed. Without holds the legal-hold
  rows are due too (about 1 % more rows), which the difference includes.

Prints one JSON line: the run's in-process wall time (`execute_run`, without the interpreter's
start-up), the timers and each policy's counts.

    .venv/bin/python bench/checks_cost.py --policies shop.yaml --as-of 2026-11-24T03:00:00 --variant all
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pendulum
import sqlalchemy as sa

from retention.databases import dialects
from retention.engine import guards, holds, planning, runner
from retention.logs import configure_logging
from retention.policy import loader

VARIANTS = ("all", "no_unreadable", "no_holds")

# check -> the functions whose time is that check's own work (module, attribute)
TIMED: dict[str, list[tuple[Any, str]]] = {
    "reidentification": [(runner, "_check_reidentification")],
    "ratchet": [(guards, "read_history"), (guards, "effective_rule"), (guards, "rule_changes")],
    "holds_registry": [(holds, "active_keys"), (holds, "record_expiries")],
}


def _timed(timers: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timers[name] = timers.get(name, 0.0) + time.perf_counter() - t0

    return wrapper


def switch_off(variant: str) -> None:
    """Take one check out of the SQL the run sends (see the module docstring)."""
    if variant == "no_unreadable":
        planning.Plan.readable = lambda self, t: sa.true()  # type: ignore[method-assign]
        dialects.beyond_dates = lambda value, column: sa.false()  # type: ignore[assignment]
    elif variant == "no_holds":
        # *a, **kw: the counts ask for their `whole`-range form (MariaDB's key lists).
        planning.Plan.held_match = lambda self, t, *a, **kw: sa.false()  # type: ignore[method-assign]
        planning.Plan.not_held = lambda self, t, *a, **kw: sa.true()  # type: ignore[method-assign]
        planning.Plan.hold_reasons = lambda self, t, *a, **kw: {}  # type: ignore[method-assign]
        # PostgreSQL and MariaDB tally each hold condition apart (Plan._tally_flags, _tally_grouped): none.
        planning.Plan._hold_terms = lambda self, t, *a, **kw: []  # type: ignore[method-assign]
        holds.active_keys = lambda engine, today: {}  # type: ignore[assignment]
        holds.record_expiries = lambda *args, **kwargs: {}  # type: ignore[assignment]


def measure(policies: Path, as_of: str, variant: str) -> dict[str, Any]:
    timers: dict[str, float] = {}
    if variant == "all":
        for check, targets in TIMED.items():
            for module, attr in targets:
                setattr(module, attr, _timed(timers, check, getattr(module, attr)))
    else:
        switch_off(variant)
    model = loader.load(policies)
    moment = pendulum.parse(as_of, tz=model.timezone)
    key = os.environ.get(model.audit.key_env or "", "").encode() or None
    audit = Path(model.audit.path)
    log_bytes = audit.stat().st_size if audit.exists() else 0
    t0 = time.perf_counter()
    # --force as the bench's CLI runs: a first run's backlog is what is measured.
    result = runner.execute_run(model, as_of=moment, force=True, audit_key=key)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    return {
        "variant": variant, "seconds": seconds, "exit_code": result.exit_code, "timers": timers,
        "history_log_bytes": log_bytes,
        "policies": {o.name: {"seconds": o.duration_s, "applied": o.applied, "due": o.due, "held": o.held,
                              "unreadable": o.unreadable, "status": o.status,
                              "reid_ms": (o.reidentification or {}).get("duration_ms")}
                     for o in result.policies},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", type=Path, required=True)
    ap.add_argument("--as-of", required=True)
    ap.add_argument("--variant", choices=VARIANTS, default="all")
    args = ap.parse_args(argv)
    configure_logging("json", quiet=True)
    print(json.dumps(measure(args.policies, args.as_of, args.variant)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

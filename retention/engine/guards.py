"""Guards against mistakes that look like ordinary nights: a policy edited to delete more, a clock
set back, a night that would change far more than usual.

Everything here reads what earlier *real* runs wrote to the audit log (dry runs prove nothing
about what was enforced) and compares it with tonight's file and counts. Pure decisions: the
runner asks, and turns a problem into a ``blocked`` policy (exit 3) or an exit 2.

- **Ratchet**: each real run's ``run.start`` records every policy's effective rule. A policy
  whose rule now deletes more (shorter term, fewer holds, wider ``where``, another column,
  table or key, delete instead of anonymise, a higher ``max_fraction``) is blocked until a run
  with ``--accept-policy-change NAME`` records the change as accepted.
- **Clock**: a real run earlier than the last real run would have deleted rows whose term had
  not passed on the corrected clock.
- **Everything due / rate**: a night that would change the whole table, or far more than the
  median of the policy's recent real runs, waits for ``--force``.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pendulum

from retention.audit import log as audit
from retention.errors import InvalidInput
from retention.policy.dates import Cutoff, PeriodError, cutoff, parse_period
from retention.policy.model import Policy

# The rate guard: blocked when a night would change more than RATE_FACTOR times the median of
# the policy's last RATE_WINDOW real runs, and more than RATE_FLOOR rows. A steady shop varies
# by a factor of 2-3 from night to night; a 10x night is an edit, an import or a clock.
RATE_FACTOR = 10
RATE_FLOOR = 100
RATE_WINDOW = 10


class ClockSetBack(InvalidInput):
    """A real run whose moment is earlier than the last real run's (exit 2, nothing touched)."""


# -- what earlier real runs recorded ---------------------------------------------------------------
@dataclass
class Baseline:
    """A policy's rule as the last real run that was not blocked by the ratchet enforced it."""

    rule: dict[str, Any]
    run: str
    as_of: str


@dataclass
class History:
    last_as_of: pendulum.DateTime | None = None
    last_run: str | None = None
    rules: dict[str, Baseline] = field(default_factory=dict)
    # Rows each policy changed in its last real runs that ended ok, oldest first.
    changed: dict[str, deque[int]] = field(default_factory=dict)


def read_history(path: Path) -> History:
    """Stream the audit log once for the real runs' ``run.start`` and ``policy.end`` entries.

    Both carry ``dry_run``, in canonical JSON always spelt ``"dry_run":false`` for a real run,
    so every other line is skipped unparsed (the log grows by thousands of batch lines a night).
    """
    history = History()
    if not path.exists():
        return history
    for entry in audit._scan(path, b'"dry_run":false'):
        if entry.get("dry_run") is not False:
            continue
        event = entry.get("event")
        if event == "run.start":
            try:
                moment = pendulum.parse(str(entry.get("as_of")))
            except Exception:
                continue
            if isinstance(moment, pendulum.DateTime) and (history.last_as_of is None or moment >= history.last_as_of):
                history.last_as_of, history.last_run = moment, str(entry.get("run"))
            for p in entry.get("policies") or []:
                if isinstance(p, dict) and p.get("ratchet") != "blocked" and p.get("name"):
                    history.rules[p["name"]] = Baseline(p, str(entry.get("run")), str(entry.get("as_of")))
        elif event == "policy.end" and entry.get("status") == "ok" and entry.get("policy"):
            name = str(entry["policy"])
            n = entry.get("changed")
            if not isinstance(n, int):
                # Logs written before `changed` existed: applied (+ anonymised instead of deleted).
                n = int(entry.get("applied") or 0) + int(entry.get("anonymised") or 0)
            history.changed.setdefault(name, deque(maxlen=RATE_WINDOW)).append(n)
    return history


# -- the clock -------------------------------------------------------------------------------------
def check_clock(moment: pendulum.DateTime, history: History) -> None:
    if history.last_as_of is not None and moment < history.last_as_of:
        raise ClockSetBack(
            f"this run's moment {moment.isoformat()} is earlier than the last real run's "
            f"{history.last_as_of.isoformat()} (run {history.last_run}): a clock set back would delete rows "
            "the corrected clock keeps; fix the clock or --as-of (a --dry-run may look at any moment)"
        )


# -- the ratchet -----------------------------------------------------------------------------------
def _json(value: Any) -> Any:
    """As the audit log stores it, so that a rule read back compares equal to tonight's."""
    return json.loads(json.dumps(value, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))


def effective_rule(policy: Policy, database: str) -> dict[str, Any]:
    """Everything that decides which rows a policy changes and how, plus a digest of it."""
    rule = _json({
        "database": database, "table": policy.table, "key": policy.key, "after": policy.after,
        "retain": str(policy.retain), "align": policy.align,
        "minimum": str(policy.minimum) if policy.minimum else None,
        "exclude": dict(policy.exclude), "where": dict(policy.where), "action": policy.action,
        "on_referenced": policy.on_referenced, "cascade": list(policy.cascade),
        # As text: the audit log holds integers only (CONTRACT.md section 4).
        "max_fraction": repr(float(policy.max_fraction)),
        "minimum_align": policy.minimum_align, "after_timezone": policy.after_timezone, "holds": policy.holds,
    })
    rule["rule_sha256"] = hashlib.sha256(json.dumps(rule, sort_keys=True).encode()).hexdigest()
    return rule


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    why: str

    def __str__(self) -> str:
        return f"{self.key} {_show(self.old)} -> {_show(self.new)} ({self.why})"

    def as_event(self) -> dict[str, Any]:
        return {"key": self.key, "old": self.old, "new": self.new, "why": self.why}


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in value.items()) + "}" if value else "{}"
    return json.dumps(value) if not isinstance(value, str) else value


def _covers_more(new: Cutoff, old: Cutoff) -> bool:
    """Whether some event moment is due under ``new`` and not under ``old``."""
    return not old.contains(new.local) or any(not (old.contains(lo) and old.contains(hi)) for lo, hi in new.windows)


def rule_changes(old: dict[str, Any], new: dict[str, Any], new_cutoff: Cutoff,
                 moment: pendulum.DateTime, timezone: str) -> list[Change]:
    """The changes from ``old`` to ``new`` that make the policy change rows it did not before.

    A key missing from ``old`` (a log written before it was recorded) is not compared.
    Lengthening a term, adding a hold, narrowing ``where`` or lowering ``max_fraction`` pass.
    """
    out: list[Change] = []
    if old.get("rule_sha256") == new["rule_sha256"]:
        return out
    if "retain" in old:
        try:
            old_retain = parse_period(old["retain"])
            old_cut = cutoff(moment, old_retain, old.get("align", "none"), timezone)  # type: ignore[arg-type]
            new_retain = parse_period(new["retain"])
        except (PeriodError, ValueError, OverflowError):
            old_cut = None
        if old_cut is not None:
            same_align = old.get("align", "none") == new["align"]
            if _covers_more(new_cutoff, old_cut) or (same_align and not new_retain.at_least(old_retain)):
                why = f"shorter term: events up to {new_cutoff.local:%Y-%m-%d %H:%M} are due, " \
                      f"were up to {old_cut.local:%Y-%m-%d %H:%M}"
                if old["retain"] != new["retain"]:
                    out.append(Change("retain", old["retain"], new["retain"], why))
                if not same_align:
                    out.append(Change("align", old.get("align", "none"), new["align"], why))
    if old.get("minimum") and "minimum" in old:
        try:
            shorter = new.get("minimum") is None or not parse_period(new["minimum"]).at_least(
                parse_period(old["minimum"]))
        except PeriodError:
            shorter = True
        if shorter:
            out.append(Change("minimum", old["minimum"], new.get("minimum"), "lower statutory minimum"))
    if "exclude" in old:
        gone = {k: v for k, v in old["exclude"].items() if k not in new["exclude"] or new["exclude"][k] != v}
        if gone:
            out.append(Change("exclude", old["exclude"], new["exclude"], "fewer rows held"))
    if "where" in old:
        gone = {k: v for k, v in old["where"].items() if k not in new["where"] or new["where"][k] != v}
        if gone:
            out.append(Change("where", old["where"], new["where"], "more rows selected"))
    for key in ("table", "key", "after", "after_timezone"):
        if key in old and old[key] != new[key]:
            out.append(Change(key, old[key], new[key], "other rows selected"))
    if old.get("action") == "anonymise" and new["action"] == "delete":
        out.append(Change("action", "anonymise", "delete", "rows deleted that were anonymised"))
    if old.get("on_referenced") == "defer" and new["on_referenced"] == "anonymise":
        out.append(Change("on_referenced", "defer", "anonymise", "referenced rows anonymised that were kept"))
    if "cascade" in old and set(new["cascade"]) - set(old["cascade"]):
        out.append(Change("cascade", old["cascade"], new["cascade"], "rows of more tables deleted"))
    if old.get("holds", "linked") == "linked" and new.get("holds") == "own":
        out.append(Change("holds", "linked", "own", "rows no longer held by the holds of linked policies"))
    if old.get("minimum") and old.get("minimum_align", "none") != new.get("minimum_align", "none") \
            and old.get("minimum") == new.get("minimum"):
        out.append(Change("minimum_align", old.get("minimum_align", "none"), new.get("minimum_align"),
                          "the statutory floor counted from another moment"))
    old_max, new_max = _fraction(old.get("max_fraction")), _fraction(new.get("max_fraction"))
    if old_max is not None and new_max is not None and new_max > old_max:
        out.append(Change("max_fraction", old["max_fraction"], new["max_fraction"], "a weaker safety guard"))
    return out


def _fraction(value: Any) -> float | None:
    """``max_fraction`` as recorded: text since the log holds integers only, a number in older logs."""
    try:
        return float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        return None


def ratchet_message(name: str, changes: list[Change], baseline: Baseline) -> str:
    what = "; ".join(map(str, changes))
    return (f"the policy changed since the last real run {baseline.run} (as of {baseline.as_of}): {what}; "
            f"nothing done (check it with --dry-run, then run once with --accept-policy-change {name})")


# -- whole table, rate -----------------------------------------------------------------------------
def everything_due(would: int, total: int) -> str | None:
    if total and would >= total:
        return (f"would change all {total} rows of the table; nothing done (an emptied table is more often a "
                "mistake than a policy: check the preview, then approve a plan or use --force)")
    return None


def rate_problem(name: str, would: int, history: History) -> str | None:
    if would <= RATE_FLOOR:
        return None
    past = history.changed.get(name)
    if not past:
        return (f"would change {would} rows on its first real run (more than {RATE_FLOOR} with no earlier run to "
                "compare with); nothing done: check the preview, then approve a plan for the backlog "
                "(retention plan / approve / run --plan) or use --force")
    median = statistics.median(past)
    if would > RATE_FACTOR * median:
        return (f"would change {would} rows, more than {RATE_FACTOR}x the median {median:g} of its last "
                f"{len(past)} real run(s); nothing done (check the preview, then approve a plan "
                "(retention plan / approve / run --plan) or use --force)")
    return None

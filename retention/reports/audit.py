"""`retention audit show`: the audit log for a person (a DPO, an inspector), not a parser.

One pass over the log builds a summary per run; the renderers only format it. Times of
runs are shown in UTC, as the log records them; cut-offs as recorded (policy time zone).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

from retention.audit.log import VerifyResult

PURGE_FIELDS = ("database", "tables", "level", "result", "duration_s", "detail")


@dataclass
class PolicyRow:
    policy: str
    database: str | None = None
    table: str | None = None
    action: str | None = None
    cutoff: str | None = None
    basis: str | None = None
    due: int | None = None
    held: int | None = None
    deferred: int | None = None
    applied: int | None = None
    anonymised: int | None = None
    cascaded: dict[str, int] = field(default_factory=dict)
    # "not reached" until policy.start, "incomplete" until policy.end, then what it says
    status: str = "not reached"
    deferred_reasons: dict[str, int] = field(default_factory=dict)
    retain: str | None = None
    align: str | None = None
    duration_s: float | None = None
    # policy.end's re-identification check (anonymising policies): k, below_k, linkable, rows, ...
    reidentification: dict[str, Any] | None = None

    def split(self) -> tuple[int, int]:
        """(rows deleted, rows anonymised): `applied` counts both, `anonymised` is its share."""
        applied = self.applied or 0
        if self.action == "anonymise":
            return 0, applied
        anonymised = min(self.anonymised or 0, applied)
        return applied - anonymised, anonymised


@dataclass
class RunSummary:
    run: str
    started: str | None = None
    ended: str | None = None
    user: str | None = None
    host: str | None = None
    version: str | None = None
    as_of: str | None = None
    dry_run: bool = False
    status: str = "running"
    exit_code: int | None = None
    policies: list[PolicyRow] = field(default_factory=list)
    purges: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float | None = None
    policy_file: str | None = None
    policy_file_sha256: str | None = None
    interrupted_by: str | None = None
    # batch.recovered entries written by later runs about this run's batches
    recovered: list[dict[str, Any]] = field(default_factory=list)

    def row(self, name: str) -> PolicyRow:
        for row in self.policies:
            if row.policy == name:
                return row
        row = PolicyRow(policy=name)
        self.policies.append(row)
        return row


def parse_ts(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _day(s: RunSummary) -> date | None:
    """The UTC date a run started: what --since and --until and the chart count by."""
    moment = parse_ts(s.started)
    return moment.astimezone(UTC).date() if moment and moment.tzinfo else (moment.date() if moment else None)


def _count_into(row: PolicyRow, count: Any) -> None:
    row.applied = (row.applied or 0) + (count if isinstance(count, int) else 0)


def summarise(
    entries: Iterable[dict[str, Any]],
    since: date | None = None,
    until: date | None = None,
    policies: Sequence[str] = (),
    run: str | None = None,
) -> list[RunSummary]:
    """Runs in log order. ``since``/``until`` (inclusive) are UTC dates of the run's start;
    ``run`` matches an id or its prefix; ``policies`` keeps the runs with those policies
    and only their rows."""
    runs: dict[str, RunSummary] = {}
    # (run, batch) -> (policy, count) of intents not (yet) committed: only those can be recovered
    intents: dict[tuple[str, Any], tuple[str, Any]] = {}
    interrupted: dict[str, str] = {}
    for e in entries:
        rid, event = str(e.get("run", "")), e.get("event")
        if event == "run.interrupted":
            interrupted[str(e.get("interrupted_run"))] = rid
        if event == "batch.recovered":
            origin = (str(e.get("of_run")), e.get("batch"))
            target = runs.get(origin[0])
            if target is not None:
                target.recovered.append(e)
                known = intents.get(origin)
                if e.get("result") == "applied" and known:
                    _count_into(target.row(known[0]), known[1])
            continue
        summary = runs.get(rid)
        if summary is None:
            summary = runs[rid] = RunSummary(run=rid, started=e.get("ts"))
        if event == "run.start":
            summary.started = e.get("ts")
            for name in ("user", "host", "version", "as_of", "policy_file", "policy_file_sha256"):
                setattr(summary, name, e.get(name))
            summary.dry_run = bool(e.get("dry_run"))
            for p in e.get("policies") or []:
                row = summary.row(str(p.get("name")))
                for name in ("database", "table", "action", "cutoff", "basis", "retain", "align"):
                    setattr(row, name, p.get(name))
        elif event == "policy.start":
            row = summary.row(str(e.get("policy")))
            for name in ("database", "table", "action", "cutoff", "basis"):
                if e.get(name) is not None:
                    setattr(row, name, e.get(name))
            row.status = "incomplete"
        elif event == "batch" and e.get("state") == "intent":
            intents[(rid, e.get("batch"))] = (str(e.get("policy")), e.get("count"))
        elif event == "batch.committed":
            intents.pop((rid, e.get("batch")), None)
            row = summary.row(str(e.get("policy")))
            if row.status in ("incomplete", "not reached"):  # policy.end has the final word
                _count_into(row, e.get("count"))
        elif event == "policy.end":
            row = summary.row(str(e.get("policy")))
            for name in ("due", "held", "deferred", "applied", "anonymised", "status", "duration_s"):
                setattr(row, name, e.get(name))
            row.cascaded = dict(e.get("cascaded") or {})
            row.deferred_reasons = dict(e.get("deferred_reasons") or {})
            reid = e.get("reidentification")
            row.reidentification = dict(reid) if isinstance(reid, dict) else None
        elif event == "purge":
            summary.purges.append({k: e.get(k) for k in PURGE_FIELDS})
        elif event == "run.end":
            summary.ended, summary.status = e.get("ts"), str(e.get("status"))
            summary.exit_code, summary.duration_s = e.get("exit_code"), e.get("duration_s")
    for rid, finder in interrupted.items():
        if rid in runs and runs[rid].ended is None:
            runs[rid].status, runs[rid].interrupted_by = "interrupted", finder
    return [s for s in runs.values() if _keep(s, since, until, policies, run)]


def _keep(s: RunSummary, since: date | None, until: date | None, policies: Sequence[str], run: str | None) -> bool:
    if run and not s.run.startswith(run):
        return False
    day = _day(s)
    if (since or until) and day is None:
        return False
    if (since and day and day < since) or (until and day and day > until):
        return False
    if policies:
        s.policies = [row for row in s.policies if row.policy in policies]
        return bool(s.policies)
    return True


# -- shared formatting --------------------------------------------------------------------


def fmt_ts(value: str | None) -> str:
    """A run's moment as ``2026-11-24 01:00 UTC``: runs on many hosts, one clock."""
    moment = parse_ts(value)
    if moment is None:
        return value or "—"
    if moment.tzinfo is None:
        return f"{moment:%Y-%m-%d %H:%M}"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def fmt_cutoff(value: str | None) -> str:
    """A cut-off in the policy's own time zone, as recorded; the date alone at midnight."""
    moment = parse_ts(value)
    if moment is None:
        return value or "—"
    return f"{moment:%Y-%m-%d}" if moment.time() == time(0) else f"{moment:%Y-%m-%d %H:%M}"


def fmt_n(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def run_label(s: RunSummary) -> str:
    if s.status == "interrupted":
        found = f"; found by run {s.interrupted_by}" if s.interrupted_by else ""
        return f"INTERRUPTED (never ended{found})"
    if s.status == "running":
        return "NO END RECORDED (still running, or stopped and not yet found)"
    return s.status.upper() + (f" (exit {s.exit_code})" if s.exit_code is not None else "")


def _notes(r: PolicyRow) -> list[str]:
    notes = [f"basis: {r.basis}"] if r.basis else []
    if r.cascaded:
        notes.append("child rows deleted: " + ", ".join(f"{t} {n:,}" for t, n in r.cascaded.items()))
    if r.deferred_reasons:
        reasons = ", ".join(f"{t} {n:,}" for t, n in r.deferred_reasons.items())
        notes.append(f"deferred, still referenced from: {reasons}")
    if r.anonymised and r.action != "anonymise":
        notes.append(f"anonymised instead of deleted: {r.anonymised:,}")
    if r.reidentification is not None:
        notes.append(reidentification_note(r.reidentification, blocked=r.status == "blocked"))
    return notes


def reidentification_note(reid: dict[str, Any], blocked: bool = False) -> str:
    """What the check proved about the anonymised rows, in numbers an inspector can re-compute."""
    rows = reid.get("rows") or 0
    if not rows:
        return "re-identification check: no anonymised rows"
    qi = ", ".join(reid.get("quasi_identifiers") or []) or "no kept column"
    verdict = "passed" if reid.get("passed") else "FAILED"
    what = "rows anonymised had the policy run (it was blocked)" if blocked else "anonymised rows"
    return (f"re-identification check {verdict}: {rows:,} {what}; smallest group sharing {qi}: "
            f"k = {reid.get('k')} (needed {reid.get('k_anonymity')}); {reid.get('below_k', 0):,} in smaller "
            f"groups; {reid.get('linkable', 0):,} still linked by a foreign key to kept personal data")


def _purge_line(p: dict[str, Any]) -> str:
    detail = f" ({p['detail']})" if p.get("detail") else ""
    return f"purge {p.get('database')} ({p.get('level')}): {p.get('result')}{detail}"


# -- text, json, csv ----------------------------------------------------------------------

TEXT_HEADERS = ("Policy", "Table", "Action", "Cut-off", "Due", "Held", "Deferred", "Applied", "Status")


def render_text(runs: Sequence[RunSummary]) -> str:
    if not runs:
        return "No runs in the audit log for this selection.\n"
    out = [f"Retention audit: {len(runs)} run(s); run times in UTC, cut-offs in the policy time zone", ""]
    for s in runs:
        mode = "PREVIEW (dry run: nothing was changed)" if s.dry_run else "ENFORCEMENT"
        took = f", {s.duration_s:.1f} s" if isinstance(s.duration_s, int | float) else ""
        out.append(f"{fmt_ts(s.started)}  run {s.run}  {mode}")
        out.append(f"  Status: {run_label(s)}{took}")
        out.append(f"  By {s.user or '?'}@{s.host or '?'}, retention {s.version or '?'}, as of {s.as_of or '?'}")
        rows = [
            (r.policy, f"{r.database or '?'}.{r.table or '?'}", r.action or "?", fmt_cutoff(r.cutoff),
             fmt_n(r.due), fmt_n(r.held), fmt_n(r.deferred), fmt_n(r.applied), r.status)
            for r in s.policies
        ]  # fmt: skip
        if rows:
            widths = [max(len(x) for x in col) for col in zip(TEXT_HEADERS, *rows, strict=True)]
            for line in (TEXT_HEADERS, *rows):
                cells = [c.rjust(widths[i]) if 4 <= i <= 7 else c.ljust(widths[i]) for i, c in enumerate(line)]
                out.append("  " + "  ".join(cells).rstrip())
        else:
            out.append("  No policy was started.")
        out.extend(f"    {r.policy}: {note}" for r in s.policies for note in _notes(r))
        out.extend(f"  {_purge_line(p)}" for p in s.purges)
        out.extend(
            f"  batch {rec.get('batch')} of {rec.get('policy')}: {rec.get('result')} (checked by run {rec.get('run')})"
            for rec in s.recovered
        )
        out.append("")
    return "\n".join(out)


def render_json(runs: Sequence[RunSummary]) -> str:
    return json.dumps({"runs": [asdict(s) for s in runs]}, indent=2, ensure_ascii=False) + "\n"


# The first fifteen are the contract's spreadsheet; later columns are additions.
CSV_COLUMNS = (
    "run", "started", "dry_run", "policy", "database", "table", "action", "basis", "cutoff",
    "due", "held", "deferred", "applied", "anonymised", "status", "cascaded", "run_status",
    "k", "below_k", "linkable",
)  # fmt: skip


def _cell(value: Any) -> Any:
    # A cell starting with = + - @ is a formula to a spreadsheet, and basis is free text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def render_csv(runs: Sequence[RunSummary]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for s in runs:
        common = {"run": s.run, "started": s.started, "dry_run": str(s.dry_run).lower(), "run_status": s.status}
        # A run that stopped before any policy is still a row: the inspector must see it.
        for r in s.policies or [PolicyRow(policy="", status="")]:
            reid = r.reidentification or {}
            values = asdict(r) | {"cascaded": sum(r.cascaded.values())} | common \
                | {k: reid.get(k) for k in ("k", "below_k", "linkable")}
            writer.writerow([_cell(values.get(name)) for name in CSV_COLUMNS])
    return buf.getvalue()


def render_html(runs: Sequence[RunSummary], verification: VerifyResult, head: str, **kwargs: Any) -> str:
    """The HTML report (see :mod:`retention.reports.audit_html`)."""
    from retention.reports import audit_html as auditreport_html

    return auditreport_html.render_html(runs, verification, head, **kwargs)

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

PURGE_FIELDS = ("database", "tables", "level", "result", "detail")


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
    # Rows deleted or anonymised (CONTRACT.md section 3), whatever the log's age: see _end.
    applied: int | None = None
    anonymised: int | None = None
    cascaded: dict[str, int] = field(default_factory=dict)
    # "not reached" until policy.start, "incomplete" until policy.end, then what it says
    status: str = "not reached"
    deferred_reasons: dict[str, int] = field(default_factory=dict)
    retain: str | None = None
    align: str | None = None
    duration_s: float | None = None
    deleted: int | None = None
    detached: int | None = None
    # policy.end's re-identification check (anonymising policies): k, below_k, linkable, rows, ...
    reidentification: dict[str, Any] | None = None

    def split(self) -> tuple[int, int]:
        """(rows deleted, rows anonymised)."""
        return self.deleted or 0, self.anonymised or 0


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
    # "enforcement", or "preview": a dry run (old logs) or a `preview` entry (run --dry-run --record)
    kind: str = "enforcement"
    # The run.start's record of how its lines are hashed ("sha256", "hmac-sha256"; None: old log)
    chain: str | None = None
    # Lines of the log this run's entries are on; a run on or after a break is not verified.
    first_line: int | None = None
    last_line: int | None = None
    verified: bool | None = None
    # run --plan: the applied plan's SHA-256 and the plan.approved entries naming it (who signed).
    plan: str | None = None
    approvals: list[dict[str, Any]] = field(default_factory=list)

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


def _seconds(e: dict[str, Any]) -> float | None:
    """An event's duration in seconds: ``duration_ms`` (integer, since the log holds integers
    only) or, in logs written before that, ``duration_s``."""
    ms = e.get("duration_ms")
    if isinstance(ms, int) and not isinstance(ms, bool):
        return ms / 1000
    old = e.get("duration_s")
    return old if isinstance(old, int | float) and not isinstance(old, bool) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass
class _Done:
    """What a policy's committed batches did, from `batch` intents and their `committed`."""

    deleted: int = 0
    anonymised: int = 0
    detached: int = 0
    cascaded: dict[str, int] = field(default_factory=dict)

    def add(self, action: Any, count: Any, cascaded: Any) -> None:
        n = _int(count)
        if action == "delete":
            self.deleted += n
        elif action == "detach":
            self.detached += n
        else:
            self.anonymised += n
        for table, rows in (cascaded or {}).items() if isinstance(cascaded, dict) else ():
            self.cascaded[table] = self.cascaded.get(table, 0) + _int(rows)

    @property
    def any(self) -> bool:
        return bool(self.deleted or self.anonymised or self.detached)


def _apply_done(row: PolicyRow, done: _Done) -> None:
    row.deleted, row.anonymised, row.detached = done.deleted, done.anonymised, done.detached or None
    row.applied = done.deleted + done.anonymised
    row.cascaded = dict(done.cascaded)


def _end(row: PolicyRow, e: dict[str, Any], done: _Done | None) -> None:
    """A policy.end, old or new. New logs carry ``deleted`` and ``anonymised`` (and ``detached``)
    with ``applied`` their sum. Older ones wrote ``applied`` = rows deleted for a delete policy
    (``anonymised`` apart), rows anonymised for an anonymise policy, and 0 for a policy that
    failed after committing batches: there the committed batches are what happened."""
    for name in ("due", "held", "deferred", "status"):
        setattr(row, name, e.get(name))
    row.duration_s = _seconds(e)
    row.deferred_reasons = dict(e.get("deferred_reasons") or {})
    row.cascaded = dict(e.get("cascaded") or {})
    if "deleted" in e:
        row.deleted, row.anonymised = _int(e.get("deleted")), _int(e.get("anonymised"))
        row.detached = _int(e["detached"]) if "detached" in e else None
        row.applied = row.deleted + row.anonymised
    elif done is not None and done.any:
        _apply_done(row, done)
    else:
        applied, anonymised = _int(e.get("applied")), _int(e.get("anonymised"))
        if row.action == "anonymise":
            row.deleted, row.anonymised = 0, applied
        else:
            row.deleted, row.anonymised = applied, anonymised
        row.applied = row.deleted + row.anonymised
    if e.get("dry_run") or row.status == "preview":
        row.deleted = row.anonymised = row.applied = 0


def _preview(summary: RunSummary, e: dict[str, Any]) -> None:
    """A recorded preview (`run --dry-run --record`): one entry with the counts it showed."""
    summary.kind, summary.dry_run, summary.status = "preview", True, "preview"
    summary.ended = e.get("ts")
    for name in ("user", "host", "version", "as_of", "policy_file", "policy_file_sha256"):
        if e.get(name) is not None:
            setattr(summary, name, e.get(name))
    for p in e.get("policies") or []:
        if not isinstance(p, dict):
            continue
        row = summary.row(str(p.get("name", p.get("policy"))))
        for name in ("database", "table", "action", "cutoff", "basis", "retain", "align", "due", "held",
                     "deferred"):
            if p.get(name) is not None:
                setattr(row, name, p.get(name))
        row.status = "preview"
        row.deleted = row.anonymised = row.applied = 0


def summarise(
    entries: Iterable[dict[str, Any] | tuple[int, dict[str, Any]]],
    since: date | None = None,
    until: date | None = None,
    policies: Sequence[str] = (),
    run: str | None = None,
    previews: bool = False,
) -> list[RunSummary]:
    """Runs in log order. ``since``/``until`` (inclusive) are UTC dates of the run's start;
    ``run`` matches an id or its prefix; ``policies`` keeps the runs with those policies
    and only their rows. Previews (dry runs, recorded previews) only with ``previews``.
    ``entries`` are entries or (line number, entry), e.g. from :func:`read_numbered`."""
    runs: dict[str, RunSummary] = {}
    # (run, batch) -> (policy, action, count, cascaded) of every batch intent: recovery and
    # commits need to know what the batch was
    intents: dict[tuple[str, Any], tuple[str, Any, Any, Any]] = {}
    # (run, policy) -> what its committed batches did
    done: dict[tuple[str, str], _Done] = {}
    interrupted: dict[str, str] = {}
    # plan SHA-256 -> its approvals (retention approve): shown with the runs that apply the plan.
    approvals: dict[str, list[dict[str, Any]]] = {}
    for item in entries:
        number, e = item if isinstance(item, tuple) else (None, item)
        rid, event = str(e.get("run", "")), e.get("event")
        if event == "plan.approved":
            approvals.setdefault(str(e.get("plan")), []).append(
                {k: e.get(k) for k in ("ts", "approver", "role", "note", "plan_file", "counts")})
            continue
        if event == "run.interrupted":
            interrupted[str(e.get("interrupted_run"))] = rid
        if event == "batch.recovered":
            origin = (str(e.get("of_run")), e.get("batch"))
            target = runs.get(origin[0])
            if target is not None:
                target.recovered.append(e)
                known = intents.get(origin)
                if e.get("result") == "applied" and known:
                    policy, action, count, cascaded = known
                    work = done.setdefault((origin[0], policy), _Done())
                    work.add(action, count, cascaded)
                    row = target.row(policy)
                    if row.status in ("incomplete", "not reached"):
                        _apply_done(row, work)
            continue
        if str(event).startswith("hold.") or event == "replay":
            continue  # the hold registry's entries and a replay's summary belong to no run (docs/rights.md)
        summary = runs.get(rid)
        if summary is None:
            summary = runs[rid] = RunSummary(run=rid, started=e.get("ts"), first_line=number)
        summary.last_line = number
        if event == "run.start":
            summary.started = e.get("ts")
            for name in ("user", "host", "version", "as_of", "policy_file", "policy_file_sha256", "chain"):
                setattr(summary, name, e.get(name))
            summary.dry_run = bool(e.get("dry_run"))
            summary.kind = "preview" if summary.dry_run else "enforcement"
            if e.get("plan"):
                summary.plan = str(e.get("plan"))
                summary.approvals = list(approvals.get(summary.plan, []))
            for p in e.get("policies") or []:
                row = summary.row(str(p.get("name")))
                for name in ("database", "table", "action", "cutoff", "basis", "retain", "align"):
                    setattr(row, name, p.get(name))
        elif event in ("erase.start", "replay.start"):
            # A subject erasure (or its replay after a restore): a run of its own (docs/rights.md).
            summary.started = e.get("ts")
            summary.kind = "erasure" if event == "erase.start" else "replay"
            for name in ("user", "host", "version", "as_of"):
                setattr(summary, name, e.get(name))
            for p in e.get("policies") or []:
                row = summary.row(str(p.get("name")))
                for name in ("database", "table", "action", "basis"):
                    setattr(row, name, p.get(name))
                row.status, row.deleted, row.anonymised, row.applied = "incomplete", 0, 0, 0
        elif event in ("erase.end", "replay.end"):
            summary.ended, summary.status = e.get("ts"), str(e.get("status"))
            summary.duration_s = _seconds(e)
            for row in summary.policies:
                if row.status == "incomplete":
                    row.status = "ok"
        elif event == "preview":
            _preview(summary, e)
        elif event == "policy.start":
            row = summary.row(str(e.get("policy")))
            for name in ("database", "table", "action", "cutoff", "basis"):
                if e.get(name) is not None:
                    setattr(row, name, e.get(name))
            row.status = "incomplete"
        elif event == "batch" and e.get("state") == "intent":
            intents[(rid, e.get("batch"))] = (str(e.get("policy")), e.get("action"), e.get("count"),
                                              e.get("cascaded"))
        elif event == "batch.committed":
            known = intents.pop((rid, e.get("batch")), None)
            policy = str(e.get("policy"))
            action, cascaded = (known[1], known[3]) if known else (None, None)
            row = summary.row(policy)
            action = action or ("delete" if row.action == "delete" else "anonymise")
            work = done.setdefault((rid, policy), _Done())
            work.add(action, e.get("count"), cascaded)
            if row.status in ("incomplete", "not reached"):  # policy.end has the final word
                _apply_done(row, work)
        elif event == "policy.end":
            policy = str(e.get("policy"))
            row = summary.row(policy)
            _end(row, e, done.get((rid, policy)))
            reid = e.get("reidentification")
            row.reidentification = dict(reid) if isinstance(reid, dict) else None
        elif event == "purge":
            summary.purges.append({k: e.get(k) for k in PURGE_FIELDS} | {"duration_s": _seconds(e)})
        elif event == "run.end":
            summary.ended, summary.status = e.get("ts"), str(e.get("status"))
            summary.exit_code, summary.duration_s = e.get("exit_code"), _seconds(e)
            # A finished run's batches can no longer be recovered: keep memory flat on long logs.
            for key in [k for k in intents if k[0] == rid]:
                intents.pop(key)
            for key in [k for k in done if k[0] == rid]:
                done.pop(key)
    for rid, finder in interrupted.items():
        if rid in runs and runs[rid].ended is None:
            runs[rid].status, runs[rid].interrupted_by = "interrupted", finder
    return [s for s in runs.values() if (previews or s.kind != "preview") and _keep(s, since, until, policies, run)]


def mark_verified(runs: Sequence[RunSummary], verification: VerifyResult | None) -> None:
    """Which runs the chain vouches for: all when it is intact, those wholly before the first
    broken line otherwise, none when it could not be checked (or the break has no line)."""
    for s in runs:
        if verification is None:
            s.verified = None
        elif verification.ok:
            s.verified = True
        else:
            line = verification.line
            s.verified = bool(line is not None and s.last_line is not None and s.last_line < line)


@dataclass
class Totals:
    """What the enforcement runs did: the numbers every format shows the same way."""

    runs: int = 0
    deleted: int = 0
    anonymised: int = 0
    detached: int = 0
    child_rows: int = 0
    previews: int = 0


def totals(runs: Sequence[RunSummary]) -> Totals:
    """Enforcement runs only: a preview changed nothing, whatever it counted."""
    out = Totals()
    for s in runs:
        if s.kind == "preview":
            out.previews += 1
            continue
        out.runs += 1
        for r in s.policies:
            out.deleted += r.deleted or 0
            out.anonymised += r.anonymised or 0
            out.detached += r.detached or 0
            out.child_rows += sum(r.cascaded.values())
    return out


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
        verb = "that would go with them" if r.status == "preview" else "deleted"
        notes.append(f"child rows {verb}: " + ", ".join(f"{t} {n:,}" for t, n in r.cascaded.items()))
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

TEXT_HEADERS = ("Policy", "Table", "Action", "Cut-off", "Due", "Held", "Deferred", "Deleted", "Anonymised",
                "Status")  # fmt: skip
_NUMERIC = range(4, 9)


def chain_lines(verification: VerifyResult | None) -> list[str]:
    """The verdict on the chain, first thing in every format."""
    if verification is None:
        return ["Chain not verified for this report."]
    lines = [verification.verdict()]
    if not verification.ok and verification.line is not None and not verification.key_missing:
        lines.append(f"Entries from line {verification.line} on cannot be relied upon: "
                     "the runs they belong to are marked UNVERIFIED below.")
    elif not verification.ok:
        lines.append("No entry can be relied upon: every run below is marked UNVERIFIED.")
    return lines


def totals_line(t: Totals) -> str:
    extra = f", {t.detached:,} references detached" if t.detached else ""
    return (f"Totals over {t.runs} enforcement run(s): {t.deleted:,} rows deleted, {t.anonymised:,} rows "
            f"anonymised, {t.child_rows:,} child rows deleted with them{extra}")


def render_text(runs: Sequence[RunSummary], verification: VerifyResult | None = None) -> str:
    out = chain_lines(verification)
    if not runs:
        return "\n".join([*out, "No runs in the audit log for this selection.", ""])
    t = totals(runs)
    previews = f" and {t.previews} recorded preview(s)" if t.previews else ""
    out += [f"Retention audit: {t.runs} enforcement run(s){previews}; run times in UTC, cut-offs in the "
            "policy time zone", totals_line(t), ""]
    for s in runs:
        mode = {"preview": "PREVIEW (dry run: nothing was changed)", "erasure": "SUBJECT ERASURE",
                "replay": "ERASURE REPLAYED AFTER A RESTORE"}.get(s.kind, "ENFORCEMENT")
        mark = "  UNVERIFIED (see the chain's verdict above)" if s.verified is False else ""
        took = f", {s.duration_s:.1f} s" if isinstance(s.duration_s, int | float) else ""
        out.append(f"{fmt_ts(s.started)}  run {s.run}  {mode}{mark}")
        out.append(f"  Status: {run_label(s)}{took}")
        out.append(f"  By {s.user or '?'}@{s.host or '?'}, retention {s.version or '?'}, as of {s.as_of or '?'}")
        if s.plan:
            signed = "; ".join(f"{a['approver']}" + (f" ({a['role']})" if a.get("role") else "")
                               + f" {fmt_ts(a.get('ts'))}" + (f": {a['note']}" if a.get("note") else "")
                               for a in s.approvals) or "NO APPROVAL IN THIS LOG"
            out.append(f"  Applied plan {s.plan[:16]}, approved by {signed}")
        rows = [
            (r.policy, f"{r.database or '?'}.{r.table or '?'}", r.action or "?", fmt_cutoff(r.cutoff),
             fmt_n(r.due), fmt_n(r.held), fmt_n(r.deferred), fmt_n(r.deleted), fmt_n(r.anonymised), r.status)
            for r in s.policies
        ]  # fmt: skip
        if rows:
            widths = [max(len(x) for x in col) for col in zip(TEXT_HEADERS, *rows, strict=True)]
            for line in (TEXT_HEADERS, *rows):
                cells = [c.rjust(widths[i]) if i in _NUMERIC else c.ljust(widths[i]) for i, c in enumerate(line)]
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


def chain_json(verification: VerifyResult | None) -> dict[str, Any]:
    if verification is None:
        return {"checked": False, "intact": None}
    return {
        "checked": not verification.key_missing, "intact": verification.ok,
        "keyed": verification.keyed, "key_missing": verification.key_missing,
        "recorded_chain": verification.recorded_chain, "entries": verification.entries,
        "head": verification.head, "line": verification.line, "reason": verification.reason,
        "verdict": verification.verdict(),
    }  # fmt: skip


def render_json(runs: Sequence[RunSummary], verification: VerifyResult | None = None) -> str:
    doc = {"chain": chain_json(verification), "totals": asdict(totals(runs)), "runs": [asdict(s) for s in runs]}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# The first fifteen are the contract's spreadsheet; later columns are additions.
CSV_COLUMNS = (
    "run", "started", "dry_run", "policy", "database", "table", "action", "basis", "cutoff",
    "due", "held", "deferred", "applied", "anonymised", "status", "cascaded", "run_status",
    "deleted", "detached", "kind", "verified", "chain",
    "k", "below_k", "linkable",
)  # fmt: skip


def _cell(value: Any) -> Any:
    # A cell starting with = + - @ is a formula to a spreadsheet, and basis is free text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def render_csv(runs: Sequence[RunSummary], verification: VerifyResult | None = None) -> str:
    """One row per policy and run; every row says whether the chain vouches for it (`verified`)
    and what the chain check found (`chain`), as a spreadsheet has no header to say it in."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    verdict = chain_lines(verification)[0]
    for s in runs:
        verified = "" if s.verified is None else str(s.verified).lower()
        common = {"run": s.run, "started": s.started, "dry_run": str(s.dry_run).lower(), "run_status": s.status,
                  "kind": s.kind, "verified": verified, "chain": verdict}  # fmt: skip
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

"""What ``retention run`` prints: a table a DPO reads, CONTRACT.md JSON, or CSV for a sheet."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from retention.engine.runner import PolicyOutcome, RunResult


def as_json_dict(result: RunResult) -> dict[str, Any]:
    """CONTRACT.md section 3, plus extra keys (extend, don't rename)."""
    return {
        "as_of": result.as_of,
        "dry_run": result.dry_run,
        "run": result.run,
        "status": result.status,
        "exit_code": result.exit_code,
        "policies": [
            {
                "name": o.name, "database": o.database, "table": o.table, "action": o.action,
                "cutoff": o.cutoff, "cutoff_windows": o.cutoff_windows,
                "due": o.due, "held": o.held, "deferred": o.deferred, "unreadable": o.unreadable,
                "applied": o.applied, "cascaded": o.cascaded, "status": o.status,
                "basis": o.basis, "anonymised": o.anonymised, "deferred_reasons": o.deferred_reasons,
                "sample_keys": o.sample, "table_rows": o.total, "error": o.error,
                "duration_s": o.duration_s,
                "detached": o.detached, "detached_columns": o.detached_columns,
                "held_reasons": o.held_reasons, "no_end": o.no_end, "no_end_tables": o.no_end_tables,
                **({"reidentification": o.reidentification} if o.reidentification is not None else {}),
                "warnings": o.warnings,
                "partitions": o.partitions,
                "batch_sizes": o.batch_sizes,
            }
            for o in result.policies
        ],
        "purge": result.purges,
    }


def render_json(result: RunResult) -> str:
    return json.dumps(as_json_dict(result), indent=2, ensure_ascii=False)


CSV_COLUMNS = ["run", "as_of", "dry_run", "policy", "database", "table", "action", "basis", "cutoff",
               "due", "held", "deferred", "applied", "anonymised", "cascaded", "status", "detached",
               "k", "below_k", "linkable"]


def render_csv(result: RunResult) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for o in result.policies:
        reid = o.reidentification or {}
        writer.writerow([result.run, result.as_of, str(result.dry_run).lower(), o.name, o.database, o.table,
                         o.action, o.basis or "", o.cutoff, o.due, o.held, o.deferred, o.applied, o.anonymised,
                         ";".join(f"{k}={v}" for k, v in o.cascaded.items()), o.status, o.detached,
                         *[("" if reid.get(key) is None else reid[key]) for key in ("k", "below_k", "linkable")]])
    return out.getvalue()


def _what_happens(o: PolicyOutcome, dry_run: bool) -> list[str]:
    will = "would be" if dry_run else "were"
    lines = []
    if o.status == "blocked":
        lines.append("BLOCKED: nothing of this policy " + ("would be" if dry_run else "was")
                     + " changed; had it run:")
        will = "would have been"
    if o.action == "delete":
        n = o.due - o.deferred
        lines.append(f"{n} row(s) {will} deleted from {o.table}")
        for child, count in o.cascaded.items():
            lines.append(f"  with {count} row(s) of {child}")
        for part in o.partitions:
            lines.append(f"  of these, {part['rows']} as the whole partition {part['partition']} (one statement)")
    else:
        lines.append(f"{o.due} row(s) of {o.table} {will} anonymised")
    for column, count in o.detached_columns.items():
        table, _, cols = column.partition(".")
        lines.append(f"  {count} row(s) of {table} pointing at them {will} detached first "
                     f"({cols} set to NULL; those rows are kept)")
    if o.deferred:
        reasons = ", ".join(f"{n} still referenced by {t}" for t, n in o.deferred_reasons.items())
        lines.append(f"{o.deferred} row(s) kept for now: {reasons or 'still referenced'}")
        if o.fields and o.action == "delete" and o.status != "blocked":
            lines.append(f"  of these, {o.anonymised} {will} anonymised instead (on_referenced: anonymise)")
    if o.held:
        why = ", ".join(f"{n} by {flag}" for flag, n in o.held_reasons.items())
        lines.append(f"{o.held} row(s) past their term kept by a hold (exclude)" + (f": {why}" if why else ""))
    if o.unreadable:
        lines.append(f"{o.unreadable} row(s) kept: their `after` value is not a date (`retention validate` lists them)")
    if o.no_end:
        lines.append(f"! {o.no_end} row(s) of {o.table} are outside every policy's `where`: "
                     "no policy will ever remove them")
    for link in o.no_end_tables:
        lines.append(f"! {link.partition('.')[0]} points at {o.table} ({link}) and no policy covers it: "
                     "its rows have no end")
    if o.fields and (o.action == "anonymise" or o.deferred):
        lines.append("fields: " + ", ".join(f"{c} -> {s}" for c, s in o.fields.items()))
    return lines


def reidentification_lines(reid: dict[str, Any]) -> list[str]:
    """The check in words, with its numbers (shared with `validate`)."""
    if not reid.get("rows"):
        return ["re-identification: no anonymised rows (after this run) to check"]
    qi = ", ".join(reid.get("quasi_identifiers") or []) or "no column"
    verdict = "passes" if reid.get("passed") else "FAILS"
    links = ", ".join(f"{n} via {t}" for t, n in (reid.get("links") or {}).items())
    return [
        f"re-identification ({verdict}): of {reid['rows']} anonymised row(s) after this run, the smallest group "
        f"sharing {qi} has k = {reid['k']} row(s) (needed: {reid['k_anonymity']});",
        f"  {reid['below_k']} row(s) in smaller groups; {reid['linkable']} still linked by a foreign key to "
        f"kept personal data" + (f" ({links})" if links else ""),
    ]


def render_text(result: RunResult) -> str:
    title = "PREVIEW (dry run): nothing was changed" if result.dry_run else "Retention run"
    lines = [f"{title}", f"run {result.run}, as of {result.as_of}", ""]
    for o in result.policies:
        status = {"ok": "done" if not result.dry_run else "preview"}.get(o.status, o.status.upper())
        lines.append(f"== {o.name}  [{status}]")
        if o.description:
            lines.append(f"   {o.description}")
        if o.basis:
            lines.append(f"   basis:   {o.basis}")
        align = "" if o.align == "none" else f", counted from the {o.align.replace('_', ' ')}"
        lines.append(f"   rule:    {o.action} {o.table} rows {o.retain} after their event{align}")
        lines.append(f"   cut-off: events up to {o.cutoff_local} ({o.cutoff})")
        for lo, hi in o.cutoff_windows:
            # Month-end clamping: these later days also reach their term today (docs/policy-file.md).
            lines.append(f"            and from {lo.replace('T', ' ')} to {hi.replace('T', ' ')[:19]}")
        lines.append(f"   counts:  due {o.due}, held {o.held}, deferred {o.deferred}, applied {o.applied}"
                     + (f" (of {o.total} rows)" if o.total else ""))
        lines += [f"   {line}" for line in _what_happens(o, result.dry_run)]
        if o.reidentification is not None:
            lines += [f"   {line}" for line in reidentification_lines(o.reidentification)]
        if o.sample:
            lines.append(f"   first keys: {', '.join(map(str, o.sample))}")
        if o.error:
            lines.append(f"   ! {o.error}")
        lines += [f"   ! {w}" for w in o.warnings]
        lines.append("")
    for p in result.purges:
        lines.append(f"purge {p.get('database')}: {p.get('level')} -> {p.get('result')}: {p.get('detail', '')}")
    if result.message:
        lines.append(result.message)
    return "\n".join(lines).rstrip() + "\n"


def render(result: RunResult, fmt: str) -> str:
    return {"json": render_json, "csv": render_csv, "text": render_text}[fmt](result)

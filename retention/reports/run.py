"""What ``retention run`` prints: a table a DPO reads, CONTRACT.md JSON, or CSV for a sheet."""

from __future__ import annotations

import csv
import io
import json
import re
import textwrap
from dataclasses import dataclass
from typing import Any

import pendulum

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
                "basis": o.basis, "deleted": o.deleted, "anonymised": o.anonymised,
                "to_delete": o.to_delete, "to_anonymise": o.to_anonymise,
                "already_anonymised": o.already_anonymised, "partial": o.partial,
                "deferred_reasons": o.deferred_reasons,
                "sample_keys": o.sample, "table_rows": o.total, "error": o.error,
                "duration_s": o.duration_s,
                "detached": o.detached, "detached_columns": o.detached_columns,
                "held_reasons": o.held_reasons, "no_end": o.no_end, "no_end_tables": o.no_end_tables,
                **({"reidentification": o.reidentification} if o.reidentification is not None else {}),
                "warnings": o.warnings,
                # run --plan only: the approved plan, its keys of this policy, those no longer due.
                **({"plan": o.plan, "planned_keys": o.planned, "skipped_keys": o.skipped_keys} if o.plan else {}),
                "partitions": o.partitions,
                "batch_sizes": o.batch_sizes,
                "phases_s": o.phases_s,
            }
            for o in result.policies
        ],
        "purge": result.purges,
    }


def render_json(result: RunResult) -> str:
    return json.dumps(as_json_dict(result), indent=2, ensure_ascii=False)


CSV_COLUMNS = ["run", "as_of", "dry_run", "policy", "database", "table", "action", "basis", "cutoff",
               "due", "held", "deferred", "applied", "anonymised", "cascaded", "status", "detached",
               "k", "below_k", "linkable", "deleted", "to_delete", "to_anonymise", "already_anonymised"]


def render_csv(result: RunResult) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for o in result.policies:
        reid = o.reidentification or {}
        writer.writerow([result.run, result.as_of, str(result.dry_run).lower(), o.name, o.database, o.table,
                         o.action, o.basis or "", o.cutoff, o.due, o.held, o.deferred, o.applied, o.anonymised,
                         ";".join(f"{k}={v}" for k, v in o.cascaded.items()), o.status, o.detached,
                         *[("" if reid.get(key) is None else reid[key]) for key in ("k", "below_k", "linkable")],
                         o.deleted, o.to_delete, o.to_anonymise, o.already_anonymised])
    return out.getvalue()


def _n(value: int) -> str:
    return f"{value:,}"


def _row_noun(table: str) -> str:
    # "accounts" -> "account": good enough for the plain-words rule; other plurals stay as they are.
    return table[:-1] if table.endswith("s") and not table.endswith("ss") else table


def _event_words(o: PolicyOutcome) -> str:
    """The event in words: ``deregistered_at`` on accounts -> "the account was deregistered";
    a column that does not read as a past participle stays a column name."""
    stem = re.sub(r"_(at|on|date|time)$", "", o.after)
    if stem != o.after and re.fullmatch(r"[a-z]+ed", stem):
        return f"the {_row_noun(o.table)} was {stem}"
    return f"{o.after}"


def rule_words(o: PolicyOutcome) -> str:
    """The rule in plain words: "deleted 24 months after the account was deregistered (deregistered_at)"."""
    done = {"delete": "deleted", "anonymise": "anonymised"}.get(o.action, o.action)
    event = _event_words(o)
    column = f" ({o.after})" if event != o.after else ""
    period = {"end_of_year": "year", "end_of_month": "month"}.get(o.align)
    if period:
        when = f"{o.retain} after the end of the {period} in which {event}{column}"
        if event == o.after:
            when = f"{o.retain} after the end of the {period} of {o.after}"
    else:
        when = f"{o.retain} after {event}{column}"
    words = f"{done} {when}"
    if o.where:
        words += "; only rows where " + " and ".join(f"{c} = {value_words(v)}" for c, v in o.where.items())
    if o.action == "delete" and o.on_referenced == "anonymise":
        words += "; anonymised instead while a kept record still references it"
    return words


def value_words(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class Totals:
    """The night over all policies, as the preview's first line and the printable page say it."""

    deleted: int
    anonymised: int
    held: int
    waiting: int
    already_anonymised: int
    children: int
    # Rows a safety guard keeps from changing tonight (max_fraction), and by which policies.
    blocked: int = 0
    blocked_by: tuple[str, ...] = ()


def totals(result: RunResult) -> Totals:
    dry = result.dry_run
    # A blocked policy changes nothing: its rows are not in tonight's numbers (its block says them).
    going = [o for o in result.policies if o.status != "blocked"]
    stopped = [o for o in result.policies if o.status == "blocked"]
    return Totals(
        blocked=sum(o.to_delete + o.to_anonymise for o in stopped),
        blocked_by=tuple(o.name for o in stopped),
        deleted=sum(o.to_delete if dry else o.deleted for o in going),
        anonymised=sum(o.to_anonymise if dry else o.anonymised for o in going),
        held=sum(o.held for o in result.policies),
        # Deferred and not anonymised tonight: they stay as they are (some anonymised earlier).
        waiting=sum(o.deferred - o.to_anonymise for o in going if o.action == "delete"),
        already_anonymised=sum(o.already_anonymised for o in going),
        children=sum(n for o in going for n in o.cascaded.values()),
    )


def when_words(result: RunResult) -> str:
    """ "Tonight" for a preview of now, "By <moment>" for one with another --as-of."""
    if not result.dry_run:
        return "This run"
    as_of = pendulum.parse(result.as_of)
    near = abs((as_of - pendulum.now()).total_seconds()) < 12 * 3600  # type: ignore[operator]
    return "Tonight" if near else f"By {as_of.strftime('%Y-%m-%d %H:%M')}"  # type: ignore[union-attr]


def _summary(result: RunResult) -> str:
    """One line over all policies: the first thing a DPO reads."""
    t = totals(result)
    line = (f"{when_words(result)}: {_n(t.deleted)} deleted, {_n(t.anonymised)} anonymised, {_n(t.held)} kept "
            f"under a hold, {_n(t.waiting)} waiting for records that must stay")
    notes = []
    if t.children:
        notes.append(f"{_n(t.children)} child rows {'go' if result.dry_run else 'went'} with the deleted rows")
    if t.already_anonymised:
        notes.append(f"{_n(t.already_anonymised)} of the waiting rows were anonymised on an earlier night")
    if t.blocked_by:
        notes.append(f"not counted: {_n(t.blocked)} rows of {', '.join(t.blocked_by)}, which a safety guard blocks")
    return line + (f" ({'; '.join(notes)})" if notes else "") + "."


def _what_happens(o: PolicyOutcome, dry_run: bool) -> list[str]:
    will = "would be" if dry_run else "were"
    deleted = o.to_delete if dry_run else o.deleted
    anonymised = o.to_anonymise if dry_run else o.anonymised
    lines = []
    if o.status == "blocked":
        lines.append("BLOCKED: nothing of this policy " + ("would be" if dry_run else "was")
                     + " changed; had it run:")
        will = "would have been"
    if o.action == "delete":
        lines.append(f"{_n(deleted)} row(s) {will} deleted from {o.table}")
        for child, count in o.cascaded.items():
            lines.append(f"  with {_n(count)} row(s) of {child}")
        for part in o.partitions:
            lines.append(f"  of these, {_n(part['rows'])} as the whole partition {part['partition']} (one statement)")
    else:
        lines.append(f"{_n(anonymised)} row(s) of {o.table} {will} anonymised")
    for column, count in o.detached_columns.items():
        table, _, cols = column.partition(".")
        lines.append(f"  {_n(count)} row(s) of {table} pointing at them {will} detached first "
                     f"({cols} set to NULL; those rows are kept)")
    if o.deferred:
        reasons = ", ".join(f"{_n(n)} referenced by {t}" for t, n in o.deferred_reasons.items())
        lines.append(f"{_n(o.deferred)} row(s) past their term still referenced by records that must stay: "
                     f"{reasons or 'still referenced'}")
        if sum(o.deferred_reasons.values()) > o.deferred:
            lines.append("  (the reasons overlap: a row referenced from several tables is counted under each)")
        if o.on_referenced == "anonymise":
            if anonymised or not o.already_anonymised:
                lines.append(f"  of these, {_n(anonymised)} {will} anonymised instead (on_referenced: anonymise)")
            if o.already_anonymised:
                lines.append(f"  of these, {_n(o.already_anonymised)} already anonymised on an earlier night; "
                             "they are deleted once nothing references them")
        else:
            lines.append("  they stay as they are and are deleted once nothing references them")
    if o.held:
        why = ", ".join(f"{_n(n)} by {'the hold registry' if flag == 'registry' else flag}"
                        for flag, n in o.held_reasons.items())
        holds = " or ".join(f"{c} = {value_words(v)}" for c, v in o.exclude.items())
        lines.append(f"{_n(o.held)} row(s) past their term kept under a hold ({why or holds or 'exclude'})")
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
    # A preview of a blocked policy measures what letting it through would leave.
    after = "if it is let through" if reid.get("if_let_through") else "after this run"
    if not reid.get("rows"):
        return [f"re-identification: no anonymised rows ({after}) to check"]
    qi = ", ".join(reid.get("quasi_identifiers") or []) or "no column"
    verdict = "passes" if reid.get("passed") else "FAILS"
    links = ", ".join(f"{n} via {t}" for t, n in (reid.get("links") or {}).items())
    return [
        f"re-identification ({verdict}): of {reid['rows']} anonymised row(s) {after}, the smallest group "
        f"sharing {qi} has k = {reid['k']} row(s) (needed: {reid['k_anonymity']});",
        f"  {reid['below_k']} row(s) in smaller groups; {reid['linkable']} still linked by a foreign key to "
        f"kept personal data" + (f" ({links})" if links else ""),
    ]


_LABEL = re.compile(r"^(\s*)(?:[^:()]{1,24}:\s+|== |[!] |\(|of these, )?")


def _wrap(line: str, width: int) -> list[str]:
    """One logical line wrapped to ``width``; continuation lines indent under the text after a
    label ("basis:   ..."), never breaking a word (a hash or a key stays whole)."""
    if len(line) <= width:
        return [line]
    m = _LABEL.match(line)
    hang = " " * (m.end() if m else 0)
    if m and not m.group(0).strip() and line.lstrip()[:1].isdigit():  # a count's sentence: under its words
        hang += "  "
    if len(hang) > width // 2:
        hang = " " * (len(line) - len(line.lstrip()) + 2)
    return textwrap.wrap(line, width=width, subsequent_indent=hang, break_long_words=False,
                         break_on_hyphens=False) or [line]


def render_text(result: RunResult, width: int = 100) -> str:
    title = "PREVIEW (dry run): nothing was changed" if result.dry_run else "Retention run"
    summary = textwrap.wrap(_summary(result), width=width, subsequent_indent="    ", break_long_words=False)
    lines = [f"{title}", f"run {result.run}, as of {result.as_of}", *summary]
    if result.not_selected:
        lines.append(f"Only {', '.join(o.name for o in result.policies)}: counted as if the other policies "
                     f"({', '.join(result.not_selected)}) did not run, so rows they would remove tonight "
                     "still count as references here; the full run may defer fewer rows.")
    lines.append("")
    for o in result.policies:
        status = {"ok": "done" if not result.dry_run else "preview"}.get(o.status, o.status.upper())
        lines.append(f"== {o.name}  [{status}]")
        if o.description:
            lines.append(f"   {' '.join(o.description.split())}")
        if o.basis:
            lines.append(f"   basis:   {' '.join(o.basis.split())}")
        lines.append(f"   rule:    {rule_words(o)}")
        lines.append(f"   cut-off: events up to {o.cutoff_local} ({o.cutoff})")
        for lo, hi in o.cutoff_windows:
            # Month-end clamping: these later days also reach their term today (docs/policy-file.md).
            lines.append(f"            and from {lo.replace('T', ' ')} to {hi.replace('T', ' ')[:19]}")
        done = "" if result.dry_run else \
            f", applied {_n(o.applied)} ({_n(o.deleted)} deleted, {_n(o.anonymised)} anonymised)"
        lines.append(f"   counts:  due {_n(o.due)}, held {_n(o.held)}, deferred {_n(o.deferred)}{done}"
                     + (f" (of {_n(o.total)} rows)" if o.total else ""))
        lines += [f"   {line}" for line in _what_happens(o, result.dry_run)]
        if o.reidentification is not None:
            lines += [f"   {line}" for line in reidentification_lines(o.reidentification)]
        if o.plan:
            lines.append(f"   plan:    {o.plan[:12]}: {o.planned} approved key(s), {o.skipped_keys} skipped "
                         "(no longer due tonight: held, changed or gone)")
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
    out = [piece for line in lines for piece in _wrap(line, width)]
    return "\n".join(out).rstrip() + "\n"


def render(result: RunResult, fmt: str, width: int = 100) -> str:
    if fmt == "text":
        return render_text(result, width)
    if fmt == "html":
        from retention.reports.preview_html import render_preview_html

        return render_preview_html(result)
    return {"json": render_json, "csv": render_csv}[fmt](result)

"""The self-contained HTML page of `retention audit show --format html`.

One page, no external assets or scripts (an inspector may open it offline, print it, or
archive it with the case file): inline CSS, an inline SVG chart, every value escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from retention.audit.log import VerifyResult
from retention.reports.audit import (
    PolicyRow,
    RunSummary,
    _day,
    _notes,
    _purge_line,
    chain_lines,
    fmt_cutoff,
    fmt_n,
    fmt_ts,
    run_label,
    totals,
)

# Okabe-Ito, readable by most colour-blind readers and in greyscale print.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7F6A2E", "#5E5FA8")
STATUS_CLASS = {"ok": "ok", "preview": "info", "blocked": "warn", "failed": "bad", "interrupted": "bad",
                "incomplete": "bad", "running": "muted", "not reached": "muted"}  # fmt: skip

CSS = """
:root{--ink:#1c2430;--muted:#5b6675;--line:#d6dbe1;--soft:#f3f5f7;--ok:#1e7b46;--okbg:#e6f4ec;
--bad:#b42318;--badbg:#fdecea;--warn:#9a5b00;--warnbg:#fff4e0;--info:#1f5fa8;--infobg:#e8f0fb}
*{box-sizing:border-box}
body{margin:0;background:#eef0f3;color:var(--ink);font:14px/1.45 "Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:24px auto;background:#fff;padding:36px 44px;box-shadow:0 1px 4px rgba(0,0,0,.08)}
h1{font-size:1.85em;margin:2px 0 14px;letter-spacing:-.01em}
h2{font-size:1.15em;margin:30px 0 10px;padding-bottom:5px;border-bottom:2px solid var(--ink)}
.kicker{text-transform:uppercase;letter-spacing:.12em;font-size:.78em;color:var(--muted);font-weight:600}
.meta{display:flex;flex-wrap:wrap;gap:6px 36px;margin:0;font-size:.93em}
.meta dt{color:var(--muted);font-size:.82em;text-transform:uppercase;letter-spacing:.06em}
.meta dd{margin:0;font-weight:600}
.verify{margin:22px 0 6px;border:2px solid;border-radius:6px;padding:14px 18px;display:grid;
grid-template-columns:auto 1fr;gap:4px 18px;align-items:center}
.verify.ok{border-color:var(--ok);background:var(--okbg)}.verify.bad{border-color:var(--bad);background:var(--badbg)}
.verify.muted{border-color:var(--line);background:var(--soft)}
.verdict{grid-row:span 3;font-size:1.45em;font-weight:700;padding-right:18px;border-right:1px solid rgba(0,0,0,.15)}
.verify.ok .verdict{color:var(--ok)}.verify.bad .verdict{color:var(--bad)}
.mono{font-family:"DejaVu Sans Mono",Consolas,monospace;font-size:.86em;word-break:break-all}
.small{font-size:.86em;color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:10px;margin-top:18px}
.card{border:1px solid var(--line);border-radius:6px;padding:10px 12px}
.card b{display:block;font-size:1.6em}.card span{font-size:.86em;color:var(--muted)}
.chart svg{width:100%;height:auto;display:block}
.legend{display:flex;flex-wrap:wrap;gap:4px 18px;font-size:.86em;margin:6px 0 0 56px}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
table{width:100%;border-collapse:collapse;font-size:.9em}
th{text-align:left;font-size:.85em;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);
border-bottom:1.5px solid var(--ink);padding:6px 6px;vertical-align:bottom}
td{border-bottom:1px solid var(--line);padding:5px 6px;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody.run td:first-child{border-left:4px solid transparent}
tr.runhead td{background:var(--soft);border-top:10px solid #fff;border-bottom:1px solid var(--line);padding:7px 8px}
.when{font-weight:700;margin-right:6px}
tbody.run.bad td:first-child{border-left-color:var(--bad)}tbody.run.bad tr.runhead td{background:var(--badbg)}
tbody.run.warn td:first-child{border-left-color:#e0a030}tbody.run.warn tr.runhead td{background:var(--warnbg)}
tbody.run.preview td:first-child{border-left-color:#8fb0dc}tbody.run.preview tr.runhead td{background:var(--infobg)}
tbody.run.preview td{color:#3d4a5c}
.badge{display:inline-block;padding:0 .6em;border-radius:1em;font-size:.85em;font-weight:700;white-space:nowrap;
border:1px solid currentColor}
.badge.ok{color:var(--ok);background:var(--okbg)}.badge.bad{color:var(--bad);background:var(--badbg)}
.badge.warn{color:var(--warn);background:var(--warnbg)}.badge.info{color:var(--info);background:var(--infobg)}
.badge.muted{color:var(--muted);background:var(--soft)}
.nowrap{white-space:nowrap}
footer{margin-top:30px;padding-top:10px;border-top:1px solid var(--line);font-size:.82em;color:var(--muted)}
footer dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:6px 0}footer dt{font-weight:700}
footer dd{margin:0}
@page{size:A4;margin:14mm 12mm}
@media print{body{background:#fff;font-size:9.5pt}main{box-shadow:none;margin:0;padding:0;max-width:none}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}
thead{display:table-header-group}tbody.run,.verify,.cards,.chart{break-inside:avoid}h2{break-after:avoid}}
"""


def _e(value: Any) -> str:
    return html.escape("—" if value is None else str(value), quote=True)


def _badge(status: str, text: str | None = None) -> str:
    return f'<span class="badge {STATUS_CLASS.get(status, "muted")}">{_e(text or status)}</span>'


def _nice_step(top: int) -> int:
    raw = max(top, 1) / 4
    magnitude = 10 ** max(0, len(str(int(raw))) - 1)
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def _bucketing(span_days: int) -> tuple[str, Any, str]:
    """Nights for a month or a quarter; weeks, then months, so a year still has visible bars."""
    if span_days <= 120:
        return "night", lambda d: d, "%d %b"
    if span_days <= 2 * 366:
        return "week", lambda d: d - timedelta(days=d.weekday()), "%d %b"
    return "month", lambda d: d.replace(day=1), "%b %Y"


def _chart(runs: Sequence[RunSummary], colours: dict[str, str]) -> str:
    """Stacked bars of rows deleted or anonymised per night and policy, over a strip with
    each night's outcome: a night without a bar may be a night that failed."""
    days = sorted({d for d in map(_day, runs) if d})
    if not days:
        return '<h2>Rows deleted or anonymised</h2><p class="small">No runs in this period.</p>'
    unit, bucket_of, label_fmt = _bucketing((days[-1] - days[0]).days + 1)
    buckets = list(dict.fromkeys(bucket_of(days[0] + timedelta(days=i)) for i in range((days[-1] - days[0]).days + 1)))
    totals: dict[date, dict[str, int]] = {b: {} for b in buckets}
    worst: dict[date, str] = {}
    rank = {"ok": 1, "running": 2, "blocked": 3, "failed": 4, "interrupted": 4}
    for s in runs:
        day = _day(s)
        if day is None or s.kind == "preview":
            continue
        b = bucket_of(day)
        if rank.get(s.status, 2) > rank.get(worst.get(b, ""), 0):
            worst[b] = s.status
        for r in s.policies:
            totals[b][r.policy] = totals[b].get(r.policy, 0) + (r.applied or 0)
    top = max(sum(t.values()) for t in totals.values())
    step = _nice_step(top)
    ymax = step * max(1, -(-top // step))
    w, left, right, pad, height = 1000, 56, 12, 12, 220
    base, slot = pad + height, (w - left - right) / len(buckets)

    def y(v: int) -> float:
        return base - v / ymax * height

    out = [f'<h2>Rows deleted or anonymised per {unit}</h2><div class="chart">'
           f'<svg viewBox="0 0 {w} {base + 64}" role="img" aria-label="Rows deleted or anonymised per {unit}">']
    for tick in range(0, ymax + 1, step):
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                   f'stroke="{"#1c2430" if tick == 0 else "#e3e7eb"}"/><text x="{left - 8}" y="{y(tick) + 4:.1f}" '
                   f'font-size="11" text-anchor="end" fill="#5b6675">{tick:,}</text>')
    label_every = max(1, round(len(buckets) / 14))
    for i, b in enumerate(buckets):
        x, stack = left + i * slot, 0
        for policy, count in totals[b].items():
            if count:
                out.append(f'<rect x="{x + slot * 0.15:.1f}" y="{y(stack + count):.1f}" width="{slot * 0.7:.1f}" '
                           f'height="{y(stack) - y(stack + count):.1f}" fill="{colours[policy]}">'
                           f"<title>{_e(policy)}, {b}: {count:,} rows</title></rect>")
                stack += count
        status = worst.get(b)
        fill = {"ok": "#2e9e5b", "blocked": "#e0a030", "running": "#8a94a3"}.get(status or "", "#d64545")
        look = f'fill="{fill}"' if status else 'fill="none" stroke="#b8c0ca"'
        title = f"{b}: worst outcome {status}" if status else f"{b}: no enforcement run"
        out.append(f'<rect x="{x + slot * 0.1:.1f}" y="{base + 8}" width="{slot * 0.8:.1f}" height="10" rx="2" '
                   f"{look}><title>{_e(title)}</title></rect>")
        if i % label_every == 0:
            out.append(f'<text x="{x + slot / 2:.1f}" y="{base + 36}" font-size="11" text-anchor="middle" '
                       f'fill="#5b6675">{b.strftime(label_fmt)}</text>')
    out.append(f'<text x="{left}" y="{base + 58}" font-size="11" fill="#5b6675">Strip: outcome of the enforcement '
               "runs (green ok, amber blocked, red failed or interrupted, outline: no run)</text></svg>")
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{_e(p)}</span>' for p, c in colours.items())
    return "".join(out) + f'<div class="legend">{legend}</div></div>'


def render_html(
    runs: Sequence[RunSummary],
    verification: VerifyResult | None,
    head: str,
    title: str = "Retention audit report",
    *,
    since: date | None = None,
    until: date | None = None,
) -> str:
    """One self-contained page (inline CSS and SVG, no script, nothing fetched) to print."""
    days = [d for d in map(_day, runs) if d]
    first, last = since or (min(days) if days else None), until or (max(days) if days else None)
    period = f"{first.day} {first:%B %Y} – {last.day} {last:%B %Y}" if first and last else "the whole log"
    enforcing = [s for s in runs if s.kind != "preview"]
    names = list(dict.fromkeys(r.policy for s in runs for r in s.policies))
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    t = totals(runs)
    completed = sum(s.status == "ok" for s in enforcing)
    troubled = sum(s.status in ("failed", "interrupted", "blocked") for s in enforcing)

    lines = chain_lines(verification)
    if verification is None:
        vclass, verdict, detail = "muted", "Not verified", lines[0]
    elif verification.ok:
        vclass, verdict = "ok", "Chain intact"
        keyed = ("Keyed: every hash is an HMAC-SHA-256, checked with the key." if verification.keyed else
                 "Not keyed: plain SHA-256, which anyone with write access could recompute; "
                 "compare the head with one kept elsewhere.")
        detail = f"All {verification.entries:,} entries verified, from the first to the last. {keyed}"
    elif verification.key_missing:
        vclass, verdict, detail = "bad", "NOT VERIFIED: key missing", " ".join(lines)
    else:
        vclass, verdict, detail = "bad", "Chain BROKEN", verification.message()
        if verification.line is not None:
            detail += f" — the lines before {verification.line} verify; from there on the log cannot be relied upon"
    p = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
         f"<style>{CSS}</style></head><body><main>"
         f'<div class="kicker">Data retention · audit report</div><h1>{_e(title)}</h1><dl class="meta">'
         f"<div><dt>Period covered</dt><dd>{_e(period)}</dd></div>"
         f"<div><dt>Runs</dt><dd>{len(runs)} ({t.runs} enforcement, {t.previews} preview)</dd></div>"
         f"<div><dt>Policies</dt><dd>{len(names)}</dd></div>"
         f"<div><dt>Generated</dt><dd>{datetime.now(UTC):%Y-%m-%d %H:%M} UTC</dd></div></dl>"
         f'<section class="verify {vclass}"><div class="verdict">{_e(verdict)}</div>'
         f"<div>{_e(detail)}</div>"
         f'<div>Head of the log: <span class="mono">{_e(head)}</span></div>'
         '<div class="small">Compare the head with one kept outside this system: '
         '<span class="mono">retention audit verify --expect-head SEQ:HASH</span></div></section>'
         '<div class="cards">'
         f'<div class=card id="total-deleted"><b>{t.deleted:,}</b><span>rows deleted</span></div>'
         f'<div class=card id="total-anonymised"><b>{t.anonymised:,}</b><span>rows anonymised</span></div>'
         f'<div class=card id="total-child-rows"><b>{t.child_rows:,}</b><span>child rows deleted with them</span></div>'
         f"<div class=card><b>{completed}</b><span>enforcement runs completed</span></div>"
         f"<div class=card><b>{troubled}</b><span>runs failed, blocked or interrupted</span></div></div>"
         f"{_chart(runs, colours)}"]  # fmt: skip
    p.append(_policies_table(runs))
    p.append(_runs_table(runs))
    p.append(
        "<footer><dl><dt>Due</dt><dd>rows past their retention term and not on hold</dd>"
        "<dt>Held</dt><dd>rows past their term kept by an exclusion (e.g. a legal hold)</dd>"
        "<dt>Deferred</dt><dd>due rows kept because other retained records still refer to them</dd>"
        "<dt>Deleted, anonymised</dt><dd>rows actually deleted or anonymised (always 0 in a preview); "
        "their sum is the contract's <i>applied</i></dd>"
        "<dt>Re-identification check</dt><dd>for a policy that anonymises, measured in the database before "
        "each run over every row it has anonymised: <i>k</i> is the size of the smallest group of those rows "
        "that share the same values in every column left in them (kept, generalised, and the event date); a "
        "row in a group smaller than the policy's threshold can be singled out by someone who knows those "
        "values about a person. <i>Linked</i> counts anonymised rows that a foreign key still joins to kept "
        "rows holding personal data, which give the person back. A policy that fails is stopped before it "
        "changes anything, unless its file says <code>reidentification: warn</code>. Anonymised here means "
        "what these two numbers show, no more.</dd></dl>"
        "Run times are UTC; cut-offs are in the policies' time zone. The audit log records primary keys, "
        "counts, and table and column names, never a removed value. Each entry carries the hash of the one "
        "before it, so an edit, deletion or reordering shows as a broken chain.</footer></main></body></html>\n"
    )
    return "".join(p)


def _policies_table(runs: Sequence[RunSummary]) -> str:
    # The rule as last enforced: a preview's cut-off (perhaps a future --as-of) is no rule applied.
    latest: dict[str, PolicyRow] = {}
    for s in runs:
        for r in s.policies:
            if s.kind != "preview":
                latest[r.policy] = r
            elif r.policy not in latest or latest[r.policy].cutoff is None:
                latest[r.policy] = replace(r, cutoff=None)
    if not latest:
        return ""
    rows = "".join(
        f"<tr><td><b>{_e(r.policy)}</b></td><td>{_e(r.database)}.{_e(r.table)}</td><td>{_e(r.action)}</td>"
        f"<td class=nowrap>{_e(r.retain)}{'' if r.align in (None, 'none') else ' (' + _e(r.align) + ')'}</td>"
        f"<td>{_e(r.basis)}</td><td class=nowrap>{_e(fmt_cutoff(r.cutoff))}</td><td>{_reid_cell(r)}</td></tr>"
        for r in latest.values()
    )
    return ("<h2>Policies</h2><table><thead><tr><th>Policy</th><th>Table</th><th>Action</th><th>Retention</th>"
            "<th>Basis</th><th>Latest cut-off</th><th>Re-identification (latest)</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")  # fmt: skip


def _reid_cell(r: PolicyRow) -> str:
    reid = r.reidentification
    if not reid:
        return '<span class="small">—</span>'
    if not reid.get("rows"):
        return '<span class="small">no anonymised rows</span>'
    verdict = _badge("ok", "passed") if reid.get("passed") else _badge("failed", "FAILED")
    return (f"{verdict} <span class=nowrap>k = {_e(reid.get('k'))} (needed {_e(reid.get('k_anonymity'))})</span>, "
            f"{_e(fmt_n(reid.get('below_k')))} below, {_e(fmt_n(reid.get('linkable')))} linked "
            f"<span class=small>of {_e(fmt_n(reid.get('rows')))}</span>")


def _run_heading(s: RunSummary) -> str:
    badges = _badge(s.status, run_label(s).split(" (")[0])
    if s.kind == "preview" and s.status != "preview":
        badges += " " + _badge("preview", "PREVIEW")
    if s.verified is False:
        badges += " " + _badge("failed", "UNVERIFIED: see the chain's verdict")
    facts = [f"run {s.run}", f"{s.user or '?'}@{s.host or '?'}", f"retention {s.version or '?'}"]
    if s.policy_file_sha256:
        facts.append(f"policy file {s.policy_file_sha256[:12]}")
    if s.exit_code is not None:
        facts.append(f"exit {s.exit_code}")
    if isinstance(s.duration_s, int | float):
        facts.append(f"{s.duration_s:.1f} s")
    notes = [f"Never ended; found by run {s.interrupted_by}." if s.interrupted_by else ""]
    notes += [_purge_line(pg).capitalize() for pg in s.purges]
    notes += [f"Batch {r.get('batch')} of {r.get('policy')} checked by run {r.get('run')}: {r.get('result')}."
              for r in s.recovered]  # fmt: skip
    return (f'<tr class="runhead"><td colspan="10"><span class="when">{_e(fmt_ts(s.started))}</span> {badges}'
            f' <span class="small">{_e(" · ".join(facts))}</span>'
            + "".join(f'<div class="small">{_e(n)}</div>' for n in notes if n) + "</td></tr>")  # fmt: skip


def _policy_row(r: PolicyRow) -> str:
    # The basis is in the policies table; child rows have a column.
    notes = [n for n in _notes(r) if not n.startswith(("basis: ", "child rows"))]
    child = fmt_n(sum(r.cascaded.values())) if r.cascaded else ""
    numbers = "".join(f'<td class="n">{_e(fmt_n(v))}</td>'
                      for v in (r.due, r.held, r.deferred, r.deleted, r.anonymised))
    return (f"<tr><td><b>{_e(r.policy)}</b>" + "".join(f'<div class="small">{_e(n)}</div>' for n in notes)
            + f"</td><td>{_e(r.action)}</td><td class=nowrap>{_e(fmt_cutoff(r.cutoff))}</td>{numbers}"
            f'<td class="n">{_e(child)}</td><td>{_badge(r.status)}</td></tr>')  # fmt: skip


def _runs_table(runs: Sequence[RunSummary]) -> str:
    head = ('<h2>Runs</h2><table class="runs"><thead><tr><th>Policy</th><th>Action</th><th>Cut-off</th>'
            '<th class="n">Due</th><th class="n">Held</th><th class="n">Deferred</th>'
            '<th class="n">Deleted</th><th class="n">Anonymised</th>'
            '<th class="n">Child rows</th><th>Result</th></tr></thead>')  # fmt: skip
    bodies = []
    for s in runs:
        kind = STATUS_CLASS.get(s.status, "muted")
        rows = "".join(map(_policy_row, s.policies)) or '<tr><td colspan="10">No policy was started.</td></tr>'
        if s.verified is False:
            kind = "bad"
        elif s.kind == "preview" and kind in ("ok", "info"):
            kind = "preview"
        bodies.append(f'<tbody class="run {kind}">'
                      f"{_run_heading(s)}{rows}</tbody>")  # fmt: skip
    return head + "".join(bodies) + "</table>"

"""The printable preview of `retention run --dry-run --format html -o FILE`: a page a DPO signs.

One self-contained page (inline CSS, no script, no external asset: it is printed, mailed and
archived with the decision): the night in one line, each policy's description, basis, rule
and counts, the as-of moment, the policy file's SHA-256 (what exactly was approved), and a
sign-off block. Every number carries a ``data-count`` attribute so that a test (or a script)
can read it back from the rendered page.
"""

from __future__ import annotations

import html
from typing import Any

import pendulum

from retention.engine.runner import PolicyOutcome, RunResult
from retention.reports.run import rule_words, totals, value_words, when_words

CSS = """
:root{--ink:#1c2430;--muted:#5b6675;--line:#c9d0d8;--soft:#f3f5f7;--info:#1f5fa8;--infobg:#e8f0fb}
*{box-sizing:border-box}
body{margin:0;background:#eef0f3;color:var(--ink);font:14px/1.45 "Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:960px;margin:24px auto;background:#fff;padding:36px 44px;box-shadow:0 1px 4px rgba(0,0,0,.08)}
h1{font-size:1.7em;margin:2px 0 12px}
h2{font-size:1.15em;margin:28px 0 8px;padding-bottom:4px;border-bottom:2px solid var(--ink)}
h3{font-size:1.05em;margin:0 0 6px}
.kicker{text-transform:uppercase;letter-spacing:.12em;font-size:.78em;color:var(--muted);font-weight:600}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;margin:0;font-size:.93em}
.meta dt{color:var(--muted)}.meta dd{margin:0;font-weight:600}
.mono{font-family:"DejaVu Sans Mono",Consolas,monospace;font-size:.86em;word-break:break-all}
.summary{margin:20px 0 6px;border:2px solid var(--info);background:var(--infobg);border-radius:6px;padding:12px 16px;
font-size:1.05em}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:10px;margin-top:12px}
.card{border:1px solid var(--line);border-radius:6px;padding:10px 12px;background:#fff}
.card b{display:block;font-size:1.6em}.card span{font-size:.86em;color:var(--muted)}
.note{color:var(--muted);font-size:.9em;margin:6px 0}
.partial{border-left:4px solid #9a5b00;background:#fff4e0;padding:8px 12px;margin:12px 0}
section.policy{border:1px solid var(--line);border-radius:6px;padding:14px 18px;margin:14px 0;break-inside:avoid}
section.policy p{margin:4px 0}
table{border-collapse:collapse;font-size:.92em;margin-top:8px}
td,th{padding:3px 12px 3px 0;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums;font-weight:600}
.signoff{margin-top:34px;border:1.5px solid var(--ink);border-radius:6px;padding:16px 20px;break-inside:avoid}
.signoff .lines{display:grid;grid-template-columns:max-content 1fr;gap:22px 16px;margin-top:12px}
.signoff .line{border-bottom:1px solid var(--ink);min-height:1.6em}
@media print{body{background:#fff}main{box-shadow:none;margin:0;max-width:none;padding:0}
@page{margin:16mm}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _count(name: str, value: int) -> str:
    return f'<span data-count="{_e(name)}">{value:,}</span>'


def _policy(o: PolicyOutcome) -> str:
    rows = [
        ("past their term, not held (due)", "due", o.due),
        ("to delete", "to_delete", o.to_delete),
        ("to anonymise", "to_anonymise", o.to_anonymise),
        ("kept under a hold", "held", o.held),
        ("waiting for records that must stay (deferred)", "deferred", o.deferred),
    ]
    if o.already_anonymised:
        rows.append(("of these, anonymised on an earlier night", "already_anonymised", o.already_anonymised))
    rows += [(f"rows of {child} deleted with them", f"cascaded.{child}", n) for child, n in o.cascaded.items()]
    body = "".join(f'<tr><td>{_e(label)}</td><td class="n">{_count(key, n)}</td></tr>' for label, key, n in rows)
    reasons = ""
    if o.deferred_reasons:
        parts = ", ".join(f"{n:,} by {_e(t)}" for t, n in o.deferred_reasons.items())
        overlap = (" A row referenced from several tables is counted under each."
                   if sum(o.deferred_reasons.values()) > o.deferred else "")
        reasons = f'<p class="note">Still referenced: {parts}.{overlap}</p>'
    status = "" if o.status == "ok" else f'<p class="partial">Status: {_e(o.status)}. {_e(o.error or "")}</p>'
    holds = " or ".join(f"{_e(c)} = {_e(value_words(v))}" for c, v in o.exclude.items())
    return (
        f'<section class="policy" data-policy="{_e(o.name)}">'
        f"<h3>{_e(o.name)} <span class=\"note\">({_e(o.database)}.{_e(o.table)})</span></h3>"
        + (f"<p>{_e(' '.join(o.description.split()))}</p>" if o.description else "")
        + f"<p><b>Basis:</b> {_e(' '.join(o.basis.split())) if o.basis else '<i>none given</i>'}</p>"
        f"<p><b>Rule:</b> {_e(rule_words(o))}.</p>"
        + (f"<p><b>Hold:</b> rows with {holds} are kept.</p>" if holds else "")
        + f'<p><b>Cut-off:</b> events up to {_e(o.cutoff_local)} <span class="mono">({_e(o.cutoff)})</span></p>'
        f"{status}<table>{body}</table>{reasons}{_reidentification(o)}</section>"
    )


def _reidentification(o: PolicyOutcome) -> str:
    """The check on the rows the policy leaves anonymised: the DPO signs for "anonymised" too."""
    reid = o.reidentification
    if reid is None:
        return ""
    after = "if it is let through" if reid.get("if_let_through") else "after this run"
    if not reid.get("rows"):
        return f'<p class="note" data-reid="none"><b>Re-identification check:</b> no anonymised rows {after}.</p>'
    qi = ", ".join(reid.get("quasi_identifiers") or []) or "no column"
    verdict = "passes" if reid.get("passed") else "FAILS"
    links = ", ".join(f"{n:,} via {_e(t)}" for t, n in (reid.get("links") or {}).items())
    return (
        f'<p data-reid="{"passed" if reid.get("passed") else "failed"}"><b>Re-identification check {verdict}:</b> '
        f"of {_count('reid.rows', reid['rows'])} rows anonymised {after}, the smallest group sharing "
        f"{_e(qi)} has k = {_count('reid.k', reid['k'])} (needed: {_count('reid.k_anonymity', reid['k_anonymity'])}); "
        f"{_count('reid.below_k', reid['below_k'])} rows are in smaller groups and "
        f"{_count('reid.linkable', reid['linkable'])} are still linked by a foreign key to kept personal data"
        + (f" ({links})" if links else "") + ".</p>"
        + "".join(f'<p class="partial">{_e(w)}</p>' for w in o.warnings if "re-identification" in w.lower())
    )


def render_preview_html(result: RunResult) -> str:
    t = totals(result)
    when = when_words(result)
    as_of = pendulum.parse(result.as_of)
    local = as_of.strftime("%Y-%m-%d %H:%M") if isinstance(as_of, pendulum.DateTime) else result.as_of
    partial = ""
    if result.not_selected:
        partial = (f'<p class="partial" data-partial="true">Only {_e(", ".join(o.name for o in result.policies))}: '
                   f"counted as if the other policies ({_e(', '.join(result.not_selected))}) did not run; "
                   "the full run may defer fewer rows.</p>")
    earlier = (f" Of the waiting rows, {_count('already_anonymised', t.already_anonymised)} were anonymised on an "
               "earlier night." if t.already_anonymised else "")
    children = (f" {_count('children', t.children)} child rows go with the deleted rows." if t.children else "")
    if t.blocked_by:
        children += (f" Not counted: {_count('blocked', t.blocked)} rows of {_e(', '.join(t.blocked_by))}, which a "
                     "safety guard (max_fraction) blocks.")
    cards = "".join(
        f'<div class="card"><b>{_count(key, n)}</b><span>{_e(label)}</span></div>'
        for key, n, label in (("deleted", t.deleted, "rows deleted"), ("anonymised", t.anonymised, "rows anonymised"),
                              ("held", t.held, "kept under a hold"),
                              ("waiting", t.waiting, "waiting for records that must stay"))
    )
    title = "Retention preview" if result.dry_run else "Retention run"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} as of {_e(local)}</title>
<style>{CSS}</style></head>
<body><main>
<div class="kicker">{'Preview: nothing was changed' if result.dry_run else 'Enforcement run'}</div>
<h1>{_e(title)}: what the retention policies do {_e(when.lower() if when == 'Tonight' else 'by ' + local)}</h1>
<dl class="meta">
<dt>As of</dt><dd data-field="as_of">{_e(result.as_of)}</dd>
<dt>Time zone</dt><dd>{_e(result.timezone or '')}</dd>
<dt>Policy file SHA-256</dt><dd class="mono" data-field="policy_file_sha256">{_e(result.policy_file_sha256)}</dd>
<dt>Run</dt><dd class="mono">{_e(result.run)}</dd>
</dl>
<div class="summary"><b>{_e(when)}:</b> {_count('deleted', t.deleted)} deleted,
{_count('anonymised', t.anonymised)} anonymised, {_count('held', t.held)} kept under a hold,
{_count('waiting', t.waiting)} waiting for records that must stay.{children}{earlier}
<div class="cards">{cards}</div></div>
{partial}
<h2>Policies</h2>
{''.join(_policy(o) for o in result.policies)}
<div class="signoff">
<h2 style="margin-top:0">Sign-off</h2>
<p>I have reviewed this preview against the policy file with the SHA-256 above and approve
the enforcement it describes.</p>
<div class="lines">
<span>Name</span><span class="line"></span>
<span>Role</span><span class="line"></span>
<span>Date</span><span class="line"></span>
<span>Signature</span><span class="line" style="min-height:3.2em"></span>
</div></div>
</main></body></html>
"""

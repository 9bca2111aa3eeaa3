"""What ``retention plan`` and ``retention plan show`` print: a plan for the person who signs it.

Text for a terminal, a self-contained printable HTML page (the audit page's stylesheet, no
scripts or external assets), or the counts as JSON. Keys are shown only as the first few of
each fate: the file holds them all.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from retention.approval import plan as planfile
from retention.reports.audit_html import CSS

FATE_WORDS = {"delete": "to delete", "anonymise": "to anonymise", "defer": "deferred (still referenced)"}
RULE_ORDER = ("table", "key", "after", "after_timezone", "retain", "align", "minimum", "minimum_align",
              "where", "exclude", "action", "on_referenced", "cascade", "holds", "max_fraction", "approval")


def _n(value: int) -> str:
    return f"{value:,}".replace(",", " ")


def _rule_line(rule: dict[str, Any]) -> str:
    parts = []
    for name in RULE_ORDER:
        value = rule.get(name)
        if value in (None, {}, [], "none") and name not in ("retain", "action"):
            continue
        if isinstance(value, dict):  # as the policy file writes it, not as Python prints it
            value = "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in value.items()) + "}"
        elif isinstance(value, list):
            value = "[" + ", ".join(map(str, value)) + "]"
        parts.append(f"{name}: {value}")
    return "; ".join(parts)


def as_json(doc: dict[str, Any], sha: str) -> dict[str, Any]:
    """The plan without its keys: what a script needs to decide or to report."""
    return {
        "plan": sha, "format": doc["format"], "created": doc["created"], "as_of": doc["as_of"],
        "policy_file": doc.get("policy_file"), "policy_file_sha256": doc["policy_file_sha256"],
        "databases": doc["databases"], "approvals": doc.get("approvals", []),
        "policies": [{k: v for k, v in p.items() if k != "keys"} for p in doc["policies"]],
    }


def _approvals_lines(doc: dict[str, Any], sha: str) -> list[str]:
    approvals = doc.get("approvals") or []
    if not approvals:
        return ["Approvals: none yet (retention approve PLAN --by NAME)"]
    lines = ["Approvals:"]
    for a in approvals:
        same = "" if a.get("plan") == sha else "  [FOR OTHER CONTENT: the file changed after this approval]"
        who = a["by"] + (f" ({a['role']})" if a.get("role") else "")
        lines.append(f"  {a['at']}  {who}" + (f": {a['note']}" if a.get("note") else "") + same)
    return lines


def render_text(doc: dict[str, Any], sha: str, path: Path, show_keys: int = 10) -> str:
    lines = [f"Plan {path}", f"  SHA-256      {sha}", f"  made         {doc['created']}",
             f"  as of        {doc['as_of']}",
             f"  policy file  {doc.get('policy_file')} (SHA-256 {doc['policy_file_sha256']})"]
    for name, ident in doc["databases"].items():
        shown = ", ".join(f"{k} {v}" for k, v in ident.items() if v is not None)
        lines.append(f"  database     {name}: {shown}")
    lines.append("")
    for pk in planfile.policies(doc, path):
        p, c = pk.entry, pk.entry["counts"]
        lines.append(f"== {p['name']}  ({p['database']}.{p['table']}, key {p['key_column']})")
        lines.append(f"   rule: {_rule_line(p['rule'])}")
        lines.append(f"   cut-off {p['cutoff']}; basis: {p.get('basis') or '-'}")
        lines.append(f"   {_n(c['table_rows'])} rows; past term {_n(c['due'] + c['held'])}: held {_n(c['held'])}"
                     + (f" ({', '.join(f'{k} {_n(v)}' for k, v in c['held_reasons'].items())})"
                        if c.get("held_reasons") else "")
                     + f", due {_n(c['due'])}; unreadable dates kept {_n(c['unreadable'])}")
        for fate in planfile.FATES:
            keys = pk.fates[fate]
            if not keys:
                continue
            head = ", ".join(map(str, keys[:show_keys])) + (", ..." if len(keys) > show_keys else "")
            lines.append(f"   {_n(len(keys)):>9} {FATE_WORDS[fate]}: {head}")
        if c.get("deferred_reasons"):
            reasons = c["deferred_reasons"].items()
            lines.append("             deferred by: " + ", ".join(f"{k} {_n(v)}" for k, v in reasons))
        if c.get("cascaded"):
            lines.append("             with them: " + ", ".join(f"{_n(v)} {k}" for k, v in c["cascaded"].items()))
        if c.get("detached"):
            lines.append("             detached first: " + ", ".join(f"{_n(v)} {k}"
                                                                    for k, v in c["detached_columns"].items()))
        lines.append("")
    lines += _approvals_lines(doc, sha)
    return "\n".join(lines) + "\n"


def render_html(doc: dict[str, Any], sha: str, path: Path, show_keys: int = 10) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Retention plan {e(sha[:12])}</title><style>{CSS}</style></head><body><main>",
           '<div class="kicker">Retention plan: for approval</div>', f"<h1>{e(path.name)}</h1>",
           '<dl class="meta">']
    for label, value in (("SHA-256", sha), ("Made", doc["created"]), ("As of", doc["as_of"]),
                         ("Policy file", f"{doc.get('policy_file')} ({doc['policy_file_sha256'][:16]}...)")):
        out.append(f"<div><dt>{e(label)}</dt><dd class=\"mono\">{e(str(value))}</dd></div>")
    for name, ident in doc["databases"].items():
        shown = ", ".join(f"{k} {v}" for k, v in ident.items() if v is not None)
        out.append(f"<div><dt>Database {e(name)}</dt><dd class=\"mono\">{e(shown)}</dd></div>")
    out.append("</dl><h2>What the run will change</h2><table><thead><tr><th>Policy</th><th>Rule</th>"
               "<th>Due</th><th>Held</th><th>Delete</th><th>Anonymise</th><th>Deferred</th><th>With them</th>"
               "</tr></thead><tbody>")
    samples = []
    for pk in planfile.policies(doc, path):
        p, c = pk.entry, pk.entry["counts"]
        cascaded = ", ".join(f"{_n(v)} {k}" for k, v in c.get("cascaded", {}).items()) or "-"
        out.append(f"<tr><td><b>{e(p['name'])}</b><br><span class=\"small\">{e(p['database'])}.{e(p['table'])}"
                   f"</span></td><td class=\"small\">{e(_rule_line(p['rule']))}<br>cut-off {e(p['cutoff'])}</td>"
                   # A no-break space between thousands: a narrow column must not split a number.
                   + "".join(f"<td>{_n(c[k])}</td>".replace(" ", "\u00a0")
                             for k in ("due", "held", "delete", "anonymise", "defer"))
                   + f"<td>{e(cascaded)}</td></tr>")
        for fate in planfile.FATES:
            keys = pk.fates[fate]
            if keys:
                head = ", ".join(map(str, keys[:show_keys])) + (", ..." if len(keys) > show_keys else "")
                samples.append(f"<li><b>{e(p['name'])}</b> {e(FATE_WORDS[fate])} ({_n(len(keys))}): "
                               f"<span class=\"mono\">{e(head)}</span></li>")
    out.append("</tbody></table>")
    if samples:
        out.append("<h2>First keys</h2><ul>" + "".join(samples) + "</ul>")
    out.append("<h2>Approvals</h2><ul>" + "".join(f"<li>{e(line.strip())}</li>"
                                                 for line in _approvals_lines(doc, sha)[1:]) + "</ul>")
    if not doc.get("approvals"):
        out.append("<p>None yet. Signed:</p><p>Name ____________________ Role __________ Date __________</p>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"

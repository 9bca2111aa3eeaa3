"""`retention audit find`: every run and batch that touched one key of one policy.

The question a data subject (or the DPO answering one) asks: "what did you do with my
record, when, and on what ground?". The answer is in the audit log's ``batch`` entries, which
list the primary keys they changed, with the rule of their run in its ``run.start``.

The log grows for years (a million lines is a few years of a busy shop), so it is streamed:
lines are canonical JSON, so a line that cannot be about the key (wrong event, wrong policy,
the key's text not between ``[``/``,`` and ``,``/``]``) is skipped without being parsed, and
memory holds only the rule of each run and the hits, never the log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retention.audit.log import SAFE_INT, read_raw_lines

_RUN_START = b'"event":"run.start"'
_BATCH = b'"event":"batch"'
_COMMITTED = b'"event":"batch.committed"'
_RECOVERED = b'"event":"batch.recovered"'
# A subject erasure or its replay (docs/rights.md): its batches' rule is the request.
_ERASURES = (b'"event":"erase.start"', b'"event":"replay.start"')


@dataclass
class Rule:
    """A policy as its run applied it (from ``run.start``)."""

    retain: str | None = None
    align: str | None = None
    cutoff: str | None = None
    basis: str | None = None
    as_of: str | None = None
    dry_run: bool = False
    # The request reference, for the batches of `retention erase` / `retention replay`.
    erasure: str | None = None


@dataclass
class Touch:
    """One batch that listed the key: what was done, when, and under which rule."""

    run: str
    ts: str
    line: int
    batch: Any
    policy: str
    database: str | None
    table: str | None
    key_column: str | None
    action: str
    # "committed"; "applied"/"not applied"/"partly applied"/"unknown" as a later run's
    # batch.recovered found; or "fate unknown" (an intent nobody has checked yet)
    outcome: str
    columns: list[str] = field(default_factory=list)
    # Child rows deleted with the batch's keys (per table, for the whole batch: the log counts
    # them per batch, not per key)
    cascaded: dict[str, int] = field(default_factory=dict)
    batch_keys: int = 0
    rule: Rule = field(default_factory=Rule)
    checked_by: str | None = None

    @property
    def done(self) -> bool:
        return self.outcome in ("committed", "applied")


@dataclass
class FindResult:
    policy: str
    key: str
    table: str | None
    touches: list[Touch]
    lines: int
    runs_with_policy: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _key_pattern(key: str) -> re.Pattern[bytes]:
    """The key as a whole element of a JSON array, as an integer or as a string."""
    forms = [json.dumps(key, ensure_ascii=False).encode()]
    if re.fullmatch(r"-?(0|[1-9][0-9]*)", key) and abs(int(key)) <= SAFE_INT:
        forms.append(key.encode())
    alternatives = b"|".join(re.escape(f) for f in forms)
    return re.compile(rb"[\[,](?:" + alternatives + rb")[,\]]")


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _has_key(keys: Any, key: str) -> bool:
    return isinstance(keys, list) and any(str(k) == key for k in keys if not isinstance(k, bool))


def find(path: Path, policy: str, key: str, table: str | None = None) -> FindResult:
    """Every ``batch`` of ``policy`` (on ``table``, if given) whose keys include ``key``, with
    what became of it (committed, recovered by a later run, or unknown) and its run's rule."""
    policy_bytes = b'"policy":' + json.dumps(policy, ensure_ascii=False).encode()
    key_re = _key_pattern(key)
    # The key's text, in either form: a plain substring search rules out most lines far faster
    # than the pattern.
    key_text = json.dumps(key, ensure_ascii=False)[1:-1].encode()
    rules: dict[str, Rule] = {}
    touches: list[Touch] = []
    pending: dict[tuple[str, Any], Touch] = {}
    lines = 0
    for number, raw in read_raw_lines(path):
        lines = number
        if _BATCH in raw:
            if key_text not in raw or policy_bytes not in raw or not key_re.search(raw):
                continue
            e = _parse(raw)
            if (e is None or e.get("event") != "batch" or e.get("policy") != policy
                    or not _has_key(e.get("keys"), key) or (table is not None and e.get("table") != table)):
                continue
            run = str(e.get("run"))
            touch = Touch(
                run=run, ts=str(e.get("ts")), line=number, batch=e.get("batch"), policy=policy,
                database=e.get("database"), table=e.get("table"), key_column=e.get("key_column"),
                action=str(e.get("action")), outcome="fate unknown", columns=list(e.get("columns") or []),
                cascaded=dict(e.get("cascaded") or {}), batch_keys=len(e.get("keys") or []),
                rule=rules.get(run, Rule()),
            )  # fmt: skip
            touches.append(touch)
            pending[(run, touch.batch)] = touch
        elif _RUN_START in raw:
            e = _parse(raw)
            if e is None:
                continue
            for p in e.get("policies") or []:
                if isinstance(p, dict) and p.get("name") == policy:
                    rules[str(e.get("run"))] = Rule(
                        retain=p.get("retain"), align=p.get("align"), cutoff=p.get("cutoff"),
                        basis=p.get("basis"), as_of=e.get("as_of"), dry_run=bool(e.get("dry_run")),
                    )
        elif any(marker in raw for marker in _ERASURES):
            e = _parse(raw)
            if e is None:
                continue
            for p in e.get("policies") or []:
                if isinstance(p, dict) and p.get("name") == policy:
                    rules[str(e.get("run"))] = Rule(basis=p.get("basis"), as_of=e.get("as_of"),
                                                    erasure=str(e.get("request")))
        elif pending and _COMMITTED in raw and policy_bytes in raw:
            e = _parse(raw)
            touch = pending.pop((str(e.get("run")), e.get("batch")), None) if e else None
            if touch is not None:
                touch.outcome = "committed"
        elif pending and _RECOVERED in raw and policy_bytes in raw:
            e = _parse(raw)
            touch = pending.pop((str(e.get("of_run")), e.get("batch")), None) if e else None
            if touch is not None and e is not None:
                touch.outcome, touch.checked_by = str(e.get("result")), str(e.get("run"))
    return FindResult(policy, key, table, touches, lines, len(rules))


# -- rendering ------------------------------------------------------------------------------

_DONE = {"delete": "deleted", "anonymise": "anonymised", "detach": "detached (its reference set to NULL)"}


def _what(t: Touch) -> str:
    verb = _DONE.get(t.action, t.action)
    if t.outcome in ("committed", "applied"):
        return verb
    if t.outcome == "fate unknown":
        return f"to be {verb}: the run stopped before the commit was recorded, and no later run has checked it yet"
    return f"to be {verb}: a later run found the batch {t.outcome}"


def _rule(r: Rule) -> str:
    if r.erasure is not None:
        return (f"subject erasure, request {r.erasure}: the subject's rows past their own policy's statutory "
                f"minimum and not on hold (as of {r.as_of})")
    if r.retain is None and r.cutoff is None:
        return "not recorded (the run's run.start is not in the log)"
    align = f", aligned to the {r.align.replace('_', ' ')}" if r.align and r.align != "none" else ""
    return f"retain {r.retain}{align}: due when its event is at or before {r.cutoff} (run as of {r.as_of})"


def render_text(result: FindResult) -> Iterator[str]:
    where = f" in table {result.table}" if result.table else ""
    if not result.touches:
        yield (f"No batch of policy {result.policy!r} touched key {result.key}{where} "
               f"({result.lines:,} lines, {result.runs_with_policy:,} runs of the policy read).")
        return
    runs = len({t.run for t in result.touches})
    yield (f"Key {result.key} of policy {result.policy!r}{where}: {len(result.touches)} batch(es) in {runs} run(s) "
           f"({result.lines:,} lines read; the chain is not checked here: `retention audit verify`)")
    for t in result.touches:
        yield ""
        yield f"{t.ts}  run {t.run}  batch {t.batch}  (log line {t.line})"
        yield f"  {t.database}.{t.table} {t.key_column} = {result.key}: {_what(t)}"
        if t.checked_by:
            yield f"  checked by run {t.checked_by}"
        if t.columns:
            yield f"  columns changed: {', '.join(t.columns)}"
        cascade = {table: n for table, n in t.cascaded.items() if n}
        if cascade:
            rows = ", ".join(f"{table} {n:,}" for table, n in cascade.items())
            yield f"  cascade: child rows deleted with this batch's {t.batch_keys:,} key(s): {rows}"
        yield f"  rule: {_rule(t.rule)}"
        yield f"  basis: {t.rule.basis or '(none recorded)'}"

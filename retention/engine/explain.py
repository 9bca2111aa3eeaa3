"""``retention explain POLICY KEY``: one row's event, term end, and fate tonight, and why.

The question a data subject asks. The fate comes from the same SQL the run uses (the
policy's :class:`~retention.engine.planning.Plan`, compiled with every policy of the file in
run order, so that what an earlier policy removes tonight no longer holds the row back); the
term end is :func:`retention.policy.dates.expires_at` of the row's event, for people. When
the row is gone or already anonymised, the audit log (read only) says on which night.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pendulum
import sqlalchemy as sa

from retention.audit import log as audit
from retention.engine.planning import Plan, _jsonable, _match
from retention.engine.runner import make_plans, resolve_as_of
from retention.engine.validation import connect_and_check
from retention.errors import RetentionError, UsageError
from retention.policy.dates import expires_at
from retention.policy.model import Policy, PolicyFile

LISTED = 10  # referencing keys named per table; the rest are counted


@dataclass
class Referrer:
    table: str
    count: int
    keys: list[Any]
    # The latest term end among them (their policy's), or why some have none.
    latest_term_end: str | None = None
    without_term: int = 0


@dataclass
class Explanation:
    policy: str
    table: str
    key: Any
    as_of: str
    found: bool = True
    event: str | None = None
    term_end: str | None = None
    # delete | anonymise | held | deferred | kept | not covered | anonymised | absent | blocked
    fate: str = ""
    reasons: list[str] = field(default_factory=list)
    goes: str | None = None
    referenced_by: list[Referrer] = field(default_factory=list)
    cascade: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _key_value(plan: Plan, text: str) -> Any:
    try:
        kind = plan.key.type.python_type
    except NotImplementedError:
        return text
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"policy '{plan.policy.name}': key {text!r} is not a whole number "
                             f"({plan.policy.table}.{plan.key.name} is an integer column)") from None
    return text


def _moment(value: Any) -> str:
    """A moment for people: to the second (an aligned term ends at 23:59:59.999999)."""
    if isinstance(value, dt.datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
        if value.tzinfo is None:
            return text
        name = value.timezone_name if isinstance(value, pendulum.DateTime) else None
        return f"{text} {name}" if name else text + value.strftime(" %z")
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _term_end(policy: Policy, event: Any, timezone: str) -> pendulum.DateTime | None:
    """When the row's term ends, as the run decides it.

    A column with its own zone, or naive values of another zone (``after_timezone``), is read
    as the file's wall clock first, because that is where the run aligns the term: an invoice
    of 2019-12-31 23:30 UTC is book year 2020 in Amsterdam. Such an end carries the file's zone.
    """
    if not isinstance(event, (dt.date, dt.datetime)):
        return None
    if not isinstance(event, dt.datetime) or (event.tzinfo is None and not policy.after_timezone):
        return expires_at(event, policy.retain, policy.align)  # type: ignore[arg-type]
    local = pendulum.instance(event, tz=policy.after_timezone or "UTC").in_timezone(timezone)
    wall = pendulum.naive(local.year, local.month, local.day, local.hour, local.minute, local.second,
                          local.microsecond)
    end = expires_at(wall, policy.retain, policy.align)
    return pendulum.datetime(end.year, end.month, end.day, end.hour, end.minute, end.second, end.microsecond,
                             tz=timezone)


def _history(path: Path, policy: str, key: Any) -> list[dict[str, Any]]:
    """The committed batches of ``policy`` that changed ``key``, from the audit log (read only)."""
    if not path.exists():
        return []
    wanted = _jsonable(key)
    found: dict[tuple[Any, Any], dict[str, Any]] = {}
    done: set[tuple[Any, Any]] = set()
    try:
        for e in audit.read_entries(path, strict=False):
            event = e.get("event")
            if event == "batch" and e.get("policy") == policy and wanted in (e.get("keys") or []):
                found[(e.get("run"), e.get("batch"))] = {"ts": e.get("ts"), "run": e.get("run"),
                                                         "batch": e.get("batch"), "action": e.get("action")}
            elif event == "batch.committed":
                done.add((e.get("run"), e.get("batch")))
            elif event == "batch.recovered" and e.get("result") in ("applied", "partly applied"):
                done.add((e.get("of_run"), e.get("batch")))
    except (OSError, RetentionError):
        return []
    return [h for k, h in found.items() if k in done]


def _referrers(conn: sa.Connection, plan: Plan, model: PolicyFile, key: Any) -> list[Referrer]:
    """Per blocking foreign key: the rows that reference this row (or its cascade rows) and stay
    tonight, and when the latest of them reaches its own term."""
    out: list[Referrer] = []
    for edge in plan.blocking_edges():
        t = plan.table.alias("ex_t")
        member, conds = plan._owned(edge.parent, t)
        child_table = plan.schema.tables[edge.child]
        child = child_table.alias("ex_c")
        conds = conds + [child.c[cc] == member.c[pc] for cc, pc in zip(edge.child_cols, edge.parent_cols, strict=True)]
        conds += [sa.not_(plan.removed_earlier(edge.child, child)), t.c[plan.key.name] == key]
        pk = list(child_table.primary_key.columns) or [child_table.c[edge.child_cols[0]]]
        theirs = next((p for p in model.policies if p.table == edge.child
                       and model.database_of(p) == plan.database), None)
        cols: list[sa.ColumnElement[Any]] = [child.c[c.name] for c in pk]
        if theirs is not None:
            cols.append(child.c[theirs.after])
            covered = sa.and_(*[_match(child, c, v) for c, v in theirs.where.items()]) if theirs.where else sa.true()
            cols.append(sa.case((covered, 1), else_=0))
        rows = conn.execute(sa.select(*cols).where(*conds).order_by(*[child.c[c.name] for c in pk])).all()
        if not rows:
            continue
        ref = Referrer(edge.child, len(rows), [_jsonable(r[0] if len(pk) == 1 else list(r[:len(pk)]))
                                               for r in rows[:LISTED]])
        if theirs is None:
            ref.without_term = len(rows)
        else:
            ends = []
            for r in rows:
                end = _term_end(theirs, r[len(pk)], model.timezone) if r[len(pk) + 1] else None
                if end is None:
                    ref.without_term += 1
                else:
                    ends.append(end)
            if ends:
                ref.latest_term_end = _moment(max(ends))
        out.append(ref)
    return out


def explain(model: PolicyFile, policy_name: str, key_text: str,
            as_of: pendulum.DateTime | None = None) -> Explanation:
    policy = next((p for p in model.policies if p.name == policy_name), None)
    if policy is None:
        known = ", ".join(p.name for p in model.policies)
        raise UsageError(f"unknown policy {policy_name!r}; defined: {known}")
    moment = resolve_as_of(as_of, model.timezone, dry_run=True)
    connected = connect_and_check(model, model.policies, readonly=True)
    try:
        plans = make_plans(model, model.policies, connected, moment)
        plan = next(pl for pl in plans if pl.policy.name == policy_name)
        key = _key_value(plan, key_text)
        _weigh_guards(plans[:plans.index(plan) + 1], connected.engines)
        with connected.engines[plan.database].connect() as conn:
            result = _explain(conn, plan, model, key, moment)
            conn.rollback()
        if plan.blocked_by_guard and result.fate in ("delete", "anonymise"):
            result.reasons.append(f"but the policy's safety guard (max_fraction {plan.policy.max_fraction:.0%}) "
                                  f"blocks it tonight: it would {result.fate} this row, and changes nothing")
            result.fate = "blocked"
    finally:
        connected.dispose()
    if result.fate in ("absent", "deferred", "anonymised"):
        result.history = _history(Path(model.audit.path), policy_name, key)
        last = result.history[-1] if result.history else None
        if last is not None:
            when = pendulum.parse(last["ts"]).in_timezone(model.timezone).format("YYYY-MM-DD HH:mm")  # type: ignore[union-attr]
            if result.fate == "absent" and last["action"] == "delete":
                result.reasons.append(f"deleted on {when} (run {last['run']}, batch {last['batch']})")
            elif result.fate != "absent" and last["action"] == "anonymise":
                result.reasons.append(f"anonymised on {when} (run {last['run']}, batch {last['batch']})")
    return result


def _weigh_guards(plans: list[Plan], engines: dict[str, sa.Engine]) -> None:
    """Mark the plans the run's safety guard blocks (without --force), in run order: a blocked
    policy removes nothing, so its rows still hold later policies' rows back, as in the run."""
    for pl in plans:
        with engines[pl.database].connect() as conn:
            counts = pl.count(conn)
            conn.rollback()
        share = pl.touched(counts) / counts.total if counts.total else 0.0
        pl.blocked_by_guard = share > pl.policy.max_fraction


def _explain(conn: sa.Connection, plan: Plan, model: PolicyFile, key: Any, moment: pendulum.DateTime) -> Explanation:
    p, t = plan.policy, plan.table
    out = Explanation(policy=p.name, table=p.table, key=_jsonable(key), as_of=moment.isoformat())
    flags = [
        t.c[p.after],
        sa.case((plan.past_term(t), 1), else_=0),
        sa.case((plan.held_match(t), 1), else_=0),
        sa.case((plan.pending(t), 1), else_=0) if p.action == "anonymise" or p.on_referenced == "anonymise"
        else sa.literal(1),
        sa.case((sa.and_(*[_match(t, c, v) for c, v in p.where.items()]), 1), else_=0) if p.where else sa.literal(1),
    ]
    # Every reason a row can be held for: its own `exclude`, a linked policy's, the hold registry.
    reasons = plan.hold_reasons(t)
    flags += [sa.case((cond, 1), else_=0) for cond in reasons.values()]
    row = conn.execute(sa.select(*flags).where(plan.key == key)).first()
    if row is None:
        out.found, out.fate = False, "absent"
        out.reasons.append(f"no row with {p.table}.{plan.key.name} = {key}")
        return out
    event, past, held, pending, covered = row[0], bool(row[1]), bool(row[2]), bool(row[3]), bool(row[4])
    holds = [_hold_words(plan, name) for name, f in zip(reasons, row[5:], strict=True) if f]
    out.event = None if event is None else _moment(event)
    end = _term_end(p, event, model.timezone)
    out.term_end = _moment(end) if end is not None else None
    again = "on the first run at or after " + (out.term_end or "its term end")
    if not covered:
        out.fate = "not covered"
        out.reasons.append("this policy only covers rows where "
                           + " and ".join(f"{c} = {_words(v)}" for c, v in p.where.items()))
        return out
    if event is None:
        out.fate = "kept"
        out.reasons.append(f"the event has not happened: {p.after} is empty")
        out.goes = f"{p.retain} after {p.after} is set"
        return out
    if not past:
        if p.action == "anonymise" and not pending:
            out.fate = "anonymised"
            out.reasons.append("already anonymised")
            return out
        if end is None:
            out.fate = "kept"
            out.reasons.append(f"{p.after} holds no date ({event!r}): never due")
            return out
        out.fate = "kept"
        out.reasons.append(f"inside its term: the term ends {out.term_end}")
        unless = " (unless a hold or a reference keeps it then)" if p.exclude or p.action == "delete" else ""
        out.goes = again + unless
        return out
    if held:
        out.fate = "held"
        out.reasons.append("past its term, kept under a hold: " + " or ".join(holds))
        out.goes = "on the first run after the hold is lifted"
        return out
    if p.action == "anonymise":
        out.fate = "anonymise"
        out.reasons.append("past its term, no hold")
        return out
    out.referenced_by = _referrers(conn, plan, model, key)
    if not out.referenced_by:
        out.fate = "delete"
        out.reasons.append("past its term, no hold, nothing that stays references it")
        for member in plan.tree:
            table = plan.schema.tables[member]
            n = conn.execute(sa.select(sa.func.count()).select_from(table).where(
                plan.owned_filter(member, table, lambda col: col == key))).scalar_one()
            out.cascade[member] = int(n)
        return out
    refs = "; ".join(_referrer_words(r) for r in out.referenced_by)
    if plan.detaches:
        out.fate = "delete"
        out.reasons.append(f"past its term, no hold; the records that must stay and still reference it are "
                           f"detached first (their foreign key set to NULL; they keep their own term): {refs}")
        return out
    if p.on_referenced == "anonymise" and pending:
        out.fate = "anonymise"
        out.reasons.append(f"past its term, no hold, but still referenced by records that must stay: {refs}; "
                           "anonymised instead (on_referenced: anonymise)")
    else:
        out.fate = "deferred"
        already = "; already anonymised" if p.on_referenced == "anonymise" else ""
        out.reasons.append(f"past its term, no hold, but still referenced by records that must stay: {refs}{already}")
    out.goes = _goes(out.referenced_by)
    return out


def _hold_words(plan: Plan, reason: str) -> str:
    """A hold reason (``table.column`` of a hold flag, or ``registry``) in words."""
    if reason == "registry":
        return "the hold registry (retention hold list)"
    table, _, column = reason.partition(".")
    holder = next((q for q in [plan.policy, *(o for o, _e in plan.hold_links)] if q.table == table), None)
    value = holder.exclude.get(column) if holder is not None else None
    where = "" if table == plan.policy.table else f" (a linked row of {table})"
    return f"{table}.{column} = {_words(value)}{where}" if holder is not None else reason


def _words(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _referrer_words(r: Referrer) -> str:
    more = f" and {r.count - len(r.keys)} more" if r.count > len(r.keys) else ""
    words = f"{r.table} {', '.join(map(str, r.keys))}{more}"
    if r.latest_term_end:
        words += f" (the last of them reaches its term {r.latest_term_end})"
    if r.without_term:
        words += f" ({r.without_term} of them with no term end yet)"
    return words


def _goes(refs: list[Referrer]) -> str:
    if any(r.without_term for r in refs):
        return "deleted once nothing references it; not foreseeable yet (a referencing record has no term end yet)"
    latest = max(r.latest_term_end for r in refs if r.latest_term_end)
    return f"deleted once nothing references it: on the first run at or after {latest}, unless something new does"


def render_text(e: Explanation, width: int = 100) -> str:
    """For people: one labelled line per fact, wrapped to ``width`` under the label's text."""
    lines = _lines(e)
    out = []
    for line in lines:
        out += textwrap.wrap(line, width=width, subsequent_indent=" " * 13, break_long_words=False,
                             break_on_hyphens=False) or [line]
    return "\n".join(out) + "\n"


def _lines(e: Explanation) -> list[str]:
    lines = [f"{e.policy}: {e.table} key {e.key}, as of {e.as_of}"]
    if e.found:
        lines.append(f"  event:     {e.event if e.event is not None else '(none yet)'}")
        lines.append(f"  term end:  {e.term_end or '-'}")
    lines.append(f"  tonight:   {e.fate}")
    for reason in e.reasons:
        if reason:
            lines.append(f"  why:       {reason}")
    if e.cascade:
        lines.append("  with:      " + ", ".join(f"{n} row(s) of {t}" for t, n in e.cascade.items()))
    if e.goes:
        lines.append(f"  goes:      {e.goes}")
    for h in e.history:
        lines.append(f"  history:   {h['action']} on {h['ts']} (run {h['run']}, batch {h['batch']})")
    return lines

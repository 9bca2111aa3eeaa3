"""The keys file of ``run --dry-run --keys FILE``: every key of the policy's table that is past
its term, with its fate tonight and why, one CSV line each (policy,table,key,fate,reason).

Fates: ``delete``; ``anonymise``; ``held`` (an ``exclude`` value matches); ``deferred`` (still
referenced by a row that stays: the reason names the referencing tables, and says when the row
was anonymised on an earlier night). They are the same relations the counts use
(:class:`~retention.engine.planning.Plan`), so the file agrees with the preview's numbers.

Streams: the keys are walked in key order in chunks (keyset pagination, never OFFSET), each
chunk's references looked up for its keys only; memory holds one chunk, whatever the table size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from retention.databases import dialects
from retention.engine.planning import Plan, _jsonable, _match

HEADER = ["policy", "table", "key", "fate", "reason"]
CHUNK = 10_000

Write = Callable[[list[Any]], None]


def _value(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _among(a: sa.FromClause, column: str, keys: list[Any], dialect: str) -> sa.ColumnElement[bool]:
    return dialects.key_in(a.c[column], keys, dialect)


def write_keys(conn: sa.Connection, plan: Plan, write: Write, chunk: int | None = None) -> int:
    """Write one line per past-term key of ``plan`` through ``write``; return how many."""
    chunk = chunk or CHUNK
    t, key, policy = plan.table, plan.key, plan.policy
    dialect = conn.dialect.name
    # The policy's own `exclude` and the holds that follow foreign keys to it (Plan.hold_links).
    excludes: list[tuple[str, sa.ColumnElement[bool]]] = [
        (f"{c} = {_value(v)}", _match(t, c, v)) for c, v in policy.exclude.items()]
    excludes += [(f"{other.table}.{c} = {_value(v)}", plan._linked_hold(t, other, edge, [c]))
                 for other, edge in plan.hold_links for c, v in other.exclude.items()]
    registry = plan.registry_hold(t)
    if registry is not None:  # `retention hold add` (engine/holds.py)
        excludes.append(("the hold registry", registry))
    cols: list[sa.ColumnElement[Any]] = [key]
    cols += [sa.case((cond, 1), else_=0) for _label, cond in excludes]
    track_pending = policy.action == "delete" and policy.on_referenced == "anonymise"
    if track_pending:
        cols.append(sa.case((plan.pending(t), 1), else_=0))
    edges = plan.blocking_edges() if policy.action == "delete" else []
    written = 0
    last: Any = None
    while True:
        query = sa.select(*cols).where(plan.past_term(t))
        if last is not None:
            query = query.where(key > last)
        rows = conn.execute(query.order_by(key).limit(chunk)).all()
        if not rows:
            return written
        last = rows[-1][0]
        free = [r[0] for r in rows if not any(r[1:1 + len(excludes)])]
        referenced: dict[Any, list[str]] = {}
        if edges and free:
            among = functools.partial(_among, column=key.name, keys=free, dialect=dialect)
            for edge in edges:
                stmt = plan._referenced_keys(edge, among)
                for (k,) in conn.execute(stmt):
                    tables = referenced.setdefault(k, [])
                    if edge.child not in tables:
                        tables.append(edge.child)
        for row in rows:
            k = row[0]
            holds = [label for (label, _cond), flag in zip(excludes, row[1:1 + len(excludes)], strict=True)
                     if flag]
            if holds:
                fate, reason = "held", "hold: " + " or ".join(holds)
            elif policy.action == "anonymise":
                fate, reason = "anonymise", "past its term"
            elif k in referenced:
                by = "referenced by " + ", ".join(referenced[k])
                if track_pending and row[-1]:
                    fate, reason = "anonymise", by + " (on_referenced: anonymise)"
                elif track_pending:
                    fate, reason = "deferred", by + "; already anonymised"
                else:
                    fate, reason = "deferred", by
            else:
                fate, reason = "delete", "past its term"
            write([policy.name, policy.table, _jsonable(k), fate, reason])
            written += 1

"""Whole partitions: a range partition all of whose rows are due goes in one statement.

A delete policy on a table range-partitioned on its ``after`` column (PostgreSQL declarative
range partitions, MariaDB ``RANGE``/``RANGE COLUMNS``) first looks at the partitions whose
whole range is past the term: the last value below the partition's exclusive upper bound (one
microsecond below it) is at or before the cut-off, in the column's own terms (an instant for a
column with a time zone, wall-clock time otherwise, ``after_timezone`` applied; a DATE column's
last day at or before the last due day). A bound inside a month-end window is not past the term
here (conservative: those rows go by batches). Such a partition is dropped whole only if every
row in it is due by the policy's own predicate (``where``, holds of the policy and linked ones,
readable dates: a MariaDB zero date is not due) and none is blocked (referenced by a row that
stays). Anything else falls back to the row batches of :mod:`retention.engine.execution`, which
also take the rest of the table.

The keys go into the audit log first, as ``batch`` intents naming the partition (in chunks of
:data:`KEYS_PER_ENTRY`), with the partition locked against writers; then the drop; then
``batch.committed``. PostgreSQL detaches and drops inside the transaction that holds the lock;
MariaDB holds ``LOCK TABLES ... WRITE`` across its (self-committing) ``DROP PARTITION``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from retention.databases import dialects
from retention.databases.dialects import RangePartition

if TYPE_CHECKING:
    from retention.engine.planning import Plan

KEYS_PER_ENTRY = 100_000


@dataclass
class Dropped:
    name: str
    rows: int
    batches: int


def unsupported(plan: Plan, dialect: str) -> str | None:
    """Why the policy cannot drop whole partitions (None: it can, where a partition qualifies)."""
    if dialect not in ("postgresql", "mysql"):
        return "only PostgreSQL and MariaDB partitions are read"
    if plan.policy.action != "delete":
        return "only delete policies drop partitions"
    if plan.tree:
        return "a policy with cascade tables deletes by batches"
    if plan.detaches and plan.blocking_edges():
        return "on_referenced: detach deletes by batches"
    if dialects.partitions_need_own_table(dialect) and (plan.hold_links or plan.blocking_edges()):
        return "holds or references through other tables: deleted by batches"
    return None


def _past_term(plan: Plan, upper: Any) -> bool:
    """Whether every value below ``upper`` (exclusive) is at or before the cut-off."""
    col = plan.table.c[plan.policy.after]
    cut = plan.column_cutoff
    if isinstance(col.type, sa.DateTime):
        if type(upper) is dt.date:
            upper = dt.datetime.combine(upper, dt.time())
        if not isinstance(upper, dt.datetime):
            return False
        # The bound is exclusive and no database stores finer than a microsecond: the partition's
        # last possible value is one microsecond below it. An aligned term ends at 23:59:59.999999,
        # so a year partition (to 1 January) is past the term exactly when its last day is.
        last = upper - dt.timedelta(microseconds=1)
        if upper.tzinfo is not None:
            return last <= cut.instant
        return last <= cut.local
    # A DATE column: the partition's last day is the day before its bound (or the bound's day,
    # for a bound later than midnight); due days end at cut.date, month-end windows included.
    if isinstance(upper, dt.datetime):
        last = upper.date() if upper.time() != dt.time() else upper.date() - dt.timedelta(days=1)
    elif isinstance(upper, dt.date):
        last = upper - dt.timedelta(days=1)
    else:
        return False
    return last <= cut.date


def expired(conn: sa.Connection, plan: Plan) -> list[RangePartition]:
    """The partitions of the policy's table partitioned on ``after`` whose range is past the term."""
    if unsupported(plan, conn.dialect.name):
        return []
    found = dialects.range_partitions(conn, plan.table) or []
    return [p for p in found if p.column == plan.policy.after and p.upper is not None and _past_term(plan, p.upper)]


def _tally(conn: sa.Connection, plan: Plan, part: RangePartition) -> tuple[int, int]:
    """(rows in the partition, rows of them the policy would remove tonight)."""
    frm, finish = dialects.partition_rows(plan.table, part.name, conn.dialect.name)
    ok = sa.and_(plan.due(frm), sa.not_(plan.blocked(frm)))
    query = finish(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((ok, 1), else_=0)), 0))
                   .select_from(frm))
    total, free = conn.execute(query).one()
    return int(total), int(free)


def droppable(conn: sa.Connection, plan: Plan) -> list[dict[str, Any]]:
    """For the preview: the partitions tonight's run would drop whole, with their rows."""
    out = []
    for part in expired(conn, plan):
        total, free = _tally(conn, plan, part)
        if total and free == total:
            out.append({"partition": part.name, "rows": total})
    return out


def qualifies(conn: sa.Connection, plan: Plan) -> str:
    """For validate: one line on whether (and why not) the policy's table can go by partitions."""
    reason = unsupported(plan, conn.dialect.name)
    found = None if conn.dialect.name not in ("postgresql", "mysql") else dialects.range_partitions(conn, plan.table)
    if not found:
        return "not range-partitioned: row batches"
    column = found[0].column
    if column != plan.policy.after:
        return f"range-partitioned on {column}, not on after ({plan.policy.after}): row batches"
    if reason:
        return f"range-partitioned on {column} ({len(found)} partitions), but {reason}"
    return (f"range-partitioned on {column} ({len(found)} partitions): partitions whose whole range is "
            "past the term are dropped in one statement")


Append = Callable[..., Any]


def drop_expired(engine: sa.Engine, plan: Plan, append: Append, run_id: str,
                 next_batch: Callable[[], int], hook: Callable[[str], None]) -> list[Dropped]:
    """Drop every partition that qualifies, each audited write-ahead; the rest is for batches."""
    dropped: list[Dropped] = []
    with engine.connect() as conn:
        parts = expired(conn, plan)
        conn.rollback()
    key = plan.key
    # The drivers give ints for an integer column: no per-key test (3.3M keys of a year at 10M).
    integer = isinstance(key.type, sa.Integer)
    for part in parts:
        with engine.connect() as conn:
            written: list[tuple[int, int]] = []
            try:
                dialects.lock_partition(conn, plan.table, part.name)
                total, free = _tally(conn, plan, part)
                if not total or free != total:
                    conn.rollback()
                    continue
                frm, finish = dialects.partition_rows(plan.table, part.name, conn.dialect.name)
                query = finish(sa.select(frm.c[key.name]).select_from(frm).order_by(frm.c[key.name]))
                for keys in dialects.stream_keys(conn, query, KEYS_PER_ENTRY):
                    batch = next_batch()
                    append("batch", run_id, policy=plan.policy.name, database=plan.database,
                           table=plan.table.name, action="delete", state="intent", batch=batch,
                           key_column=key.name, keys=keys if integer else _keys(keys), columns=[], count=len(keys),
                           cascaded={}, partition=part.name)
                    written.append((batch, len(keys)))
                if sum(n for _b, n in written) != total:  # a writer got past the lock? never drop then
                    raise sa.exc.DBAPIError("partition keys", None, RuntimeError(
                        f"partition {part.name}: {sum(n for _b, n in written)} keys read for {total} rows"))
                hook("intent")
                dialects.drop_partition(conn, plan.table, part.name)
                conn.commit()
            finally:
                dialects.unlock_partition(conn)
        hook("commit")
        for batch, n in written:
            append("batch.committed", run_id, policy=plan.policy.name, batch=batch, count=n, partition=part.name)
        dropped.append(Dropped(part.name, total, len(written)))
    return dropped


def _keys(keys: list[Any]) -> list[Any]:
    from retention.engine.planning import _jsonable

    return keys if all(type(k) is int for k in keys) else [_jsonable(k) for k in keys]


def report(plans: list[Plan], engines: dict[str, sa.Engine]) -> list[str]:
    """For validate: per delete policy on a range-partitioned table, whether it qualifies."""
    out = []
    for plan in plans:
        engine = engines[plan.database]
        if plan.policy.action != "delete" or engine.dialect.name not in ("postgresql", "mysql"):
            continue
        with engine.connect() as conn:
            line = qualifies(conn, plan)
            conn.rollback()
        if not line.startswith("not range-partitioned"):
            out.append(f"{plan.policy.name}: {plan.database}.{plan.policy.table} {line}")
    return out

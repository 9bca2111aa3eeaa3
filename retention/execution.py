"""Execution: delete and anonymise in keyset batches, one transaction per batch.

Each batch: lock and select the next keys (by primary key, after the last batch's), delete
its cascade children deepest first, delete or update the rows, append the ``batch`` audit
entry with ``state: intent`` (fsync'd), commit, append ``batch.committed``. Nothing is
committed to a database without a durable audit entry before it; a run killed between the
two leaves an intent the next run resolves (see :mod:`retention.recovery`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

from retention import dialects
from retention.planning import Plan, _jsonable
from retention.strategies import Fake, FakePool, Generalise

Progress = Callable[[int], None]


class AuditSink(Protocol):
    def append(self, event: str, run: str, **fields: Any) -> dict[str, Any]: ...


@dataclass
class Applied:
    deleted: int = 0
    anonymised: int = 0
    cascaded: dict[str, int] = field(default_factory=dict)
    batches: int = 0


def _test_hook(point: str) -> None:
    # Lets the crash-recovery tests kill the process at an exact point (kill -9 semantics).
    if os.environ.get("RETENTION_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


class Executor:
    def __init__(self, plan: Plan, engine: sa.Engine, audit: AuditSink, run_id: str,
                 batch_ids: Callable[[], int], fakes: FakePool, marker_value: Any,
                 progress: Progress | None = None) -> None:
        self.plan, self.engine, self.audit, self.run_id = plan, engine, audit, run_id
        self.next_batch = batch_ids
        self.fakes = fakes
        self.marker_value = marker_value
        self.progress = progress or (lambda n: None)
        self.dialect = engine.dialect.name

    def run(self) -> Applied:
        applied = Applied()
        plan = self.plan
        if plan.policy.action == "delete":
            self._loop(plan.removable, self._delete, applied)
            if plan.policy.on_referenced == "anonymise":
                self._loop(plan.anonymisable, self._anonymise, applied)
        else:
            self._loop(plan.removable, self._anonymise, applied)
        return applied

    def _loop(self, predicate: Callable[[sa.FromClause], sa.ColumnElement[bool]],
              act: Callable[[sa.Connection, list[Any]], tuple[str, list[str], int, dict[str, int]]],
              applied: Applied) -> None:
        plan, t, key = self.plan, self.plan.table, self.plan.key
        last: Any = None
        while True:
            with self.engine.begin() as conn:
                query = sa.select(key).where(predicate(t))
                if last is not None:
                    query = query.where(key > last)
                query = dialects.lock_rows(query.order_by(key).limit(plan.policy.batch_size), self.dialect)
                keys = [row[0] for row in conn.execute(query)]
                if not keys:
                    return
                action, columns, count, cascaded = act(conn, keys)
                batch = self.next_batch()
                self.audit.append(
                    "batch", self.run_id, policy=plan.policy.name, database=plan.database, table=t.name,
                    action=action, state="intent", batch=batch, key_column=key.name,
                    keys=[_jsonable(k) for k in keys], columns=columns, count=count, cascaded=cascaded,
                )
                _test_hook("intent")
            _test_hook("commit")
            self.audit.append("batch.committed", self.run_id, policy=plan.policy.name, batch=batch, count=count)
            last = keys[-1]
            applied.batches += 1
            if action == "delete":
                applied.deleted += count
            else:
                applied.anonymised += count
            for child, n in cascaded.items():
                applied.cascaded[child] = applied.cascaded.get(child, 0) + n
            self.progress(count)

    # -- actions -----------------------------------------------------------------------------
    def _owned_by(self, member: str, keys: list[Any]) -> sa.ColumnElement[bool]:
        """Rows of a cascade table that hang under the given keys of the policy's table."""
        plan = self.plan
        edge = plan.tree[member]
        child = plan.schema.tables[member]
        parent = plan.schema.tables[edge.parent]
        if edge.parent == plan.policy.table:
            parent_filter = dialects.key_in(plan.key, keys, self.dialect)
        else:
            parent_filter = self._owned_by(edge.parent, keys)
        if len(edge.child_cols) == 1:
            ref = parent.c[edge.parent_cols[0]]
            if edge.parent == plan.policy.table and ref.name == plan.key.name:
                return dialects.key_in(child.c[edge.child_cols[0]], keys, self.dialect)
            return child.c[edge.child_cols[0]].in_(sa.select(ref).where(parent_filter))
        return sa.tuple_(*[child.c[c] for c in edge.child_cols]).in_(
            sa.select(*[parent.c[c] for c in edge.parent_cols]).where(parent_filter)
        )

    def _depth(self, member: str) -> int:
        depth = 0
        while member != self.plan.policy.table:
            member = self.plan.tree[member].parent
            depth += 1
        return depth

    def _delete(self, conn: sa.Connection, keys: list[Any]) -> tuple[str, list[str], int, dict[str, int]]:
        plan = self.plan
        cascaded: dict[str, int] = {}
        for member in sorted(plan.tree, key=self._depth, reverse=True):
            table = plan.schema.tables[member]
            cascaded[member] = conn.execute(table.delete().where(self._owned_by(member, keys))).rowcount
        count = conn.execute(plan.table.delete().where(dialects.key_in(plan.key, keys, self.dialect))).rowcount
        return "delete", [], count, cascaded

    def _anonymise(self, conn: sa.Connection, keys: list[Any]) -> tuple[str, list[str], int, dict[str, int]]:
        plan, t = self.plan, self.plan.table
        set_values: dict[str, Any] = {}
        per_row: dict[str, list[Any]] = {}
        for column, strategy in plan.strategies.items():
            col = t.c[column]
            if isinstance(strategy, Fake):
                per_row[column] = self.fakes.draw(strategy.provider, col, len(keys))
            elif isinstance(strategy, Generalise):
                set_values[column] = dialects.generalise(col, strategy.grain, self.dialect)
            else:
                set_values[column] = strategy.value(col)
        if plan.policy.marker:
            set_values[plan.policy.marker] = self.marker_value
        where = dialects.key_in(plan.key, keys, self.dialect)
        count = conn.execute(t.update().where(where).values(set_values)).rowcount if set_values else len(keys)
        dialects.bulk_update(conn, t, plan.key, keys, per_row)
        return "anonymise", sorted([*plan.strategies, *([plan.policy.marker] if plan.policy.marker else [])]), \
            count, {}

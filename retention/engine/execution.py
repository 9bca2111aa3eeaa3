"""Execution: delete and anonymise in keyset batches, one transaction per batch.

Each batch: lock and select the next keys (by primary key, after the last batch's), delete
its cascade children deepest first, delete or update the rows, append the ``batch`` audit
entry with ``state: intent`` (fsync'd), commit, append ``batch.committed``. Nothing is
committed to a database without a durable audit entry before it; a run killed between the
two leaves an intent the next run resolves (see :mod:`retention.engine.recovery`).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

from retention.anonymisation.strategies import Fake, FakePool, Generalise
from retention.databases import dialects
from retention.databases.schema import single_key
from retention.engine import partitions
from retention.engine.planning import Plan, _jsonable

Progress = Callable[[int], None]


@dataclass
class Entry:
    """One audited change of a batch: action, the keys changed, the columns changed, rows,
    cascade rows per table; ``table``/``key_column`` when the rows are not the policy's own
    (a detach changes the rows that point at the policy's rows)."""

    action: str
    keys: list[Any]
    columns: list[str]
    count: int
    cascaded: dict[str, int]
    table: str | None = None
    key_column: str | None = None


class AuditSink(Protocol):
    def append(self, event: str, run: str, **fields: Any) -> dict[str, Any]: ...


@dataclass
class Applied:
    deleted: int = 0
    anonymised: int = 0
    cascaded: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    detached: int = 0
    detached_columns: dict[str, int] = field(default_factory=dict)
    # Partitions dropped whole (engine/partitions.py): {"partition": name, "rows": n}.
    partitions: list[dict[str, Any]] = field(default_factory=list)
    # Rows per batch the walk asked for (BatchSizer.report): min, max, last, batches.
    batch_sizes: dict[str, int] = field(default_factory=dict)


BATCH_MIN, BATCH_MAX = 1_000, 100_000


class BatchSizer:
    """Batch sizes aimed at ``batch_target_ms`` per transaction.

    The first batch has ``batch_size`` rows (5,000 by default); after each full batch the
    next size is what the last one's rows per second give for the target, moved at most 4x
    up or down per batch (one slow or fast batch does not swing it), kept between 1,000 and
    100,000 rows and never above a ``batch_size`` the policy sets itself (a cap; below 1,000
    it is the size). Commit costs amortise on a fast night; locks stay short on a busy one.
    """

    def __init__(self, batch_size: int, explicit: bool, target_ms: int) -> None:
        self.cap = batch_size if explicit else BATCH_MAX
        self.target = target_ms / 1000
        self.size = min(self.cap, batch_size)
        self.used: list[int] = []

    def done(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` rows (asked for: self.size) took ``seconds``, commit included."""
        self.used.append(self.size)
        if not self.target or rows < self.size:
            return
        ideal = self.size * self.target / max(seconds, 1e-4)
        ideal = min(max(ideal, self.size / 4), self.size * 4)
        self.size = int(min(self.cap, max(BATCH_MIN, min(BATCH_MAX, ideal))))

    def report(self) -> dict[str, int]:
        if not self.used:
            return {}
        return {"min": min(self.used), "max": max(self.used), "last": self.used[-1], "batches": len(self.used)}


def _audit_keys(keys: list[Any]) -> list[Any]:
    # Integer keys (the common case) go to the log as they are; others as their JSON text.
    return keys if all(type(k) is int for k in keys) else [_jsonable(k) for k in keys]


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
        if self.plan.policy.action == "delete":
            # Whole partitions first: the batches then walk only what is left.
            for gone in partitions.drop_expired(self.engine, self.plan, self.audit.append, self.run_id,
                                                self.next_batch, _test_hook):
                applied.deleted += gone.rows
                applied.batches += gone.batches
                applied.partitions.append({"partition": gone.name, "rows": gone.rows})
                self.progress(gone.rows)
        policy = self.plan.policy
        sizer = BatchSizer(policy.batch_size, "batch_size" in policy.model_fields_set, policy.batch_target_ms)
        self._loop(applied, sizer)
        applied.batch_sizes = sizer.report()
        return applied

    def _loop(self, applied: Applied, sizer: BatchSizer) -> None:
        """Walk the due rows by key; per batch find the blocked ones, change the rest.

        The batch is selected by ``due`` alone (cheap on every database) and locked; then one
        statement over the blocking edges finds which of its keys are still referenced
        (exactly :meth:`Plan.blocked`, evaluated for these keys only). The others are deleted;
        with ``on_referenced: anonymise`` the blocked ones still pending are anonymised. Each
        kind of change is its own audit ``batch`` entry listing exactly the keys it changed,
        both written (fsync'd) before the one commit. An anonymise policy of constants only is
        one statement per batch where the database allows (:func:`dialects.update_next_batch`).
        """
        plan, t, key = self.plan, self.plan.table, self.plan.key
        # Constants only (no per-row fakes): where the database can, one statement chooses the
        # batch and changes it, and says which keys it changed.
        in_one = (plan.policy.action == "anonymise" and not self._fake_columns()
                  and dialects.updates_next_batch(self.dialect))
        last: Any = None
        while True:
            started = time.monotonic()
            with self.engine.begin() as conn:
                query = sa.select(key).where(plan.due(t))
                if last is not None:
                    query = query.where(key > last)
                query = query.order_by(key).limit(sizer.size)
                if in_one:
                    _fakes, constants = self._values(0)
                    keys, last = dialects.update_next_batch(conn, t, key, query, plan.due(t), constants)
                    if last is None:
                        return
                    entries = [Entry("anonymise", keys, self._changed_columns(), len(keys), {})] if keys else []
                else:
                    keys = dialects.batch_keys(conn, dialects.lock_rows(query, self.dialect))
                    if not keys:
                        return
                    last = keys[-1]
                    entries = self._change(conn, keys)
                rows = len(keys) if not in_one else sizer.size  # in_one: `keys` are the changed ones only
                if not entries:
                    sizer.done(rows, time.monotonic() - started)
                    continue
                written = []
                for entry in entries:
                    batch = self.next_batch()
                    self.audit.append(
                        "batch", self.run_id, policy=plan.policy.name, database=plan.database,
                        table=entry.table or t.name, action=entry.action, state="intent", batch=batch,
                        key_column=entry.key_column or key.name, keys=_audit_keys(entry.keys),
                        columns=entry.columns, count=entry.count, cascaded=entry.cascaded,
                    )
                    written.append((batch, entry))
                _test_hook("intent")
            _test_hook("commit")
            sizer.done(rows, time.monotonic() - started)
            for batch, entry in written:
                count = entry.count
                if entry.action == "detach":
                    # Not the policy's own rows: no part of `applied`, and no progress.
                    self.audit.append("batch.committed", self.run_id, policy=plan.policy.name, batch=batch,
                                      count=count, action="detach")
                    applied.batches += 1
                    applied.detached += count
                    name = f"{entry.table}.{','.join(entry.columns)}"
                    applied.detached_columns[name] = applied.detached_columns.get(name, 0) + count
                    continue
                self.audit.append("batch.committed", self.run_id, policy=plan.policy.name, batch=batch, count=count)
                applied.batches += 1
                if entry.action == "delete":
                    applied.deleted += count
                else:
                    applied.anonymised += count
                for child, n in entry.cascaded.items():
                    applied.cascaded[child] = applied.cascaded.get(child, 0) + n
                self.progress(count)

    def _change(self, conn: sa.Connection, keys: list[Any]) -> list[Entry]:
        """Change a locked batch: delete the keys nothing holds back (anonymise the held-back ones
        with ``on_referenced: anonymise``), or anonymise them all."""
        plan = self.plan
        if plan.policy.action != "delete":
            return [self._anonymise(conn, keys)]
        entries: list[Entry] = []
        if plan.detaches:
            entries += self._detach(conn, keys)
            entries.append(self._delete(conn, keys))
            return entries
        blocked = plan.blocked_among(conn, keys, functools.partial(dialects.key_in, keys=keys, dialect=self.dialect))
        free = [k for k in keys if k not in blocked] if blocked else keys
        if free:
            entries.append(self._delete(conn, free))
        if plan.policy.on_referenced == "anonymise":
            todo = [k for k in keys if blocked.get(k)]
            if todo:
                entries.append(self._anonymise(conn, todo))
        return entries

    # -- actions -----------------------------------------------------------------------------
    def _owned_by(self, member: str, keys: list[Any]) -> sa.ColumnElement[bool]:
        """Rows of a cascade table that hang under the given keys of the policy's table."""
        table = self.plan.schema.tables[member]
        return self.plan.owned_filter(member, table, lambda col: dialects.key_in(col, keys, self.dialect))

    def _depth(self, member: str) -> int:
        depth = 0
        while member != self.plan.policy.table:
            member = self.plan.tree[member].parent
            depth += 1
        return depth

    def _delete(self, conn: sa.Connection, keys: list[Any]) -> Entry:
        plan = self.plan
        cascaded: dict[str, int] = {}
        for member in sorted(plan.tree, key=self._depth, reverse=True):
            table = plan.schema.tables[member]
            cascaded[member] = conn.execute(table.delete().where(self._owned_by(member, keys))).rowcount
        match = dialects.key_in(plan.key, keys, self.dialect)
        # A key unique only together with `after` (a partitioned table): never a row not due.
        where = match if plan.key_unique else sa.and_(match, plan.due(plan.table))
        count = conn.execute(plan.table.delete().where(where)).rowcount
        return Entry("delete", keys, [], count, cascaded)

    def _detach(self, conn: sa.Connection, keys: list[Any]) -> list[Entry]:
        """``on_referenced: detach``: set the foreign key to NULL in every row that points at the
        batch's rows (or at their cascade rows) and is not deleted with them, one audited entry
        per foreign key. In the real run the rows an earlier policy removes are gone already,
        so every row still pointing here is a kept row (the preview counts the same rows)."""
        plan = self.plan
        entries: list[Entry] = []
        for edge in plan.blocking_edges():
            child = plan.schema.tables[edge.child]
            child_key = single_key(child)
            assert child_key is not None, "validation refuses detach without a single-column key"
            where = plan.referencing_filter(edge, child,
                                            lambda col: dialects.key_in(col, keys, self.dialect))
            query = sa.select(child_key).where(where).order_by(child_key)
            found = [r[0] for r in conn.execute(dialects.lock_rows(query, self.dialect))]
            if not found:
                continue
            update = child.update().where(dialects.key_in(child_key, found, self.dialect))
            count = conn.execute(update.values({c: None for c in edge.child_cols})).rowcount
            entries.append(Entry("detach", found, list(edge.child_cols), count, {},
                                 table=edge.child, key_column=child_key.name))
        return entries

    def _fake_columns(self) -> list[str]:
        return [c for c, s in self.plan.strategies.items() if isinstance(s, Fake)]

    def _changed_columns(self) -> list[str]:
        marker = self.plan.policy.marker
        return sorted([*self.plan.strategies, *([marker] if marker else [])])

    def _values(self, rows: int) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        """The new values: per column ``rows`` fakes, or one SQL value or expression for all rows."""
        t = self.plan.table
        constants: dict[str, Any] = {}
        per_row: dict[str, list[Any]] = {}
        for column, strategy in self.plan.strategies.items():
            col = t.c[column]
            if isinstance(strategy, Fake):
                per_row[column] = self.fakes.draw(strategy.provider, col, rows)
            elif isinstance(strategy, Generalise):
                constants[column] = dialects.generalise(col, strategy.grain, self.dialect, strategy.step)
            else:
                constants[column] = strategy.value(col)
        if self.plan.policy.marker:
            constants[self.plan.policy.marker] = self.marker_value
        return per_row, constants

    def _anonymise(self, conn: sa.Connection, keys: list[Any]) -> Entry:
        per_row, constants = self._values(len(keys))
        count = dialects.bulk_update(conn, self.plan.table, self.plan.key, keys, per_row, constants)
        return Entry("anonymise", keys, self._changed_columns(), count, {})

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
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa

from retention.anonymisation.strategies import Fake, FakePool, Generalise
from retention.databases import dialects
from retention.databases.schema import key_unique_alone
from retention.engine import partitions
from retention.engine.planning import Plan, _jsonable
from retention.errors import BatchCheckFailed
from retention.logs import get_logger

log = get_logger("retention.execution")

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
    # A detach whose key is unique only with a partition column: the rows it was given are
    # those of ``keys`` that pointed at the batch's rows (Executor._detach).
    scope: sa.ColumnElement[bool] | None = None


# Waits before each retry of a transaction that failed for a transient reason (connection lost,
# deadlock, serialization failure, lock timeout; dialects.is_transient): 3 retries, 3.5 s in all,
# enough for a killed connection or a deadlock victim, not for a failover of minutes.
RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0)

T = TypeVar("T")


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def retrying(attempt: Callable[[], T], dialect: str,
             on_retry: Callable[[int, BaseException, float], None] | None = None,
             may_retry: Callable[[], bool] = lambda: True) -> T:
    """``attempt()``, run again after a transient database error, at most len(RETRY_DELAYS) times.

    ``attempt`` must be one whole transaction (rolled back when it raises), so running it again
    is safe; ``may_retry`` says whether it still is after a failure (not once its changes were
    audited as intended).
    """
    for number, wait in enumerate((*RETRY_DELAYS, None), start=1):
        try:
            return attempt()
        except sa.exc.DBAPIError as exc:
            if wait is None or not may_retry() or not dialects.is_transient(exc, dialect):
                raise
            if on_retry:
                on_retry(number, exc, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


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
    # Seconds of the walk spent making it durable: the database's commits, the audit log's
    # entries (written and fsync'd). The rest of the walk is its statements.
    commit_s: float = 0.0
    audit_s: float = 0.0


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


def kill_point(point: str) -> None:
    # Lets the crash-recovery tests kill the process at an exact point (kill -9 semantics).
    if os.environ.get("RETENTION_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


class Executor:
    def __init__(self, plan: Plan, engine: sa.Engine, audit: AuditSink, run_id: str,
                 batch_ids: Callable[[], int], fakes: FakePool, marker_value: Any,
                 progress: Progress | None = None, restrict: list[Any] | None = None,
                 tag: dict[str, Any] | None = None, planned_anonymise: set[Any] | None = None) -> None:
        self.plan, self.engine, self.audit, self.run_id = plan, engine, audit, run_id
        # An approved plan's keys (sorted): only these may be selected, batch by batch, and
        # every audit entry carries ``tag`` (the plan's SHA-256).
        self.restrict = restrict
        self.tag = tag or {}
        # With ``restrict``: the keys the plan anonymises (the others it deletes). A key is only
        # changed with the fate that was approved: a planned anonymisation whose row is no
        # longer referenced is not deleted instead (nor the other way round); it is skipped.
        self.planned_anonymise = planned_anonymise
        self.next_batch = batch_ids
        self.fakes = fakes
        self.marker_value = marker_value
        self.progress = progress or (lambda n: None)
        self.dialect = engine.dialect.name
        # What committed so far, readable after a failure too.
        self.applied = Applied()
        self._audited = False

    def run(self, applied: Applied | None = None) -> Applied:
        """Walk and change every due row. ``applied`` (default: :attr:`applied`) is filled as
        batches commit, so a caller still knows what the committed batches did when a later one
        fails."""
        if applied is not None:
            self.applied = applied
        applied = self.applied
        if self.plan.policy.action == "delete" and self.restrict is None:
            # Whole partitions first: the batches then walk only what is left. Not for an approved
            # plan: it names keys, and a partition may hold rows the plan does not.
            for gone in partitions.drop_expired(self.engine, self.plan, self._append, self.run_id,
                                                self.next_batch, kill_point):
                applied.deleted += gone.rows
                applied.batches += gone.batches
                applied.partitions.append({"partition": gone.name, "rows": gone.rows})
                self.progress(gone.rows)
        policy = self.plan.policy
        sizer = BatchSizer(policy.batch_size, "batch_size" in policy.model_fields_set, policy.batch_target_ms)
        try:
            self._loop(applied, sizer)
        finally:
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
        plan = self.plan
        # Constants only (no per-row fakes): where the database can, one statement chooses the
        # batch and changes it, and says which keys it changed.
        in_one = (plan.policy.action == "anonymise" and not self._fake_columns()
                  and dialects.updates_next_batch(self.dialect))
        last: Any = None
        size = plan.policy.batch_size
        chunks = (iter([self.restrict[i:i + size] for i in range(0, len(self.restrict), size)])
                  if self.restrict is not None else None)
        while True:
            chunk = None
            if chunks is not None:
                # An approved plan's keys, a batch at a time: only these may be selected.
                chunk = next(chunks, None)
                if chunk is None:
                    return
            started = time.monotonic()
            done, last, written, rows = retrying(
                functools.partial(self._batch, in_one, last, chunk, size if chunk is not None else sizer.size),
                self.dialect, self._on_retry, lambda: not self._audited)
            if done and chunk is None:
                return
            sizer.done(rows, time.monotonic() - started)
            for batch, entry in written:
                count = entry.count
                if entry.action == "detach":
                    # Not the policy's own rows: no part of `applied`, and no progress.
                    self._append("batch.committed", self.run_id, policy=plan.policy.name, batch=batch,
                                      count=count, action="detach")
                    applied.batches += 1
                    applied.detached += count
                    name = f"{entry.table}.{','.join(entry.columns)}"
                    applied.detached_columns[name] = applied.detached_columns.get(name, 0) + count
                    continue
                self._append("batch.committed", self.run_id, policy=plan.policy.name, batch=batch, count=count)
                applied.batches += 1
                if entry.action == "delete":
                    applied.deleted += count
                else:
                    applied.anonymised += count
                for child, n in entry.cascaded.items():
                    applied.cascaded[child] = applied.cascaded.get(child, 0) + n
                self.progress(count)

    def _batch(self, in_one: bool, last: Any, chunk: list[Any] | None = None, limit: int | None = None
               ) -> tuple[bool, Any, list[tuple[int, Entry]], int]:
        """One batch of at most ``limit`` rows in one transaction: (walk finished, last key chosen,
        audited changes committed, rows the batch took: what the batch sizer weighs).

        With ``chunk`` (an approved plan's keys) the batch is those keys that are still due; a
        plan's key no longer due (held since, or gone) simply is not selected."""
        plan, t, key = self.plan, self.plan.table, self.plan.key
        self._audited = False
        if last is not None:
            kill_point("batch")
        with self.engine.begin() as conn:
            query = sa.select(key).where(plan.due(t, past_key=last if chunk is None else None))
            if chunk is not None:
                query = query.where(dialects.key_in(key, chunk, self.dialect))
                if all(type(k) is int for k in (chunk[0], chunk[-1])):
                    # The chunk's range on the key as well: the planner then reaches the rows by
                    # key even where the `after` index is steered off (Plan.scan). Integers only:
                    # text keys sort differently in Python and in a collation.
                    query = query.where(key >= chunk[0], key <= chunk[-1])
            elif last is not None:
                query = query.where(key > last)
            query = query.order_by(key).limit(limit or plan.policy.batch_size)
            if in_one:
                _fakes, constants = self._values(0)
                keys, chosen = dialects.update_next_batch(conn, t, key, query, plan.due(t), constants)
                if chosen is None:
                    return True, last, [], 0
                entries = [Entry("anonymise", keys, self._changed_columns(), len(keys), {})] if keys else []
            else:
                keys = dialects.batch_keys(conn, dialects.lock_rows(query, self.dialect))
                if not keys:
                    return True, last, [], 0
                chosen = keys[-1]
                entries = self._change(conn, keys)
            # in_one: `keys` are the changed ones only; the batch took up to `limit` rows.
            rows = len(keys) if not in_one else (limit or plan.policy.batch_size)
            if not entries:
                return False, chosen, [], rows
            self._check(conn, entries)
            written = []
            for entry in entries:
                batch = self.next_batch()
                # From here on the batch's fate is in the audit log: a failed commit is not
                # retried (did it commit?) but left to the next run's recovery.
                self._audited = True
                self._append(
                    "batch", self.run_id, policy=plan.policy.name, database=plan.database,
                    table=entry.table or t.name, action=entry.action, state="intent", batch=batch,
                    key_column=entry.key_column or key.name, keys=_audit_keys(entry.keys),
                    columns=entry.columns, count=entry.count, cascaded=entry.cascaded, **self.tag,
                )
                written.append((batch, entry))
            kill_point("intent")
            committing = time.monotonic()
        self.applied.commit_s += time.monotonic() - committing
        kill_point("commit")
        return False, chosen, written, rows

    def _append(self, event: str, run: str, **fields: Any) -> None:
        started = time.monotonic()
        try:
            self.audit.append(event, run, **fields)
        finally:
            self.applied.audit_s += time.monotonic() - started

    def _on_retry(self, attempt: int, exc: BaseException, wait: float) -> None:
        self.audit.append("batch.retry", self.run_id, policy=self.plan.policy.name, database=self.plan.database,
                          attempt=attempt, wait_ms=round(wait * 1000), error=first_line(exc))
        log.warning("batch.retry", policy=self.plan.policy.name, attempt=attempt, wait_s=wait, error=first_line(exc))

    def _check(self, conn: sa.Connection, entries: list[Entry]) -> None:
        """Before the batch is audited and committed: each statement changed exactly the rows it
        was given, and none of them is left as it was (a trigger that skips a row, a rule, a
        driver miscounting). Otherwise the batch is rolled back and the policy stops, with both
        numbers in the audit log: retention that changes more or less than asked is a defect."""
        plan = self.plan
        for entry in entries:
            if entry.action == "detach":
                # The referencing rows: each given one now has its foreign key NULL.
                table = plan.schema.tables[entry.table or plan.table.name]
                cond = sa.and_(dialects.key_in(table.c[entry.key_column or plan.key.name], entry.keys, self.dialect),
                               sa.or_(*[table.c[c].is_not(None) for c in entry.columns]),
                               *([entry.scope] if entry.scope is not None else []))
            else:
                table = plan.table
                cond = dialects.key_in(plan.key, entry.keys, self.dialect)
                if entry.action == "anonymise":
                    cond = sa.and_(cond, plan.pending(table))
                elif not plan.key_unique:
                    # A key unique only with `after` (a partitioned table): rows of the same key
                    # that are not due were never the batch's and stay.
                    cond = sa.and_(cond, plan.due(table))
            left = conn.execute(sa.select(sa.func.count()).select_from(table).where(cond)).scalar_one()
            if entry.count == len(entry.keys) and left == 0:
                continue
            self.audit.append(
                "batch.mismatch", self.run_id, policy=plan.policy.name, database=plan.database, table=table.name,
                action=entry.action, key_column=entry.key_column or plan.key.name, keys=_audit_keys(entry.keys),
                selected=len(entry.keys), affected=entry.count, left_unchanged=left, result="rolled back",
            )
            raise BatchCheckFailed(
                f"batch self-check: the {entry.action} of {len(entry.keys)} selected rows of {table.name} affected "
                f"{entry.count}, and {left} of them are left unchanged; the batch was rolled back and the policy "
                "stopped (a trigger or rule on the table?)"
            )

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
        planned = self.planned_anonymise
        if planned is not None and planned:
            free = [k for k in free if k not in planned]
        if free:
            entries.append(self._delete(conn, free))
        if plan.policy.on_referenced == "anonymise":
            todo = [k for k in keys if blocked.get(k) and (planned is None or k in planned)]
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
            child_key = plan.detach_key(child)
            assert child_key is not None, "validation refuses detach without a key for the detached rows"
            where = plan.referencing_filter(edge, child,
                                            lambda col: dialects.key_in(col, keys, self.dialect))
            query = sa.select(child_key).where(where).order_by(child_key)
            found = [r[0] for r in conn.execute(dialects.lock_rows(query, self.dialect))]
            if not found:
                continue
            # A key unique only with a partition column may name other rows too: test the link again.
            scope = None if key_unique_alone(child, child_key) else where
            update = child.update().where(dialects.key_in(child_key, found, self.dialect),
                                          *([scope] if scope is not None else []))
            count = conn.execute(update.values({c: None for c in edge.child_cols})).rowcount
            entries.append(Entry("detach", found, list(edge.child_cols), count, {},
                                 table=edge.child, key_column=child_key.name, scope=scope))
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

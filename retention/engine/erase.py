"""Erase one data subject now (art. 17 GDPR), through the file's own policies.

The subject is found from one row of one policy (``--policy accounts --key 4711``): that row,
the rows of the other policies' tables linked to it by a foreign key (one hop, either way, as
holds follow links), and rows without a foreign key found by ``--match TABLE.COLUMN[=VALUE]``
(a guest ticket by e-mail). Each table is handled by the first policy of the file on it.

Every found row is treated as past its own policy's erasable point: :class:`ErasePlan` is a
:class:`Plan` whose "past the term" is "one of the subject's keys, and past the statutory
``minimum`` if the policy has one". Everything else is the engine's: holds (``exclude``, the
registry, linked), foreign keys (a kept invoice is detached from the erased account where the
policy says ``on_referenced: detach``), batches, cascades, audit ``batch`` entries and the purge.
The erasure is framed by ``erase.start``/``erase.end`` carrying the request reference and keys,
never a value (a ``--match`` value is personal data: only the column is logged).
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pendulum
import sqlalchemy as sa

from retention import __version__
from retention.anonymisation.strategies import FakePool
from retention.audit import log as audit
from retention.databases import dialects, purge
from retention.databases.schema import Schema, key_column
from retention.engine import holds
from retention.engine.execution import Executor
from retention.engine.lock import RunLock
from retention.engine.planning import Plan, _in_term_end, _jsonable, run_order
from retention.engine.validation import Connected, connect_and_check
from retention.errors import EXIT_BLOCKED, EXIT_FAILED, EXIT_OK, RetentionError, UsageError
from retention.policy.dates import Cutoff, cutoff, expires_at
from retention.policy.model import Policy, PolicyFile

# An erasure that would change more rows than this is refused without --force: one person's
# data is tens of rows; thousands mean a wrong key or a --match that matches too much.
MAX_ROWS = 1_000


class EraseRefused(RetentionError):
    exit_code = EXIT_BLOCKED


@dataclass
class ErasePlan(Plan):
    """A policy's plan restricted to the subject's keys, with the policy's term replaced by its
    statutory floor (``minimum``): what the subject may ask to have erased now."""

    keys: list[Any] = field(default_factory=list)
    floor: Cutoff | None = None

    def past_floor(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        if self.floor is None:
            return sa.true()
        after = t.c[self.policy.after]
        zone = self.policy.after_timezone
        floor = self.floor.in_zone(zone) if zone else self.floor
        # A row whose date is empty or unreadable cannot be shown to be past the floor: kept.
        return sa.and_(after.is_not(None), _in_term_end(after, self.table.c[self.policy.after], floor),
                       self.readable(t))

    def subject(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        if not self.keys:
            return sa.false()
        return dialects.key_in(t.c[self.key.name], self.keys, self.schema.dialect)

    def past_term(self, t: sa.FromClause, readable: bool = True) -> sa.ColumnElement[bool]:
        cond = [self.subject(t), self.past_floor(t)]
        if self.policy.action == "anonymise":
            cond.append(self.pending(t))
        return sa.and_(*cond)


@dataclass
class Kept:
    key: Any
    basis: str
    until: str | None = None


@dataclass
class TableFate:
    """One table's share of the erasure: what goes, what stays and why (art. 17(3))."""

    policy: str
    database: str
    table: str
    key_column: str
    action: str
    # The policy's legal basis: what a statutory minimum that keeps rows rests on.
    basis: str | None = None
    found: list[Any] = field(default_factory=list)
    deleted: list[Any] = field(default_factory=list)
    anonymised: list[Any] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    # Kept rows of other tables whose foreign key to these rows is set to NULL, per "table.column".
    detached: dict[str, list[Any]] = field(default_factory=dict)
    cascaded: dict[str, int] = field(default_factory=dict)
    # Set when the executor changed other rows than the assessment said (a concurrent change).
    mismatch: str | None = None

    def rows(self) -> int:
        return (len(self.deleted) + len(self.anonymised) + sum(map(len, self.detached.values()))
                + sum(self.cascaded.values()))

    def as_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "database": self.database, "table": self.table,
                "key_column": self.key_column, "action": self.action, "basis": self.basis, "found": self.found,
                "deleted": self.deleted, "anonymised": self.anonymised,
                "kept": [{"key": k.key, "basis": k.basis, "until": k.until} for k in self.kept],
                "detached": self.detached, "cascaded": self.cascaded, "mismatch": self.mismatch}


@dataclass
class EraseResult:
    request: str
    policy: str
    key: str
    dry_run: bool
    as_of: str
    run: str = ""
    tables: list[TableFate] = field(default_factory=list)
    purges: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int = EXIT_OK
    status: str = "ok"
    message: str | None = None

    def rows(self) -> int:
        return sum(t.rows() for t in self.tables)

    def as_json(self) -> dict[str, Any]:
        return {"request": self.request, "policy": self.policy, "key": self.key, "dry_run": self.dry_run,
                "as_of": self.as_of, "run": self.run, "status": self.status, "exit_code": self.exit_code,
                "rows": self.rows(), "tables": [t.as_json() for t in self.tables], "purge": self.purges,
                "message": self.message}


# -- finding the subject ---------------------------------------------------------------------

def parse_match(text: str) -> tuple[str, str, str | None]:
    """``TABLE.COLUMN=VALUE``, or ``TABLE.COLUMN`` for "the start row's column of that name"."""
    target, eq, value = text.partition("=")
    table, dot, column = target.strip().partition(".")
    if not dot or not table or not column:
        raise UsageError(f"--match {text!r}: expected TABLE.COLUMN=VALUE or TABLE.COLUMN")
    return table, column, (value if eq else None)


def _first_policy(model: PolicyFile, database: str, table: str) -> Policy | None:
    return next((p for p in model.policies if model.database_of(p) == database and p.table == table), None)


def find_subject(conn: sa.Connection, model: PolicyFile, connected: Connected, start: Policy, key: str,
                 matches: Sequence[str]) -> dict[str, list[Any]]:
    """Per policy name, the subject's keys: the start row, the rows linked to it, the matches."""
    database = model.database_of(start)
    schema = connected.schemas[database]
    table = schema.tables[start.table]
    start_plan_key = _key(schema, start)
    text = holds.normal_key(start_plan_key, key, f"policy {start.name!r}, --key")
    row = conn.execute(sa.select(table).where(holds.key_values(start_plan_key, [text]))).mappings().first()
    if row is None:
        raise UsageError(f"policy {start.name!r}, --key {text}: no row of {start.table} has "
                         f"{start_plan_key.name} = {text}; nothing erased")
    found: dict[str, list[Any]] = {start.name: [row[start_plan_key.name]]}
    for edge in schema.edges:
        if start.table not in (edge.child, edge.parent) or edge.child == edge.parent:
            continue
        other_table = edge.parent if edge.child == start.table else edge.child
        other = _first_policy(model, database, other_table)
        if other is None:
            continue  # a cascade table goes with its parent; a table without policy is not ours
        t = schema.tables[other_table]
        other_key = _key(schema, other)
        if edge.child == start.table:  # the start row points at the other row
            values = [row[c] for c in edge.child_cols]
            cond = [t.c[pc] == v for pc, v in zip(edge.parent_cols, values, strict=True)]
        else:
            values = [row[c] for c in edge.parent_cols]
            cond = [t.c[cc] == v for cc, v in zip(edge.child_cols, values, strict=True)]
        if any(v is None for v in values):
            continue
        keys = [r[0] for r in conn.execute(sa.select(other_key).where(*cond).order_by(other_key))]
        found.setdefault(other.name, []).extend(keys)
    for text_ in matches:
        table_name, column, value = parse_match(text_)
        other = _first_policy(model, database, table_name)
        if other is None:
            raise UsageError(f"--match {text_!r}: no policy of database {database!r} works on table {table_name!r}")
        t = schema.tables[other.table]
        if column not in t.c:
            raise UsageError(f"--match {text_!r}: table {table_name!r} has no column {column!r}")
        if value is None:
            if column not in row:
                raise UsageError(f"--match {text_!r}: without =VALUE the start row ({start.table}) must have a "
                                 f"column {column!r} to take the value from")
            value = row[column]
            if value is None:
                continue
        other_key = _key(schema, other)
        keys = [r[0] for r in conn.execute(sa.select(other_key).where(t.c[column] == value).order_by(other_key))]
        found.setdefault(other.name, []).extend(keys)
    return {name: sorted(set(keys), key=_sort_key) for name, keys in found.items()}


def _sort_key(value: Any) -> tuple[str, Any]:
    return (type(value).__name__, value)


def _key(schema: Schema, policy: Policy) -> sa.Column[Any]:
    key = key_column(schema.tables[policy.table], policy)
    assert not isinstance(key, str), key  # validation refuses a policy without a usable key
    return key


# -- planning ----------------------------------------------------------------------------

def make_erase_plans(model: PolicyFile, connected: Connected, keys: dict[str, list[Any]],
                     moment: pendulum.DateTime) -> list[ErasePlan]:
    policies = [p for p in model.policies if p.name in keys]
    database_of = model.database_of
    today = holds.local_day(moment, model.timezone)
    registry = {db: holds.active_keys(engine, today) for db, engine in connected.engines.items()}
    plans: list[ErasePlan] = []
    for p in run_order(policies, connected.schemas, database_of):
        db = database_of(p)
        floor = cutoff(moment, p.minimum, p.minimum_align, model.timezone) if p.minimum else None  # type: ignore[arg-type]
        plans.append(ErasePlan(
            p, db, connected.schemas[db], cutoff(moment, p.retain, p.align, model.timezone),  # type: ignore[arg-type]
            earlier=[q for q in plans if q.database == db],
            holders=[q for q in model.policies if database_of(q) == db], registry=registry.get(db, {}),
            keys=list(keys[p.name]), floor=floor))
    return plans


def assess(conn: sa.Connection, plan: ErasePlan) -> TableFate:
    """What the erasure does to one table, per key, as the executor will do it."""
    p, t, key = plan.policy, plan.table, plan.key
    fate = TableFate(p.name, plan.database, p.table, key.name, p.action, basis=p.basis,
                     found=[_jsonable(k) for k in plan.keys])
    if not plan.keys:
        return fate
    subject = plan.subject(t)
    kept: dict[Any, Kept] = {}
    reasons = plan.hold_reasons(t)
    held: dict[Any, list[str]] = {}
    for name, cond in reasons.items():
        for (k,) in conn.execute(sa.select(key).where(subject, cond).order_by(key)):
            held.setdefault(k, []).append(name)
    for k, names in held.items():
        kept[k] = Kept(_jsonable(k), f"hold ({', '.join(names)})")
    if plan.floor is not None:
        query = sa.select(key, t.c[p.after]).where(subject, plan.not_held(t), sa.not_(plan.past_floor(t)))
        for k, after in conn.execute(query.order_by(key)):
            until = None
            if after is not None and not isinstance(after, str):
                until = expires_at(after, p.minimum, p.minimum_align).date().isoformat()  # type: ignore[arg-type]
            kept[k] = Kept(_jsonable(k), f"statutory minimum of {p.minimum}", until)
    if p.action == "anonymise":
        done = conn.execute(sa.select(key).where(subject, plan.not_held(t), plan.past_floor(t),
                                                 sa.not_(plan.pending(t))).order_by(key)).scalars().all()
        for k in done:
            kept[k] = Kept(_jsonable(k), "anonymised already")
    due = conn.execute(sa.select(key).where(plan.due(t)).order_by(key)).scalars().all()
    if p.action == "anonymise":
        fate.anonymised = [_jsonable(k) for k in due]
    else:
        blocked = {} if plan.detaches else plan.blocked_among(
            conn, due, lambda col: dialects.key_in(col, due, conn.dialect.name))
        for k in due:
            if k not in blocked:
                fate.deleted.append(_jsonable(k))
            elif blocked[k]:
                fate.anonymised.append(_jsonable(k))
            else:
                kept[k] = Kept(_jsonable(k), "referenced by rows that are kept (deferred until they go)")
        gone = [k for k in due if k not in blocked]
        if gone:
            _detached_and_cascaded(conn, plan, gone, fate)
    fate.kept = sorted(kept.values(), key=lambda k: _sort_key(k.key))
    return fate


def _detached_and_cascaded(conn: sa.Connection, plan: ErasePlan, gone: list[Any], fate: TableFate) -> None:
    dialect = conn.dialect.name
    for member in plan.tree:
        table = plan.schema.tables[member]
        cond = plan.owned_filter(member, table, lambda col: dialects.key_in(col, gone, dialect))
        n = int(conn.execute(sa.select(sa.func.count()).select_from(table).where(cond)).scalar_one())
        if n:
            fate.cascaded[member] = n
    if not plan.detaches:
        return
    for edge in plan.blocking_edges():
        child = plan.schema.tables[edge.child]
        child_key = plan.detach_key(child)
        if child_key is None:
            continue
        alias = child.alias("rt_dc")
        where = plan.referencing_filter(edge, alias, lambda col: dialects.key_in(col, gone, dialect))
        query = sa.select(alias.c[child_key.name]).where(where, sa.not_(plan.removed_earlier(edge.child, alias)))
        found = [_jsonable(k) for k in conn.execute(query.order_by(alias.c[child_key.name])).scalars()]
        if found:
            fate.detached.setdefault(f"{edge.child}.{','.join(edge.child_cols)}", []).extend(found)


# -- the command -------------------------------------------------------------------------

def _connect(model: PolicyFile, start: Policy, dry_run: bool) -> tuple[Connected, list[Policy]]:
    database = model.database_of(start)
    mine = [p for p in model.policies if model.database_of(p) == database]
    return connect_and_check(model, mine, readonly=dry_run), mine


def erase(model: PolicyFile, *, policy_name: str, key: str, request: str, matches: Sequence[str] = (),
          dry_run: bool = False, force: bool = False, audit_key: bytes | None = None,
          as_of: pendulum.DateTime | None = None) -> EraseResult:
    start = next((p for p in model.policies if p.name == policy_name), None)
    if start is None:
        known = ", ".join(sorted(p.name for p in model.policies))
        raise UsageError(f"--policy: unknown policy {policy_name!r}; defined: {known}")
    if not request.strip():
        raise UsageError("--request: empty; give the request's reference (ticket or letter number)")
    from retention.engine.runner import resolve_as_of

    # A moment in the past only keeps more (the floors end later); a future one only previews.
    moment = resolve_as_of(as_of, model.timezone, dry_run)
    connected, _mine = _connect(model, start, dry_run)
    try:
        with connected.engines[model.database_of(start)].connect() as conn:
            keys = find_subject(conn, model, connected, start, key, matches)
            conn.rollback()
        return apply(model, connected, keys, moment, request=request.strip(), policy=start.name,
                     key=str(keys[start.name][0]), dry_run=dry_run, force=force, audit_key=audit_key,
                     extra={"matched": [parse_match(m)[0] + "." + parse_match(m)[1] for m in matches]})
    finally:
        connected.dispose()


def apply(model: PolicyFile, connected: Connected, keys: dict[str, list[Any]], moment: pendulum.DateTime, *,
          request: str, policy: str, key: str, dry_run: bool, force: bool, audit_key: bytes | None,
          extra: dict[str, Any] | None = None, event: str = "erase", bound: int | None = None) -> EraseResult:
    """Preview or carry out the erasure of the given keys (also what replay re-applies)."""
    bound = MAX_ROWS if bound is None else bound
    result = EraseResult(request, policy, key, dry_run, moment.isoformat())
    plans = make_erase_plans(model, connected, keys, moment)
    with ExitStack() as stack:
        if not dry_run:
            stack.enter_context(RunLock(Path(model.audit.path), connected.engines))
        for plan in plans:
            with connected.engines[plan.database].connect() as conn:
                result.tables.append(assess(conn, plan))
                conn.rollback()
        if result.rows() > bound and not force:
            result.exit_code, result.status = EXIT_BLOCKED, "refused"
            result.message = (f"the erasure would change {result.rows()} rows, more than {bound}; check the key "
                              "and --match, then repeat with --force")
            if not dry_run:
                raise EraseRefused(f"request {request}: {result.message}; nothing was changed")
        if dry_run:
            return result
        log_ = stack.enter_context(audit.AuditLog(Path(model.audit.path), audit_key).open())
        result.run = holds.new_id()
        started = time.monotonic()
        log_.append(f"{event}.start", result.run, request=request, policy=policy, key=key,
                    as_of=moment.isoformat(), user=getpass.getuser(), host=socket.gethostname(),
                    version=__version__, force=force,
                    keys={pl.policy.name: [_jsonable(k) for k in pl.keys] for pl in plans},
                    policies=[{"name": pl.policy.name, "database": pl.database, "table": pl.policy.table,
                               "action": pl.policy.action, "basis": pl.policy.basis} for pl in plans],
                    **(extra or {}))
        fakes = FakePool(model.locale)
        batch_counter = iter(range(1, 1 << 62))
        touched: dict[str, set[str]] = {}
        failed = None
        for plan, fate in zip(plans, result.tables, strict=True):
            if failed:
                break
            try:
                applied = Executor(plan, connected.engines[plan.database], log_, result.run,
                                   lambda: next(batch_counter), fakes,
                                   moment.in_timezone(model.timezone).naive()).run()
            except sa.exc.SQLAlchemyError as exc:
                failed = f"policy {plan.policy.name}: {str(getattr(exc, 'orig', exc)).splitlines()[0]}"
                break
            if applied.deleted or applied.anonymised or applied.detached:
                touched.setdefault(plan.database, set()).update([plan.policy.table, *plan.tree])
                touched[plan.database].update(c.split(".")[0] for c in applied.detached_columns)
            # The report says what was done: the executor's counts, should a row have changed
            # between the assessment and its batch.
            if (applied.deleted, applied.anonymised) != (len(fate.deleted), len(fate.anonymised)):
                fate.mismatch = (f"{plan.policy.name}: assessed {len(fate.deleted)} deleted, "
                                 f"{len(fate.anonymised)} anonymised; done {applied.deleted}, {applied.anonymised}")
            fate.cascaded = dict(applied.cascaded)
        for db, tables in touched.items():
            res = purge.purge(connected.engines[db], db, sorted(tables), model.databases[db].purge)
            ev = res.as_event()
            result.purges.append(ev)
            log_.append("purge", result.run, **ev)
        mismatches = [f.mismatch for f in result.tables if f.mismatch]
        if mismatches and not failed:
            result.message = "rows changed during the erasure: " + "; ".join(mismatches)
        if failed:
            result.exit_code, result.status, result.message = EXIT_FAILED, "failed", failed
        log_.append(f"{event}.end", result.run, request=request, status=result.status,
                    duration_ms=round((time.monotonic() - started) * 1000),
                    outcome={f.policy: {"deleted": f.deleted, "anonymised": f.anonymised,
                                        "kept": [{"key": k.key, "basis": k.basis, "until": k.until} for k in f.kept],
                                        "detached": f.detached, "cascaded": f.cascaded} for f in result.tables})
    return result


def render_text(result: EraseResult) -> list[str]:
    head = "PREVIEW (dry run): nothing was changed" if result.dry_run else f"ERASED ({result.run})"
    lines = [head, f"request {result.request}: {result.policy} key {result.key}, as of {result.as_of}"]
    for f in result.tables:
        lines.append(f"== {f.table}  (policy {f.policy}, {f.action}; {len(f.found)} row(s) of the subject)")
        verb = "would be" if result.dry_run else "were"
        if f.deleted:
            lines.append(f"   {len(f.deleted)} row(s) {verb} deleted: keys {_keys(f.deleted)}")
        for member, n in f.cascaded.items():
            lines.append(f"     with {n} row(s) of {member}")
        if f.anonymised:
            lines.append(f"   {len(f.anonymised)} row(s) {verb} anonymised: keys {_keys(f.anonymised)}")
        for column, ks in f.detached.items():
            lines.append(f"   {len(ks)} kept row(s) of {column.split('.')[0]} {verb} detached "
                         f"({column} set to NULL): keys {_keys(ks)}")
        groups: dict[str, list[Kept]] = {}
        for k in f.kept:
            groups.setdefault(k.basis, []).append(k)
        for basis, rows in groups.items():
            untils = sorted({k.until for k in rows if k.until})
            until = f", until {' / '.join(untils)}" if untils else ""
            lines.append(f"   {len(rows)} row(s) kept: {basis}{until}: keys {_keys([k.key for k in rows])}")
            if basis.startswith("statutory") and f.basis:
                lines.append(f"     basis: {f.basis}")
    lines.append(f"{result.rows()} row(s) in all" + (f"; {result.message}" if result.message else ""))
    return lines


def _keys(keys: list[Any]) -> str:
    return ", ".join(map(str, keys[:20])) + (", ..." if len(keys) > 20 else "")

"""A whole run: check, lock, recover, plan, enforce (or preview), purge, and audit it all.

Order matters for the contract's promises: everything that can be wrong with the input
(policy file, databases, schema, ``--as-of``) is found before the lock is taken or any
data is touched (exit 2); the lock comes before the audit log is opened (exit 4 touches
nothing); the audit log must be writable before the first batch (exit 1, nothing touched).
"""

from __future__ import annotations

import getpass
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pendulum
import sqlalchemy as sa
import structlog

from retention import __version__
from retention.anonymisation import reidentification
from retention.anonymisation.strategies import FakePool
from retention.audit import log as audit
from retention.databases import purge
from retention.engine import monitor, partitions, recovery
from retention.engine.execution import Executor
from retention.engine.lock import RunLock
from retention.engine.planning import Counts, Plan, never_in_scope, run_order, uncovered_links
from retention.engine.validation import Connected, connect_and_check
from retention.errors import EXIT_BLOCKED, EXIT_FAILED, EXIT_OK, RetentionError, UsageError
from retention.logs import get_logger
from retention.policy.dates import cutoff
from retention.policy.model import Policy, PolicyFile

log = get_logger("retention.run")

# Called with (policy name, rows done so far, rows expected) as batches commit.
ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class PolicyOutcome:
    name: str
    database: str
    table: str
    action: str
    basis: str | None
    description: str | None
    retain: str
    align: str
    cutoff: str
    cutoff_local: str
    # Month-end windows of due events after the cut-off (see dates.cutoff), local wall time.
    cutoff_windows: list[list[str]] = field(default_factory=list)
    due: int = 0
    held: int = 0
    deferred: int = 0
    # Kept because `after` is not a date (dialects.readable_date); all of them but malformed
    # dates later than the cut-off, which only `validate` counts (a scan of the table).
    unreadable: int = 0
    applied: int = 0
    anonymised: int = 0
    cascaded: dict[str, int] = field(default_factory=dict)
    deferred_reasons: dict[str, int] = field(default_factory=dict)
    held_reasons: dict[str, int] = field(default_factory=dict)
    # Preview only: rows of the table no policy will ever remove (outside every `where`), and
    # the tables pointing at it that no policy covers (docs/policy-file.md, "without an end").
    no_end: int = 0
    no_end_tables: list[str] = field(default_factory=list)
    # on_referenced: detach: kept rows whose foreign key is (or would be) set to NULL.
    detached: int = 0
    detached_columns: dict[str, int] = field(default_factory=dict)
    total: int = 0
    status: str = "ok"
    sample: list[Any] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0
    # Anonymising policies only: the re-identification check (reidentification.Reidentification.as_dict).
    reidentification: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    # Range partitions dropped whole (a preview: those it would drop), {"partition", "rows"}.
    partitions: list[dict[str, Any]] = field(default_factory=list)
    # Rows per batch the walk used (adaptive, execution.BatchSizer): min, max, last, batches.
    batch_sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class RunResult:
    run: str
    as_of: str
    dry_run: bool
    policies: list[PolicyOutcome]
    purges: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int = EXIT_OK
    status: str = "ok"
    message: str | None = None


def resolve_as_of(as_of: pendulum.DateTime | None, timezone: str, dry_run: bool) -> pendulum.DateTime:
    now = pendulum.now(timezone)
    if as_of is None:
        return now
    if as_of > now and not dry_run:
        raise UsageError(
            f"--as-of {as_of.isoformat()} is in the future: only a --dry-run may look ahead "
            "(a real run must never delete a row before its term)"
        )
    return as_of


def select_policies(model: PolicyFile, names: Sequence[str], database: str | None = None) -> list[Policy]:
    """The policies a run works on: all, or those named, limited to one database if given."""
    if database is not None and database not in model.databases:
        raise UsageError(f"--database: unknown database {database!r}; defined: {', '.join(model.databases)}")
    candidates = [p for p in model.policies if database is None or model.database_of(p) == database]
    if database is not None and not candidates:
        raise UsageError(f"--database: no policy works on database {database!r}")
    if not names:
        return candidates
    known = {p.name for p in model.policies}
    unknown = [n for n in names if n not in known]
    if unknown:
        names_ = ", ".join(map(repr, unknown))
        raise UsageError(f"--policy: unknown policy {names_}; defined: {', '.join(sorted(known))}")
    elsewhere = [n for n in names if all(p.name != n for p in candidates)]
    if elsewhere:
        raise UsageError(f"--policy {', '.join(map(repr, elsewhere))}: not on database {database!r}")
    return [p for p in candidates if p.name in names]


def make_plans(model: PolicyFile, selected: Sequence[Policy], connected: Connected,
               moment: pendulum.DateTime) -> list[Plan]:
    """The selected policies compiled for one moment, children before parents."""
    plans: list[Plan] = []
    for p in run_order(selected, connected.schemas, model.database_of):
        db = model.database_of(p)
        cut = cutoff(moment, p.retain, p.align, model.timezone)  # type: ignore[arg-type]
        earlier = [q for q in plans if q.database == db]
        holders = [q for q in model.policies if model.database_of(q) == db]
        plans.append(Plan(p, db, connected.schemas[db], cut, earlier=earlier, holders=holders))
    return plans


def check_reidentification(conn: sa.Connection, plan: Plan, plans: Sequence[Plan],
                           model: PolicyFile) -> reidentification.Reidentification:
    return reidentification.measure(conn, plan, plans, lambda table: model.personal_columns(plan.database, table))


Measured = tuple[Plan, reidentification.Reidentification]


def reidentification_report(model: PolicyFile, connected: Connected,
                            moment: pendulum.DateTime | None = None) -> list[Measured]:
    """The check for every anonymising policy of the file, as tonight's run would find it (validate)."""
    moment = moment or pendulum.now(model.timezone)
    plans = make_plans(model, model.policies, connected, moment)
    out = []
    for plan in plans:
        if plan.policy.anonymises:
            with connected.engines[plan.database].connect() as conn:
                out.append((plan, check_reidentification(conn, plan, plans, model)))
                conn.rollback()
    return out


def _outcome(plan: Plan, model: PolicyFile) -> PolicyOutcome:
    p = plan.policy
    return PolicyOutcome(
        name=p.name, database=plan.database, table=p.table, action=p.action, basis=p.basis,
        description=p.description, retain=str(p.retain), align=p.align,
        cutoff=plan.cutoff.isoformat(), cutoff_local=plan.cutoff.local.strftime("%Y-%m-%d %H:%M:%S"),
        cutoff_windows=[[lo.isoformat(), hi.isoformat()] for lo, hi in plan.cutoff.windows],
        fields={c: (s if s is not None else "null") for c, s in (p.fields or {}).items()},
    )


def _set_counts(outcome: PolicyOutcome, counts: Counts) -> None:
    outcome.due, outcome.held, outcome.deferred = counts.due, counts.held, counts.deferred
    outcome.unreadable = counts.unreadable
    outcome.deferred_reasons = dict(counts.reasons)
    outcome.held_reasons = dict(counts.held_reasons)
    outcome.detached, outcome.detached_columns = counts.detached, dict(counts.detached_columns)
    outcome.total = counts.total


def execute_run(
    model: PolicyFile,
    *,
    dry_run: bool = False,
    as_of: pendulum.DateTime | None = None,
    policy_names: Sequence[str] = (),
    database: str | None = None,
    force: bool = False,
    progress: ProgressFactory | None = None,
    audit_key: bytes | None = None,
) -> RunResult:
    started = time.monotonic()
    moment = resolve_as_of(as_of, model.timezone, dry_run)
    selected = select_policies(model, policy_names, database)
    with ExitStack() as stack:
        connected: Connected = connect_and_check(model, selected, readonly=dry_run)
        stack.callback(connected.dispose)

        lock = stack.enter_context(RunLock(Path(model.audit.path), connected.engines, dry_run=dry_run))
        del lock
        log_ = stack.enter_context(audit.AuditLog(Path(model.audit.path), audit_key).open())
        run_id = f"{pendulum.now('UTC').format('YYYYMMDD[T]HHmmss[Z]')}-{uuid.uuid4().hex[:8]}"
        # Every log line from here on, errors included, carries the run id (the CLI clears it).
        structlog.contextvars.bind_contextvars(run=run_id)
        log.info("run.start", as_of=moment.isoformat(), dry_run=dry_run, policies=[p.name for p in selected],
                 databases=list(connected.engines), policy_file=model.source, version=__version__)

        recovery.recover(log_, run_id, model, connected)
        if not dry_run:
            monitor.ping(model.monitor.url, "start", run_id)

        plans = make_plans(model, selected, connected, moment)

        log_.append(
            "run.start", run_id, policy_file=model.source, policy_file_sha256=model.source_sha256,
            as_of=moment.isoformat(), dry_run=dry_run, user=getpass.getuser(), host=socket.gethostname(),
            version=__version__, force=force, chain=audit.CHAIN_KEYED if audit_key else audit.CHAIN_PLAIN,
            policies=[{
                "name": pl.policy.name, "database": pl.database, "table": pl.policy.table,
                "action": pl.policy.action, "retain": str(pl.policy.retain), "align": pl.policy.align,
                "cutoff": pl.cutoff.isoformat(), "basis": pl.policy.basis,
                "cutoff_windows": [[lo.isoformat(), hi.isoformat()] for lo, hi in pl.cutoff.windows],
            } for pl in plans],
        )
        result = RunResult(run=run_id, as_of=moment.isoformat(), dry_run=dry_run, policies=[])
        fakes = FakePool(model.locale)
        batch_counter = iter(range(1, 1 << 62))
        touched: dict[str, set[str]] = {}
        failed = False
        for plan in plans:
            outcome = _outcome(plan, model)
            result.policies.append(outcome)
            if failed:
                outcome.status = "skipped"
                continue
            t0 = time.monotonic()
            engine = connected.engines[plan.database]
            log_.append("policy.start", run_id, policy=plan.policy.name, database=plan.database,
                        table=plan.policy.table, action=plan.policy.action, cutoff=plan.cutoff.isoformat(),
                        basis=plan.policy.basis, dry_run=dry_run)
            try:
                with engine.connect() as conn:
                    counts = plan.count(conn, cascade=dry_run)
                    _set_counts(outcome, counts)
                    if not dry_run:  # a real run reports the rows it detached, not the count's estimate
                        outcome.detached, outcome.detached_columns = 0, {}
                    share = plan.touched(counts) / counts.total if counts.total else 0.0
                    if share > plan.policy.max_fraction and not force:
                        plan.blocked_by_guard = True
                        outcome.status = "blocked"
                        outcome.error = (
                            f"would change {plan.touched(counts)} of {counts.total} rows ({share:.0%}), more than "
                            f"max_fraction {plan.policy.max_fraction:.0%}; nothing done (use --force after checking)"
                        )
                    if plan.policy.anonymises:
                        # Before anything of the policy is written: on the values the rows would
                        # hold afterwards, so a failing policy touches nothing (exit 3).
                        t_check = time.monotonic()
                        reid = check_reidentification(conn, plan, plans, model)
                        # What the check costs, every night (integer milliseconds, as the audit log wants).
                        outcome.reidentification = reid.as_dict() | {
                            "duration_ms": round((time.monotonic() - t_check) * 1000)}
                        if not reid.passed and outcome.status == "blocked":
                            outcome.warnings.append(reid.failure())
                        elif not reid.passed and plan.policy.reidentification == "warn":
                            outcome.warnings.append(f"{reid.failure()} (reidentification: warn: it runs anyway)")
                        elif not reid.passed and outcome.status == "ok":
                            plan.blocked_by_guard = True
                            outcome.status = "blocked"
                            outcome.error = (f"{reid.failure()}; nothing done. Generalise or null the kept columns, "
                                             "detach or delete the linking rows, or set reidentification: warn "
                                             "(docs/policy-file.md)")
                    if outcome.status == "ok" and dry_run:
                        outcome.cascaded = counts.cascaded
                        outcome.sample = plan.sample(conn, counts)
                        outcome.anonymised = counts.to_anonymise
                        outcome.partitions = partitions.droppable(conn, plan)
                    if dry_run:
                        _lifetime(outcome, plan, model, conn)
                    conn.rollback()
                # Nothing to change: no walk. Anonymised rows stay past their term for good, and
                # finding none pending among them means visiting them all (1M accounts: 0.35 s
                # on PostgreSQL, 0.6 s on MariaDB, every night).
                if not dry_run and outcome.status == "ok" and plan.touched(counts):
                    bar = progress(plan.policy.name, plan.touched(counts)) if progress else None
                    applied = Executor(plan, engine, log_, run_id, lambda: next(batch_counter), fakes,
                                       moment.in_timezone(model.timezone).naive(), bar).run()
                    outcome.applied = applied.deleted if plan.policy.action == "delete" else applied.anonymised
                    outcome.anonymised = applied.anonymised if plan.policy.action == "delete" else 0
                    outcome.cascaded = applied.cascaded
                    outcome.detached, outcome.detached_columns = applied.detached, applied.detached_columns
                    outcome.partitions, outcome.batch_sizes = applied.partitions, applied.batch_sizes
                    if applied.deleted or applied.anonymised:
                        touched.setdefault(plan.database, set()).update([plan.policy.table, *plan.tree])
            except sa.exc.SQLAlchemyError as exc:
                failed = True
                outcome.status = "failed"
                outcome.error = _first_line(exc)
            outcome.duration_s = round(time.monotonic() - t0, 3)
            log_.append("policy.end", run_id, policy=outcome.name, due=outcome.due, held=outcome.held,
                        deferred=outcome.deferred, applied=outcome.applied, anonymised=outcome.anonymised,
                        cascaded=outcome.cascaded, deferred_reasons=outcome.deferred_reasons,
                        unreadable=outcome.unreadable,
                        detached=outcome.detached, detached_columns=outcome.detached_columns,
                        held_reasons=outcome.held_reasons,
                        **({"partitions": outcome.partitions} if outcome.partitions else {}),
                        **({"batch_sizes": outcome.batch_sizes} if outcome.batch_sizes else {}),
                        status=outcome.status if not dry_run or outcome.status != "ok" else "preview",
                        dry_run=dry_run, duration_ms=round(outcome.duration_s * 1000), error=outcome.error,
                        **({"reidentification": outcome.reidentification} if outcome.reidentification else {}))
            log.info("policy", policy=outcome.name, table=outcome.table, action=outcome.action,
                     cutoff=outcome.cutoff, due=outcome.due, held=outcome.held, deferred=outcome.deferred,
                     unreadable=outcome.unreadable,
                     applied=outcome.applied, anonymised=outcome.anonymised, cascaded=outcome.cascaded,
                     status=outcome.status, dry_run=dry_run, duration_s=outcome.duration_s)

        pending = False
        if not dry_run:
            for db, tables in touched.items():
                level = model.databases[db].purge
                res = purge.purge(connected.engines[db], db, sorted(tables), level)
                event = res.as_event()
                result.purges.append({**event, "duration_s": res.duration_s})
                log_.append("purge", run_id, **event)
                log.info("purge", **event)
                if res.result in ("pending", "failed"):
                    pending = True

        if failed:
            result.exit_code, result.status = EXIT_FAILED, "failed"
            result.message = "the run failed part-way; committed batches stay committed; a re-run finishes the work"
        elif pending:
            result.exit_code, result.status = EXIT_FAILED, "purge pending"
            result.message = "purge pending: removed values may still be in the database files; the next run retries"
        elif any(o.status == "blocked" for o in result.policies):
            result.exit_code, result.status = EXIT_BLOCKED, "blocked"
            result.message = "a safety guard (max_fraction, re-identification check) stopped a policy; the others ran"
        duration_s = round(time.monotonic() - started, 3)
        log_.append("run.end", run_id, status=result.status, exit_code=result.exit_code,
                    dry_run=dry_run, duration_ms=round(duration_s * 1000))
        totals = {key: sum(getattr(o, key) for o in result.policies)
                  for key in ("due", "held", "deferred", "applied", "anonymised")}
        statuses: dict[str, int] = {}
        for o in result.policies:
            statuses[o.status] = statuses.get(o.status, 0) + 1
        (log.info if result.exit_code == EXIT_OK else log.error)(
            "run.end", status=result.status, exit_code=result.exit_code, dry_run=dry_run, duration_s=duration_s,
            **totals, policies=statuses, audit_head=log_.head, message=result.message)
        if not dry_run:
            summary = f"{run_id} {result.status} exit {result.exit_code}"
            monitor.ping(model.monitor.url, "success" if result.exit_code == EXIT_OK else "fail", summary)
        return result


def _lifetime(outcome: PolicyOutcome, plan: Plan, model: PolicyFile, conn: sa.Connection) -> None:
    on_table = [q for q in model.policies if model.database_of(q) == plan.database and q.table == plan.policy.table]
    cond = never_in_scope(plan.table, on_table)
    if cond is not None:
        outcome.no_end = int(conn.execute(sa.select(sa.func.count()).select_from(plan.table).where(cond)).scalar_one())
    same_db = [q for q in model.policies if model.database_of(q) == plan.database]
    edges = uncovered_links(plan.schema, same_db).get(plan.policy.table, [])
    outcome.no_end_tables = [f"{e.child}.{','.join(e.child_cols)}" for e in edges]


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["execute_run", "RunResult", "PolicyOutcome", "RetentionError"]

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

from retention import __version__
from retention.anonymisation.strategies import FakePool
from retention.audit import log as audit
from retention.databases import purge
from retention.engine import monitor, recovery
from retention.engine.execution import Executor
from retention.engine.lock import RunLock
from retention.engine.planning import Counts, Plan, run_order
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
    applied: int = 0
    anonymised: int = 0
    cascaded: dict[str, int] = field(default_factory=dict)
    deferred_reasons: dict[str, int] = field(default_factory=dict)
    total: int = 0
    status: str = "ok"
    sample: list[Any] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0


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


def select_policies(model: PolicyFile, names: Sequence[str]) -> list[Policy]:
    if not names:
        return list(model.policies)
    known = {p.name for p in model.policies}
    unknown = [n for n in names if n not in known]
    if unknown:
        names_ = ", ".join(map(repr, unknown))
        raise UsageError(f"--policy: unknown policy {names_}; defined: {', '.join(sorted(known))}")
    return [p for p in model.policies if p.name in names]


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
    outcome.deferred_reasons = dict(counts.reasons)
    outcome.total = counts.total


def execute_run(
    model: PolicyFile,
    *,
    dry_run: bool = False,
    as_of: pendulum.DateTime | None = None,
    policy_names: Sequence[str] = (),
    force: bool = False,
    progress: ProgressFactory | None = None,
    audit_key: bytes | None = None,
) -> RunResult:
    started = time.monotonic()
    moment = resolve_as_of(as_of, model.timezone, dry_run)
    selected = select_policies(model, policy_names)
    with ExitStack() as stack:
        connected: Connected = connect_and_check(model, selected, readonly=dry_run)
        stack.callback(connected.dispose)

        lock = stack.enter_context(RunLock(Path(model.audit.path), connected.engines, dry_run=dry_run))
        del lock
        log_ = stack.enter_context(audit.AuditLog(Path(model.audit.path), audit_key).open())
        run_id = f"{pendulum.now('UTC').format('YYYYMMDD[T]HHmmss[Z]')}-{uuid.uuid4().hex[:8]}"

        recovery.recover(log_, run_id, model, connected)
        if not dry_run:
            monitor.ping(model.monitor.url, "start", run_id, rid=monitor.run_rid(run_id))

        order = run_order(selected, connected.schemas, model.database_of)
        plans: list[Plan] = []
        for p in order:
            db = model.database_of(p)
            cut = cutoff(moment, p.retain, p.align, model.timezone)  # type: ignore[arg-type]
            earlier = [q for q in plans if q.database == db]
            plans.append(Plan(p, db, connected.schemas[db], cut, earlier=earlier))

        log_.append(
            "run.start", run_id, policy_file=model.source, policy_file_sha256=model.source_sha256,
            as_of=moment.isoformat(), dry_run=dry_run, user=getpass.getuser(), host=socket.gethostname(),
            version=__version__, force=force,
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
                    share = plan.touched(counts) / counts.total if counts.total else 0.0
                    if share > plan.policy.max_fraction and not force:
                        plan.blocked_by_guard = True
                        outcome.status = "blocked"
                        outcome.error = (
                            f"would change {plan.touched(counts)} of {counts.total} rows ({share:.0%}), more than "
                            f"max_fraction {plan.policy.max_fraction:.0%}; nothing done (use --force after checking)"
                        )
                    elif dry_run:
                        outcome.cascaded = counts.cascaded
                        outcome.sample = plan.sample(conn, counts)
                        outcome.anonymised = counts.to_anonymise
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
                        status=outcome.status if not dry_run or outcome.status != "ok" else "preview",
                        dry_run=dry_run, duration_s=outcome.duration_s, error=outcome.error)
            log.info("policy", policy=outcome.name, table=outcome.table, action=outcome.action,
                     cutoff=outcome.cutoff, due=outcome.due, held=outcome.held, deferred=outcome.deferred,
                     applied=outcome.applied, anonymised=outcome.anonymised, cascaded=outcome.cascaded,
                     status=outcome.status, dry_run=dry_run, duration_s=outcome.duration_s)

        pending = False
        if not dry_run:
            for db, tables in touched.items():
                level = model.databases[db].purge
                res = purge.purge(connected.engines[db], db, sorted(tables), level)
                event = res.as_event()
                result.purges.append(event)
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
            result.message = "a safety guard (max_fraction) stopped a policy; the others ran"
        log_.append("run.end", run_id, status=result.status, exit_code=result.exit_code,
                    dry_run=dry_run, duration_s=round(time.monotonic() - started, 3))
        if not dry_run:
            summary = f"{run_id} {result.status} exit {result.exit_code}"
            monitor.ping(model.monitor.url, "success", summary, rid=monitor.run_rid(run_id),
                         exit_code=result.exit_code)
        return result


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["execute_run", "RunResult", "PolicyOutcome", "RetentionError"]

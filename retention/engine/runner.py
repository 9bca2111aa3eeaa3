"""A whole run: check, lock, recover, plan, enforce (or preview), purge, and audit it all.

Order matters for the contract's promises: everything that can be wrong with the input
(policy file, databases, schema, ``--as-of``) is found before the lock is taken or any
data is touched (exit 2); the lock comes before the audit log is opened (exit 4 touches
nothing); the audit log must be writable before the first batch (exit 1, nothing touched).
"""

from __future__ import annotations

import functools
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
from retention.engine import guards, monitor, recovery
from retention.engine.execution import Executor, first_line, kill_point, retrying
from retention.engine.lock import RunLock
from retention.engine.planning import Counts, Plan, run_order
from retention.engine.validation import Connected, connect_and_check
from retention.errors import (
    EXIT_BLOCKED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PURGE_PENDING,
    BatchCheckFailed,
    RetentionError,
    UsageError,
)
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
    accept_changes: Sequence[str] = (),
) -> RunResult:
    started = time.monotonic()
    moment = resolve_as_of(as_of, model.timezone, dry_run)
    selected = select_policies(model, policy_names)
    _check_accepted_names(selected, accept_changes)
    history = guards.read_history(Path(model.audit.path))
    if not dry_run:
        guards.check_clock(moment, history)
    with ExitStack() as stack:
        connected: Connected = connect_and_check(model, selected, readonly=dry_run, independent=True)
        stack.callback(connected.dispose)

        lock = stack.enter_context(RunLock(Path(model.audit.path), connected.engines, dry_run=dry_run))
        del lock
        log_ = stack.enter_context(audit.AuditLog(Path(model.audit.path), audit_key).open())
        run_id = f"{pendulum.now('UTC').format('YYYYMMDD[T]HHmmss[Z]')}-{uuid.uuid4().hex[:8]}"

        recovery.recover(log_, run_id, model, connected)
        if not dry_run:
            monitor.ping(model.monitor.url, "start", run_id)

        # A database that could not be reached fails its own policies; the others run.
        reachable = [p for p in selected if model.database_of(p) not in connected.unreachable]
        order = run_order(reachable, connected.schemas, model.database_of)
        plans: list[Plan] = []
        for p in order:
            db = model.database_of(p)
            cut = cutoff(moment, p.retain, p.align, model.timezone)  # type: ignore[arg-type]
            earlier = [q for q in plans if q.database == db]
            plans.append(Plan(p, db, connected.schemas[db], cut, earlier=earlier))

        rules = {pl.policy.name: guards.effective_rule(pl.policy, pl.database) for pl in plans}
        ratchet: dict[str, str] = {}
        for pl in plans:
            name = pl.policy.name
            baseline = history.rules.get(name)
            changes = guards.rule_changes(baseline.rule, rules[name], pl.cutoff, moment, model.timezone) \
                if baseline else []
            if not changes or baseline is None:
                continue
            if name in accept_changes:
                if not dry_run:
                    log_.append("policy.change.accepted", run_id, policy=name, user=getpass.getuser(),
                                of_run=baseline.run, old=baseline.rule, new=rules[name],
                                changes=[c.as_event() for c in changes])
                    log.warning("policy.change.accepted", policy=name, changes=[str(c) for c in changes])
            else:
                ratchet[name] = guards.ratchet_message(name, changes, baseline)
                pl.blocked_by_guard = True

        log_.append(
            "run.start", run_id, policy_file=model.source, policy_file_sha256=model.source_sha256,
            as_of=moment.isoformat(), dry_run=dry_run, user=getpass.getuser(), host=socket.gethostname(),
            version=__version__, force=force,
            policies=[{
                "name": pl.policy.name, "database": pl.database, "table": pl.policy.table,
                "action": pl.policy.action, "retain": str(pl.policy.retain), "align": pl.policy.align,
                "cutoff": pl.cutoff.isoformat(), "basis": pl.policy.basis,
                "cutoff_windows": [[lo.isoformat(), hi.isoformat()] for lo, hi in pl.cutoff.windows],
                # The effective rule, read back by the ratchet of later runs (guards.read_history).
                **{k: v for k, v in rules[pl.policy.name].items() if k not in ("database", "table", "action")},
                **({"ratchet": "blocked"} if pl.policy.name in ratchet else {}),
            } for pl in plans],
        )
        result = RunResult(run=run_id, as_of=moment.isoformat(), dry_run=dry_run, policies=[])
        fakes = FakePool(model.locale)
        batch_counter = iter(range(1, 1 << 62))
        touched: dict[str, set[str]] = {}
        # Databases where a policy failed: their later policies are skipped, the others' run.
        failed: set[str] = set()
        for plan in plans:
            outcome = _outcome(plan, model)
            result.policies.append(outcome)
            if plan.database in failed:
                outcome.status = "skipped"
                plan.blocked_by_guard = True
                continue
            t0 = time.monotonic()
            executor: Executor | None = None
            engine = connected.engines[plan.database]
            log_.append("policy.start", run_id, policy=plan.policy.name, database=plan.database,
                        table=plan.policy.table, action=plan.policy.action, cutoff=plan.cutoff.isoformat(),
                        basis=plan.policy.basis, dry_run=dry_run)
            try:
                counts, problem, sample = retrying(
                    functools.partial(_survey, plan, engine, dry_run, history, ratchet, force),
                    engine.dialect.name, functools.partial(_on_retry, log_, run_id, plan))
                _set_counts(outcome, counts)
                if problem:
                    plan.blocked_by_guard = True
                    outcome.status = "blocked"
                    outcome.error = problem
                if dry_run and (not problem or plan.policy.name in ratchet):
                    # A preview of a changed policy shows what the change would do.
                    outcome.cascaded = counts.cascaded
                    outcome.sample = sample
                    outcome.anonymised = counts.to_anonymise
                # Nothing to change: no walk. Anonymised rows stay past their term for good, and
                # finding none pending among them means visiting them all (1M accounts: 0.35 s
                # on PostgreSQL, 0.6 s on MariaDB, every night).
                if not dry_run and outcome.status == "ok" and plan.touched(counts):
                    bar = progress(plan.policy.name, plan.touched(counts)) if progress else None
                    executor = Executor(plan, engine, log_, run_id, lambda: next(batch_counter), fakes,
                                        moment.in_timezone(model.timezone).naive(), bar)
                    executor.run()
            except (sa.exc.SQLAlchemyError, BatchCheckFailed) as exc:
                failed.add(plan.database)
                outcome.status = "failed"
                outcome.error = first_line(exc)
            if executor is not None:
                # Also after a failure: the batches committed before it stay committed and counted.
                applied = executor.applied
                outcome.applied = applied.deleted if plan.policy.action == "delete" else applied.anonymised
                outcome.anonymised = applied.anonymised if plan.policy.action == "delete" else 0
                outcome.cascaded = applied.cascaded
                if applied.deleted or applied.anonymised:
                    touched.setdefault(plan.database, set()).update([plan.policy.table, *plan.tree])
            outcome.duration_s = round(time.monotonic() - t0, 3)
            # Rows of the policy's own table deleted or anonymised: what the rate guard learns from.
            changed_rows = executor.applied.deleted + executor.applied.anonymised \
                if executor is not None and outcome.status == "ok" else 0
            log_.append("policy.end", run_id, policy=outcome.name, due=outcome.due, held=outcome.held,
                        changed=changed_rows,
                        deferred=outcome.deferred, applied=outcome.applied, anonymised=outcome.anonymised,
                        cascaded=outcome.cascaded, deferred_reasons=outcome.deferred_reasons,
                        status=outcome.status if not dry_run or outcome.status != "ok" else "preview",
                        dry_run=dry_run, duration_s=outcome.duration_s, error=outcome.error)
            log.info("policy", policy=outcome.name, table=outcome.table, action=outcome.action,
                     cutoff=outcome.cutoff, due=outcome.due, held=outcome.held, deferred=outcome.deferred,
                     applied=outcome.applied, anonymised=outcome.anonymised, cascaded=outcome.cascaded,
                     status=outcome.status, dry_run=dry_run, duration_s=outcome.duration_s)

        for p in selected:
            db = model.database_of(p)
            if db in connected.unreachable:
                result.policies.append(_unreached(p, db, moment, model, connected.unreachable[db]))
                log_.append("policy.end", run_id, policy=p.name, database=db, due=0, held=0, deferred=0,
                            applied=0, anonymised=0, changed=0, cascaded={}, deferred_reasons={},
                            status="failed", dry_run=dry_run, duration_s=0.0, error=result.policies[-1].error)

        pending = purge_failed = False
        if not dry_run:
            for db, tables in touched.items():
                level = model.databases[db].purge
                kill_point("purge")
                res = purge.purge(connected.engines[db], db, sorted(tables), level)
                event = res.as_event()
                result.purges.append(event)
                log_.append("purge", run_id, **event)
                log.info("purge", **event)
                if res.result == "pending":
                    pending = True
                elif res.result == "failed":
                    purge_failed = True

        if connected.unreachable:
            result.exit_code, result.status = EXIT_FAILED, "failed"
            result.message = (f"database(s) {', '.join(sorted(connected.unreachable))} could not be reached: their "
                              "policies did not run; the other databases' policies ran; a re-run finishes the work")
        elif failed:
            result.exit_code, result.status = EXIT_FAILED, "failed"
            result.message = "the run failed part-way; committed batches stay committed; a re-run finishes the work"
        elif purge_failed:
            result.exit_code, result.status = EXIT_FAILED, "failed"
            result.message = "the purge failed: removed values may still be in the database files (see purge)"
        elif any(o.status == "blocked" for o in result.policies):
            result.exit_code, result.status = EXIT_BLOCKED, "blocked"
            result.message = "a safety guard stopped a policy (see its error); the others ran"
        elif pending:
            result.exit_code, result.status = EXIT_PURGE_PENDING, "purge pending"
            result.message = "purge pending: removed values may still be in the database files; the next run retries"
        log_.append("run.end", run_id, status=result.status, exit_code=result.exit_code,
                    dry_run=dry_run, duration_s=round(time.monotonic() - started, 3))
        if not dry_run:
            summary = f"{run_id} {result.status} exit {result.exit_code}"
            monitor.ping(model.monitor.url, "success" if result.exit_code == EXIT_OK else "fail", summary)
        return result


def _unreached(p: Policy, db: str, moment: pendulum.DateTime, model: PolicyFile, reason: str) -> PolicyOutcome:
    cut = cutoff(moment, p.retain, p.align, model.timezone)  # type: ignore[arg-type]
    return PolicyOutcome(
        name=p.name, database=db, table=p.table, action=p.action, basis=p.basis, description=p.description,
        retain=str(p.retain), align=p.align, cutoff=cut.isoformat(),
        cutoff_local=cut.local.strftime("%Y-%m-%d %H:%M:%S"),
        cutoff_windows=[[lo.isoformat(), hi.isoformat()] for lo, hi in cut.windows], status="failed",
        error=f"database '{db}' unreachable, nothing done: {reason}",
    )


def _check_accepted_names(selected: Sequence[Policy], names: Sequence[str]) -> None:
    known = {p.name for p in selected}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--accept-policy-change: no policy {', '.join(map(repr, unknown))} in this run; "
                         f"policies: {', '.join(sorted(known))}")


def _survey(plan: Plan, engine: sa.Engine, dry_run: bool, history: guards.History, ratchet: dict[str, str],
            force: bool) -> tuple[Counts, str | None, list[Any]]:
    """Counts, the guard's verdict and (preview) the first keys: one read-only transaction."""
    with engine.connect() as conn:
        counts = plan.count(conn, cascade=dry_run)
        problem = _guard_problem(plan, counts, history, ratchet, force)
        sample = plan.sample(conn, counts) if dry_run and (not problem or plan.policy.name in ratchet) else []
        conn.rollback()
    return counts, problem, sample


def _on_retry(log_: audit.AuditLog, run_id: str, plan: Plan, attempt: int, exc: BaseException, wait: float) -> None:
    log_.append("policy.retry", run_id, policy=plan.policy.name, database=plan.database, attempt=attempt,
                wait_s=wait, error=first_line(exc))
    log.warning("policy.retry", policy=plan.policy.name, attempt=attempt, wait_s=wait, error=first_line(exc))


def _guard_problem(plan: Plan, counts: Counts, history: guards.History, ratchet: dict[str, str],
                   force: bool) -> str | None:
    """Why a safety guard blocks this policy tonight, or None. Only the ratchet ignores --force:
    a changed rule needs its own acceptance, by name."""
    name = plan.policy.name
    if name in ratchet:
        return ratchet[name]
    if force:
        return None
    would, total = plan.touched(counts), counts.total
    share = would / total if total else 0.0
    if share > plan.policy.max_fraction:
        return (f"would change {would} of {total} rows ({share:.0%}), more than "
                f"max_fraction {plan.policy.max_fraction:.0%}; nothing done (use --force after checking)")
    return guards.everything_due(would, total) or guards.rate_problem(name, would, history)


__all__ = ["execute_run", "RunResult", "PolicyOutcome", "RetentionError"]

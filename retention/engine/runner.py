"""A whole run: check, lock, recover, plan, enforce (or preview), purge, and audit it all.

Order matters for the contract's promises: everything that can be wrong with the input
(policy file, databases, schema, ``--as-of``) is found before the lock is taken or any
data is touched (exit 2); the lock comes before the audit log is opened (exit 4 touches
nothing); the audit log must be writable before the first batch (exit 1, nothing touched).
A dry run stops after the input checks: no lock, no recovery, no audit entry (but the one
``preview`` entry of ``--record``).
"""

from __future__ import annotations

import csv
import functools
import getpass
import itertools
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pendulum
import sqlalchemy as sa
import structlog

from retention import __version__
from retention.anonymisation import reidentification
from retention.anonymisation.strategies import FakePool
from retention.audit import log as audit
from retention.databases import purge
from retention.engine import guards, holds, keys, monitor, partitions, recovery
from retention.engine.execution import Applied, Executor, first_line, kill_point, retrying
from retention.engine.lock import RunLock
from retention.engine.planning import Counts, Plan, never_in_scope, run_order, uncovered_links
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

if TYPE_CHECKING:
    from retention.approval.apply import ApprovedPlan

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
    # Done: applied = deleted + anonymised (CONTRACT.md section 3), 0 in a dry run; for a
    # policy that failed part-way, what its committed batches did.
    applied: int = 0
    deleted: int = 0
    anonymised: int = 0
    # Found by the count before any batch: what the run is to do (what a preview predicts).
    to_delete: int = 0
    to_anonymise: int = 0
    # Deferred rows this policy anonymised on an earlier night (on_referenced: anonymise).
    already_anonymised: int = 0
    # The run covered only some policies (--policy): the others' removals are not counted in.
    partial: bool = False
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
    # The rule, for the plain-words sentence of the preview.
    after: str = ""
    where: dict[str, Any] = field(default_factory=dict)
    exclude: dict[str, Any] = field(default_factory=dict)
    on_referenced: str = "defer"
    error: str | None = None
    duration_s: float = 0.0
    # Anonymising policies only: the re-identification check (reidentification.Reidentification.as_dict).
    reidentification: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    # run --plan: the plan's SHA-256, its keys to change, and those of them no longer due tonight.
    plan: str | None = None
    planned: int = 0
    skipped_keys: int = 0
    # Range partitions dropped whole (a preview: those it would drop), {"partition", "rows"}.
    partitions: list[dict[str, Any]] = field(default_factory=list)
    # Rows per batch the walk used (adaptive, execution.BatchSizer): min, max, last, batches.
    batch_sizes: dict[str, int] = field(default_factory=dict)
    # Where duration_s went, in seconds: "survey" (counts, guards, sample), "check" (the
    # re-identification check), "batches" (the walk), of which "commit" and "audit" (durability).
    phases_s: dict[str, float] = field(default_factory=dict)


@dataclass
class RunResult:
    run: str
    as_of: str
    dry_run: bool
    policies: list[PolicyOutcome]
    purges: list[dict[str, Any]] = field(default_factory=list)
    # Policies of the file this run left out (--policy): its counts ignore what they would do.
    not_selected: list[str] = field(default_factory=list)
    timezone: str = ""
    policy_file_sha256: str = ""
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
    today = holds.local_day(moment, model.timezone)
    registry = {db: holds.active_keys(engine, today) for db, engine in connected.engines.items()}
    for p in run_order(selected, connected.schemas, model.database_of):
        db = model.database_of(p)
        cut = cutoff(moment, p.retain, p.align, model.timezone)  # type: ignore[arg-type]
        earlier = [q for q in plans if q.database == db]
        holders = [q for q in model.policies if model.database_of(q) == db]
        plans.append(Plan(p, db, connected.schemas[db], cut, earlier=earlier, holders=holders,
                          registry=registry.get(db, {})))
    return plans


def check_reidentification(conn: sa.Connection, plan: Plan, plans: Sequence[Plan],
                           model: PolicyFile, let_through: bool = False) -> reidentification.Reidentification:
    return reidentification.measure(conn, plan, plans, lambda table: model.personal_columns(plan.database, table),
                                    let_through)


Measured = tuple[Plan, reidentification.Reidentification]


def reidentification_report(model: PolicyFile, connected: Connected,
                            moment: pendulum.DateTime | None = None) -> list[Measured]:
    """The check for every anonymising policy of the file, as tonight's run would find it (validate)."""
    moment = moment or pendulum.now(model.timezone)
    # The file's policies on the databases this validate connected to (--database may name one).
    plans = make_plans(model, [p for p in model.policies if model.database_of(p) in connected.engines],
                       connected, moment)
    out = []
    for plan in plans:
        if plan.policy.anonymises:
            with connected.engines[plan.database].connect() as conn:
                # As a run would read it: off the index on a backlog (it counts first).
                plan.choose_access(conn)
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
        after=p.after, where=dict(p.where), exclude=dict(p.exclude), on_referenced=p.on_referenced,
    )


def _set_counts(outcome: PolicyOutcome, plan: Plan, counts: Counts) -> None:
    outcome.due, outcome.held, outcome.deferred = counts.due, counts.held, counts.deferred
    outcome.unreadable = counts.unreadable
    outcome.deferred_reasons = dict(counts.reasons)
    outcome.held_reasons = dict(counts.held_reasons)
    outcome.detached, outcome.detached_columns = counts.detached, dict(counts.detached_columns)
    outcome.total = counts.total
    if plan.policy.action == "anonymise":
        outcome.to_anonymise = counts.due
    else:
        outcome.to_delete = counts.due - counts.deferred
        outcome.to_anonymise = counts.to_anonymise
        if plan.policy.on_referenced == "anonymise":
            outcome.already_anonymised = counts.deferred - counts.to_anonymise


def _set_applied(outcome: PolicyOutcome, applied: Applied) -> None:
    outcome.deleted, outcome.anonymised = applied.deleted, applied.anonymised
    outcome.applied = applied.deleted + applied.anonymised
    outcome.cascaded = dict(applied.cascaded)
    outcome.detached, outcome.detached_columns = applied.detached, dict(applied.detached_columns)


class _NoAudit:
    """The audit sink of a dry run: a preview appends nothing (``--record`` adds one entry)."""

    path: Path | None = None

    def append(self, event: str, run: str, **fields: Any) -> dict[str, Any]:
        return {}



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
    record: bool = False,
    keys_file: Path | None = None,
    accept_changes: Sequence[str] = (),
    approved: ApprovedPlan | None = None,
) -> RunResult:
    """Enforce the policies, or preview them (``dry_run``).

    A preview is read-only everywhere: no run lock (it must work while the nightly run holds
    it, and never make that run exit 4), no recovery (that writes), nothing appended to the
    audit log unless ``record`` (then one ``preview`` entry, at the end).
    """
    started = time.monotonic()
    moment = resolve_as_of(as_of, model.timezone, dry_run)
    selected = select_policies(model, policy_names, database)
    _check_accepted_names(selected, accept_changes)
    history = guards.read_history(Path(model.audit.path))
    if not dry_run:
        guards.check_clock(moment, history)
    with ExitStack() as stack:
        connected: Connected = connect_and_check(model, selected, readonly=dry_run, independent=True)
        stack.callback(connected.dispose)
        if approved is not None:
            from retention.approval.apply import check_databases

            check_databases(approved, connected)
        run_id = f"{pendulum.now('UTC').format('YYYYMMDD[T]HHmmss[Z]')}-{uuid.uuid4().hex[:8]}"
        # Every log line from here on, errors included, carries the run id (the CLI clears it).
        structlog.contextvars.bind_contextvars(run=run_id)
        log.info("run.start", as_of=moment.isoformat(), dry_run=dry_run, policies=[p.name for p in selected],
                 databases=list(connected.engines), policy_file=model.source, version=__version__)

        write_key: Callable[[list[Any]], None] | None = None
        if keys_file is not None:
            write_key = _open_keys_file(stack, keys_file)
        log_: Any
        interrupted: list[str] = []
        if dry_run:
            log_ = _NoAudit()
        else:
            stack.enter_context(RunLock(Path(model.audit.path), connected.engines))
            log_ = stack.enter_context(audit.AuditLog(Path(model.audit.path), audit_key).open())
            interrupted = recovery.recover(log_, run_id, model, connected)
            monitor.ping(model.monitor.url, "start", run_id, rid=monitor.run_rid(run_id))

        # A database that could not be reached fails its own policies; the others run.
        reachable = [p for p in selected if model.database_of(p) not in connected.unreachable]
        plans = make_plans(model, reachable, connected, moment)

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
            version=__version__, force=force, **({"plan": approved.sha256} if approved else {}),
            chain=audit.CHAIN_KEYED if audit_key else audit.CHAIN_PLAIN,
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
        expired = holds.record_expiries(model, connected.engines, log_, run_id, moment, dry_run)
        result = RunResult(run=run_id, as_of=moment.isoformat(), dry_run=dry_run, policies=[],
                           not_selected=[p.name for p in model.policies if p.name not in {q.name for q in selected}],
                           timezone=model.timezone, policy_file_sha256=model.source_sha256)
        fakes = FakePool(model.locale)
        batch_counter = iter(range(1, 1 << 62))
        touched: dict[str, set[str]] = {}
        # Databases where a policy failed: their later policies are skipped, the others' run.
        failed: set[str] = set()
        partial = len(selected) < len(model.policies)
        for plan in plans:
            outcome = _outcome(plan, model)
            outcome.partial = partial
            outcome.warnings += expired.get(plan.policy.name, [])
            result.policies.append(outcome)
            if plan.database in failed:
                outcome.status = "skipped"
                plan.blocked_by_guard = True
                continue
            t0 = time.monotonic()
            engine = connected.engines[plan.database]
            restrict = approved.keys.get(plan.policy.name) if approved else None
            if restrict is not None:
                outcome.plan, outcome.planned = approved.sha256, len(restrict)  # type: ignore[union-attr]
                outcome.skipped_keys = len(restrict)  # until the Executor says how many it changed
            log_.append("policy.start", run_id, policy=plan.policy.name, database=plan.database,
                        table=plan.policy.table, action=plan.policy.action, cutoff=plan.cutoff.isoformat(),
                        basis=plan.policy.basis, dry_run=dry_run)
            try:
                counts, problem, sample = retrying(
                    # An approved plan is the person's decision on exactly these keys: no guard but the
                    # ratchet weighs it (a changed rule needs its own acceptance).
                    functools.partial(_survey, plan, engine, dry_run, history, ratchet, force or restrict is not None),
                    engine.dialect.name, functools.partial(_on_retry, log_, run_id, plan))
                _set_counts(outcome, plan, counts)
                outcome.phases_s["survey"] = round(time.monotonic() - t0, 3)
                if not dry_run:  # a real run reports the rows it detached, not the count's estimate
                    outcome.detached, outcome.detached_columns = 0, {}
                if problem:
                    plan.blocked_by_guard = True
                    outcome.status = "blocked"
                    outcome.error = problem
                elif not dry_run and restrict is None and plan.policy.approval == "required":
                    plan.blocked_by_guard = True
                    outcome.status = "awaiting approval"
                    outcome.error = ("approval: required: applied only from an approved plan; nothing done "
                                     "(retention plan / approve / run --plan)")
                if dry_run and plan.policy.approval == "required":
                    outcome.warnings.append("approval: required: a real run applies this policy only from an "
                                            "approved plan (retention plan / approve / run --plan)")
                if plan.policy.anonymises:
                    _check_reidentification(outcome, engine, plan, plans, model, dry_run)
                    # The check times itself (reidentification.duration_ms): one clock, one figure.
                    outcome.phases_s["check"] = outcome.reidentification["duration_ms"] / 1000  # type: ignore[index]
                if dry_run and (outcome.status == "ok" or plan.policy.name in ratchet):
                    # A preview of a changed policy shows what the change would do.
                    outcome.cascaded = counts.cascaded
                    outcome.sample = sample
                if dry_run:
                    with engine.connect() as conn:
                        if write_key is not None and outcome.status == "ok":
                            keys.write_keys(conn, plan, write_key)
                        if outcome.status == "ok" and plan.policy.action == "delete":
                            outcome.partitions = partitions.droppable(conn, plan)
                        _lifetime(outcome, plan, model, conn)
                        conn.rollback()
                # Nothing to change: no walk. Anonymised rows stay past their term for good, and
                # finding none pending among them means visiting them all (1M accounts: 0.35 s
                # on PostgreSQL, 0.6 s on MariaDB, every night).
                if not dry_run and outcome.status == "ok" and plan.touched(counts):
                    plan.choose_batch_access(counts)
                    bar = progress(plan.policy.name, plan.touched(counts)) if progress else None
                    # Ours, so that what the committed batches did survives a failing batch.
                    applied = Applied()
                    t_walk = time.monotonic()
                    try:
                        Executor(plan, engine, log_, run_id, lambda: next(batch_counter), fakes,
                                 moment.in_timezone(model.timezone).naive(), bar, restrict=restrict,
                                 tag={"plan": approved.sha256} if approved and restrict is not None else None,
                                 planned_anonymise=approved.anonymise.get(plan.policy.name) if approved else None,
                                 ).run(applied)
                    finally:
                        _set_applied(outcome, applied)
                        outcome.partitions, outcome.batch_sizes = applied.partitions, applied.batch_sizes
                        outcome.phases_s |= {"batches": round(time.monotonic() - t_walk, 3),
                                             "commit": round(applied.commit_s, 3), "audit": round(applied.audit_s, 3)}
                        if restrict is not None:
                            outcome.skipped_keys = len(restrict) - applied.deleted - applied.anonymised
                        if applied.deleted or applied.anonymised:
                            # Also after a failure: committed batches left bytes to purge.
                            touched.setdefault(plan.database, set()).update([plan.policy.table, *plan.tree])
            except (sa.exc.SQLAlchemyError, BatchCheckFailed) as exc:
                failed.add(plan.database)
                outcome.status = "failed"
                outcome.error = first_line(exc)
            outcome.duration_s = round(time.monotonic() - t0, 3)
            # Rows of the policy's own table deleted or anonymised: what the rate guard learns from.
            changed_rows = outcome.deleted + outcome.anonymised if outcome.status == "ok" else 0
            log_.append("policy.end", run_id, policy=outcome.name, due=outcome.due, held=outcome.held,
                        changed=changed_rows,
                        deferred=outcome.deferred, applied=outcome.applied, deleted=outcome.deleted,
                        anonymised=outcome.anonymised,
                        cascaded=outcome.cascaded, deferred_reasons=outcome.deferred_reasons,
                        unreadable=outcome.unreadable,
                        detached=outcome.detached, detached_columns=outcome.detached_columns,
                        held_reasons=outcome.held_reasons,
                        **({"partitions": outcome.partitions} if outcome.partitions else {}),
                        **({"batch_sizes": outcome.batch_sizes} if outcome.batch_sizes else {}),
                        status=outcome.status if not dry_run or outcome.status != "ok" else "preview",
                        dry_run=dry_run, duration_ms=round(outcome.duration_s * 1000), error=outcome.error,
                        **({"reidentification": outcome.reidentification} if outcome.reidentification else {}),
                        **({"plan": outcome.plan, "planned_keys": outcome.planned,
                            "skipped_keys": outcome.skipped_keys} if outcome.plan else {}))
            if restrict is not None:
                # What it removed is gone; its rows still here (skipped, or due but never approved)
                # stay, so a later policy's rows they point at must wait (Plan.removed_earlier).
                plan.blocked_by_guard = True
            log.info("policy", policy=outcome.name, table=outcome.table, action=outcome.action,
                     cutoff=outcome.cutoff, due=outcome.due, held=outcome.held, deferred=outcome.deferred,
                     unreadable=outcome.unreadable,
                     applied=outcome.applied, deleted=outcome.deleted, anonymised=outcome.anonymised,
                     to_delete=outcome.to_delete, to_anonymise=outcome.to_anonymise, cascaded=outcome.cascaded,
                     status=outcome.status, dry_run=dry_run, duration_s=outcome.duration_s)

        for p in selected:
            db = model.database_of(p)
            if db in connected.unreachable:
                result.policies.append(_unreached(p, db, moment, model, connected.unreachable[db]))
                log_.append("policy.end", run_id, policy=p.name, database=db, due=0, held=0, deferred=0,
                            applied=0, anonymised=0, changed=0, cascaded={}, deferred_reasons={},
                            status="failed", dry_run=dry_run, duration_ms=0, error=result.policies[-1].error)

        pending = purge_failed = False
        if not dry_run:
            # A purge an earlier run left pending or failed is retried now, even if nothing new went.
            debts = [recovery.purge_debts(Path(model.audit.path), connected.engines),
                     recovery.unpurged(Path(model.audit.path), interrupted, connected.engines)]
            for debt in debts:
                for db, tables in debt.items():
                    touched.setdefault(db, set()).update(tables)
            for db, tables in touched.items():
                level = model.databases[db].purge
                kill_point("purge")
                res = purge.purge(connected.engines[db], db, sorted(tables), level, on_step=_purge_kill_points())
                event = res.as_event()
                result.purges.append({**event, "duration_s": res.duration_s})
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
        elif any(o.status == "awaiting approval" for o in result.policies):
            waiting = ", ".join(o.name for o in result.policies if o.status == "awaiting approval")
            result.exit_code, result.status = EXIT_BLOCKED, "awaiting approval"
            result.message = (f"awaiting approval: {waiting} (approval: required) applied only from an approved "
                              "plan (retention plan / approve / run --plan); the others ran")
        duration_s = round(time.monotonic() - started, 3)
        log_.append("run.end", run_id, status=result.status, exit_code=result.exit_code,
                    dry_run=dry_run, duration_ms=round(duration_s * 1000))
        totals = {key: sum(getattr(o, key) for o in result.policies)
                  for key in ("due", "held", "deferred", "applied", "deleted", "anonymised")}
        # Before run.end is logged: under --log-format json that line carries the "not recorded" message.
        if dry_run and record:
            _record_preview(model, result, audit_key)
        statuses: dict[str, int] = {}
        for o in result.policies:
            statuses[o.status] = statuses.get(o.status, 0) + 1
        (log.info if result.exit_code == EXIT_OK else log.error)(
            "run.end", status=result.status, exit_code=result.exit_code, dry_run=dry_run, duration_s=duration_s,
            **totals, policies=statuses, audit_head=getattr(log_, "head", None), message=result.message)
        if not dry_run:
            summary = f"{run_id} {result.status} exit {result.exit_code}"
            monitor.ping(model.monitor.url, "success", summary, rid=monitor.run_rid(run_id),
                         exit_code=result.exit_code)
        return result


def _lifetime(outcome: PolicyOutcome, plan: Plan, model: PolicyFile, conn: sa.Connection) -> None:
    on_table = [q for q in model.policies if model.database_of(q) == plan.database and q.table == plan.policy.table]
    cond = never_in_scope(plan.table, on_table)
    if cond is not None:
        outcome.no_end = int(conn.execute(sa.select(sa.func.count()).select_from(plan.table).where(cond)).scalar_one())
    same_db = [q for q in model.policies if model.database_of(q) == plan.database]
    edges = uncovered_links(plan.schema, same_db).get(plan.policy.table, [])
    outcome.no_end_tables = [f"{e.child}.{','.join(e.child_cols)}" for e in edges]


def _open_keys_file(stack: ExitStack, path: Path) -> Callable[[list[Any]], None]:
    try:
        f = stack.enter_context(path.open("w", encoding="utf-8", newline=""))
    except OSError as exc:
        raise UsageError(f"--keys {path}: cannot write: {exc.strerror}") from None
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(keys.HEADER)
    return writer.writerow


def _record_preview(model: PolicyFile, result: RunResult, audit_key: bytes | None) -> None:
    """Append the one ``preview`` entry of ``run --dry-run --record``: when, against which policy
    file, and the counts; no key and no value. A log held by a running job is not waited for:
    the preview stands, and the result says it was not recorded (exit 1)."""
    policies = [{
        "name": o.name, "database": o.database, "table": o.table, "action": o.action, "cutoff": o.cutoff,
        "basis": o.basis, "status": o.status, "due": o.due, "held": o.held, "deferred": o.deferred,
        "to_delete": o.to_delete, "to_anonymise": o.to_anonymise, "already_anonymised": o.already_anonymised,
        "cascaded": o.cascaded, "deferred_reasons": o.deferred_reasons,
        # What the DPO saw of "anonymised": the check's numbers (no value of a row).
        **({"reidentification": o.reidentification} if o.reidentification is not None else {}),
    } for o in result.policies]
    try:
        with audit.AuditLog(Path(model.audit.path), audit_key) as log_:
            log_.append("preview", result.run, as_of=result.as_of, policy_file=model.source,
                        policy_file_sha256=model.source_sha256, user=getpass.getuser(),
                        host=socket.gethostname(), version=__version__,
                        partial=any(o.partial for o in result.policies), policies=policies)
    except RetentionError as exc:
        result.exit_code = max(result.exit_code, exc.exit_code)
        result.status = "failed" if result.status == "ok" else result.status
        result.message = f"the preview was not recorded: {exc}"


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


def _purge_kill_points() -> Callable[[str], None]:
    """Kill points ``purge.step1``, ``purge.step2``, ... at each step of one purge (crash tests)."""
    steps = itertools.count(1)
    return lambda _step: kill_point(f"purge.step{next(steps)}")


def _on_retry(log_: audit.AuditLog, run_id: str, plan: Plan, attempt: int, exc: BaseException, wait: float) -> None:
    log_.append("policy.retry", run_id, policy=plan.policy.name, database=plan.database, attempt=attempt,
                wait_ms=round(wait * 1000), error=first_line(exc))
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
                f"max_fraction {plan.policy.max_fraction:.0%}; nothing done (approve a plan "
                "(retention plan / approve / run --plan) or use --force)")
    return guards.everything_due(would, total) or guards.rate_problem(name, would, history)


def _check_reidentification(outcome: PolicyOutcome, engine: sa.Engine, plan: Plan, plans: Sequence[Plan],
                            model: PolicyFile, dry_run: bool) -> None:
    """Before anything of the policy is written: on the values the rows would hold afterwards,
    so a failing policy touches nothing (exit 3).

    A preview of a policy a guard blocked measures the rows as if it were let through (``--force``
    or an approved plan): a first night's backlog is always blocked, and the DPO deciding whether to
    let it through must see whether the result would be anonymous. A real run that stays blocked
    reports the rows as they stay."""
    as_if = dry_run and plan.blocked_by_guard
    t_check = time.monotonic()
    with engine.connect() as conn:
        reid = check_reidentification(conn, plan, plans, model, let_through=as_if)
        conn.rollback()
    # What the check costs, every night (integer milliseconds, as the audit log wants).
    outcome.reidentification = reid.as_dict() | {"duration_ms": round((time.monotonic() - t_check) * 1000)}
    if as_if:
        outcome.reidentification["if_let_through"] = True
    if reid.passed:
        return
    if outcome.status == "blocked":
        outcome.warnings.append(f"{reid.failure()} (if let through)" if as_if else reid.failure())
    elif plan.policy.reidentification == "warn":
        outcome.warnings.append(f"{reid.failure()} (reidentification: warn: it runs anyway)")
    elif outcome.status == "ok":
        plan.blocked_by_guard = True
        outcome.status = "blocked"
        outcome.error = (f"{reid.failure()}; nothing done. Generalise or null the kept columns, "
                         "detach or delete the linking rows, or set reidentification: warn "
                         "(docs/policy-file.md)")


__all__ = ["execute_run", "RunResult", "PolicyOutcome", "RetentionError"]

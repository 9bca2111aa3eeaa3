"""What a run finds of the runs before it: interrupted runs and batches of unknown fate.

A run killed between a batch's ``intent`` and its ``committed`` entry leaves the question
"did that transaction commit?". The database knows: the next run looks the keys up and
records ``batch.recovered`` with what really happened, before doing anything else.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from retention.audit import log as audit
from retention.databases import dialects
from retention.engine.planning import pending
from retention.engine.validation import Connected
from retention.logs import get_logger
from retention.policy.model import PolicyFile

log = get_logger("retention.recovery")


def recover(log_: Any, run_id: str, model: PolicyFile, connected: Connected) -> list[str]:
    """Close what earlier runs left open; returns the ids of the runs found interrupted."""
    path = log_.path
    interrupted: list[str] = []
    for start in audit.unfinished_runs(path):
        interrupted.append(start["run"])
        log_.append("run.interrupted", run_id, interrupted_run=start["run"], started=start.get("ts"))
        log.warning("run.interrupted", interrupted_run=start["run"])
    for intent in audit.open_intents(path):
        if intent.get("database") in connected.unreachable:
            # Its database could not be reached tonight: the question stays open for a run that can
            # look, rather than being closed as "unknown" for good.
            log.warning("batch.unresolved", policy=intent.get("policy"), of_run=intent["run"],
                        batch=intent["batch"], database=intent.get("database"))
            continue
        result, detail = _fate(intent, model, connected)
        log_.append("batch.recovered", run_id, policy=intent.get("policy"), of_run=intent["run"],
                    batch=intent["batch"], result=result, detail=detail)
        log.warning("batch.recovered", policy=intent.get("policy"), of_run=intent["run"],
                    batch=intent["batch"], result=result)
    return interrupted


def _fate(intent: dict[str, Any], model: PolicyFile, connected: Connected) -> tuple[str, str]:
    engine = connected.engines.get(intent.get("database", ""))
    schema = connected.schemas.get(intent.get("database", ""))
    table = schema.tables.get(intent.get("table", "")) if schema else None
    if engine is None or table is None or intent.get("key_column") not in (table.c if table is not None else {}):
        return "unknown", "the batch's database or table is not part of this run; run all policies to resolve it"
    keys = intent.get("keys") or []
    key = table.c[intent["key_column"]]
    cond = dialects.key_in(key, keys, engine.dialect.name)
    with engine.connect() as conn:
        if intent.get("action") == "detach":
            # Detached rows stay; the change was their foreign key set to NULL.
            columns = [table.c[c] for c in intent.get("columns") or [] if c in table.c]
            still = sa.or_(*[c.is_not(None) for c in columns]) if columns else sa.false()
            left = conn.execute(sa.select(sa.func.count()).select_from(table).where(cond, still)).scalar_one()
        elif intent.get("action") == "delete":
            left = conn.execute(sa.select(sa.func.count()).select_from(table).where(cond)).scalar_one()
        else:
            policy = next((p for p in model.policies if p.name == intent.get("policy")), None)
            if policy is None:
                return "unknown", "the policy is no longer in the policy file"
            witness = pending(policy, table)
            left = conn.execute(sa.select(sa.func.count()).select_from(table).where(cond, witness)).scalar_one()
        conn.rollback()
    if intent.get("partition"):
        # A whole partition: dropped with all its rows, or not at all (one statement).
        name = intent["partition"]
        if left == 0:
            return "applied", f"partition {name} was dropped: none of the {len(keys)} rows is left"
        if left == len(keys):
            return "not applied", f"partition {name} was not dropped: all {len(keys)} rows are still there"
    if left == 0:
        return "applied", f"none of the {len(keys)} rows is left as it was: the transaction committed"
    if left == len(keys):
        return "not applied", f"all {len(keys)} rows are unchanged: the transaction was rolled back"
    return "partly applied", f"{len(keys) - left} of {len(keys)} rows changed (changed since by another writer?)"


def purge_debts(path: Path, databases: Iterable[str]) -> dict[str, set[str]]:
    """Per database, the tables whose last purge did not finish (``pending`` or ``failed``).

    Exit 5 promises that the next run retries the purge; a next run that removes nothing new
    would otherwise never purge again, and the removed values would stay in the files. Streams
    the log's ``purge`` lines only."""
    wanted = set(databases)
    last: dict[str, dict[str, Any]] = {}
    if not Path(path).exists():
        return {}
    for entry in audit.read_matching(Path(path), b'"event":"purge"'):
        if entry.get("event") == "purge" and entry.get("database") in wanted:
            last[entry["database"]] = entry
    return {db: set(e.get("tables") or []) for db, e in last.items()
            if e.get("result") in ("pending", "failed") and e.get("tables")}


def unpurged(path: Path, runs: Iterable[str], databases: Iterable[str]) -> dict[str, set[str]]:
    """Per database, the tables that interrupted ``runs`` changed and never purged.

    A run killed after its batches committed, or in the middle of its purge, wrote no
    ``purge`` result: without this, the next run would find nothing new to remove and the
    removed values would stay in the database files. The tables are read back from the
    batches that really happened (``batch.committed``, or recovered as applied)."""
    runs, wanted = set(runs), set(databases)
    if not runs or not Path(path).exists():
        return {}
    intents: dict[tuple[str, Any], dict[str, Any]] = {}
    happened: set[tuple[str, Any]] = set()
    for entry in audit.read_matching(Path(path), b'"event":"batch'):
        event = entry.get("event")
        if event == "batch" and entry.get("run") in runs:
            intents[(entry["run"], entry.get("batch"))] = entry
        elif event == "batch.committed" and entry.get("run") in runs:
            happened.add((entry["run"], entry.get("batch")))
        elif event == "batch.recovered" and entry.get("of_run") in runs \
                and entry.get("result") in ("applied", "partly applied"):
            happened.add((entry["of_run"], entry.get("batch")))
    # A purge result the interrupted run did write settles its database (a pending or failed
    # one is retried through purge_debts).
    settled = {(e.get("run"), e.get("database")) for e in audit.read_matching(Path(path), b'"event":"purge"')
               if e.get("event") == "purge" and e.get("run") in runs}
    tables: dict[str, set[str]] = {}
    for (run, _batch), intent in intents.items():
        db = intent.get("database")
        if (run, _batch) not in happened or db not in wanted or (run, db) in settled:
            continue
        cascaded = intent.get("cascaded") or {}
        tables.setdefault(db, set()).update([intent["table"], *(t for t, n in cascaded.items() if n)])
    return tables

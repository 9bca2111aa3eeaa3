"""Write-ahead auditing survives a kill -9: the next run records what really happened.

The run is a real subprocess killed with SIGKILL at a controlled point (the
RETENTION_TEST_KILL_AT hook, ``kill_point`` in retention.engine.execution and the runner): before
a batch's transaction, after its `intent` entry but before its commit (the database rolls back:
`not applied`), after the commit but before `batch.committed` (`applied`), as the purge starts,
and inside a purge (``purge.stepN``). The next run must find the open intent, check the database,
append `batch.recovered` and `run.interrupted`, finish the work and purge what the killed run
removed: the end state, row by row, is that of one uninterrupted run on a twin database, on
SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from helpers import snapshot

from retention.audit import log as audit

if TYPE_CHECKING:
    from conftest import TestDatabase

POLICY = """\
version: 1
timezone: Europe/Amsterdam
databases:
  main:
    url: "{url}"
    purge: {purge}
audit:
  path: {audit}
policies:
  - name: tickets
    table: tickets
    after: closed_at
    retain: 2 years
    action: delete
    cascade: [messages]
    max_fraction: 1.0
    batch_size: 10
"""


def _schema(engine: sa.Engine) -> None:
    md = sa.MetaData()
    tickets = sa.Table("tickets", md, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("closed_at", sa.DateTime, index=True))
    messages = sa.Table("messages", md, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("ticket_id", sa.Integer, sa.ForeignKey("tickets.id"), nullable=False, index=True),
                        sa.Column("body", sa.Text))
    md.create_all(engine)
    old, recent = dt.datetime(2020, 5, 1, 12, 0), dt.datetime(2026, 5, 1, 12, 0)
    with engine.begin() as conn:
        # 30 due in three batches of ten, and 5 inside their term that every run must keep.
        conn.execute(tickets.insert(), [{"id": i, "closed_at": old if i <= 30 else recent} for i in range(1, 36)])
        conn.execute(messages.insert(), [{"id": i, "ticket_id": i, "body": f"b{i}"} for i in range(1, 36)])


def _twins(db: TestDatabase, db_factory: Any, tmp_path: Path, purge: str) -> tuple[TestDatabase, Path, Path]:
    """The schema on ``db`` and on a twin that one uninterrupted run has enforced; the policy
    file and audit log path for ``db``."""
    twin = db_factory(db.name)
    for database in (db, twin):
        _schema(database.engine)
    (tmp_path / "twin").mkdir()
    reference = tmp_path / "twin" / "policies.yaml"
    reference.write_text(POLICY.format(url=twin.url, audit=tmp_path / "twin" / "audit.jsonl", purge=purge))
    assert _run(reference).returncode == 0
    log = tmp_path / "audit.jsonl"
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY.format(url=db.url, audit=log, purge=purge))
    return twin, policy, log


def _run(policy: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "retention.cli", "--policies", str(policy), "--log-format", "json",
         "run", "--as-of", "2026-11-24T03:00:00", "--format", "json"],
        capture_output=True, text=True, env=env, timeout=120,
    )


def _entries(path: Path) -> list[dict[str, Any]]:
    return list(audit.read_entries(path))


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


@pytest.mark.parametrize("point,expected,left_after_kill", [
    ("batch", None, 25),            # before the second batch's transaction: the first is done
    ("intent", "not applied", 35),  # inside the transaction, intent audited: rolled back
    ("commit", "applied", 25),      # after COMMIT, before `batch.committed`
    ("purge", None, 5),             # every batch done and audited, killed as the purge starts
])
def test_kill_at_each_point_then_rerun_ends_as_an_uninterrupted_run(
        db: TestDatabase, db_factory: Any, tmp_path: Path, point: str, expected: str | None,
        left_after_kill: int) -> None:
    """kill -9 at four points; the re-run recovers and ends with the same rows, value by value, as
    one uninterrupted run on a twin database (on SQLite, PostgreSQL and MariaDB)."""
    twin, policy, log = _twins(db, db_factory, tmp_path, "none")

    killed = _run(policy, {"RETENTION_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _count(db.engine, "tickets") == left_after_kill
    intents = [e for e in _entries(log) if e["event"] == "batch"]
    committed = [e for e in _entries(log) if e["event"] == "batch.committed"]
    if expected:
        assert len(intents) == len(committed) + 1 and intents[-1]["state"] == "intent"
    else:
        assert len(intents) == len(committed)

    again = _run(policy)
    assert again.returncode == 0, again.stderr
    entries = _entries(log)
    recovered = [e for e in entries if e["event"] == "batch.recovered"]
    if expected:
        assert [(e["result"], e["of_run"], e["batch"]) for e in recovered] == \
            [(expected, intents[-1]["run"], intents[-1]["batch"])]
    else:
        assert recovered == []
    interrupted = [e for e in entries if e["event"] == "run.interrupted"]
    assert [e["interrupted_run"] for e in interrupted] == [intents[0]["run"]]
    assert snapshot(db.engine) == snapshot(twin.engine)
    result = json.loads(again.stdout)
    assert result["policies"][0]["applied"] == left_after_kill - 5
    # Every key the two runs audited as deleted, once each: exactly the 30 due tickets.
    done = {(e["run"], e["batch"]) for e in entries if e["event"] == "batch.committed"}
    done |= {(e["of_run"], e["batch"]) for e in recovered if e["result"] == "applied"}
    deleted = sorted(k for e in entries if e["event"] == "batch" and (e["run"], e["batch"]) in done
                     for k in e["keys"])
    assert deleted == list(range(1, 31))
    assert audit.verify(log).ok

    # A third run has nothing left to recover.
    third = _run(policy)
    assert third.returncode == 0
    assert len([e for e in _entries(log) if e["event"] == "batch.recovered"]) == len(recovered)


def test_unwritable_audit_log_stops_before_touching_data(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    """Nothing is committed without a durable audit entry: no log, no run (exit 1)."""
    _schema(sqlite_db.engine)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the audit directory should be")
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY.format(url=sqlite_db.url, audit=blocker / "audit.jsonl", purge="none"))
    result = _run(policy)
    assert result.returncode == 1
    assert "audit" in result.stderr.lower() or "lock" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    assert _count(sqlite_db.engine, "tickets") == 35


# The step of a `purge: thorough` (tables messages, tickets) at which the process is killed: after
# the purge has begun its work and before it has finished it. SQLite: secure_delete set, journal
# mode read, killed before VACUUM; PostgreSQL: messages rewritten by VACUUM FULL, tickets not yet;
# MariaDB: messages rebuilt and analysed, tickets not yet.
_INSIDE_PURGE = {"sqlite": "purge.step3", "postgresql": "purge.step5", "mariadb": "purge.step3"}


@pytest.mark.parametrize("where", ["as the purge starts", "inside the purge"])
def test_kill_before_or_inside_a_purge_then_rerun_purges_what_the_killed_run_removed(
        db: TestDatabase, db_factory: Any, tmp_path: Path, where: str) -> None:
    """A run killed after its batches committed, before or half-way through its purge, wrote no
    `purge` result: the next run (nothing new due) still purges the tables the killed run changed,
    and ends with the rows of an uninterrupted run (on SQLite, PostgreSQL and MariaDB)."""
    twin, policy, log = _twins(db, db_factory, tmp_path, "thorough")

    point = "purge" if where == "as the purge starts" else _INSIDE_PURGE[db.name]
    killed = _run(policy, {"RETENTION_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _count(db.engine, "tickets") == 5 and _count(db.engine, "messages") == 5
    first_run = _entries(log)[0]["run"]
    assert [e for e in _entries(log) if e["event"] == "purge"] == []

    again = _run(policy)
    assert again.returncode == 0, again.stderr
    entries = _entries(log)
    assert [e["interrupted_run"] for e in entries if e["event"] == "run.interrupted"] == [first_run]
    purges = [(e["run"] != first_run, e["database"], e["tables"], e["level"], e["result"])
              for e in entries if e["event"] == "purge"]
    assert purges == [(True, "main", ["messages", "tickets"], "thorough", "done")]
    assert json.loads(again.stdout)["policies"][0]["applied"] == 0
    assert snapshot(db.engine) == snapshot(twin.engine)
    assert audit.verify(log).ok

    # Settled: a third run has nothing to purge.
    assert _run(policy).returncode == 0
    assert len([e for e in _entries(log) if e["event"] == "purge"]) == 1

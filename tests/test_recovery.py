"""Write-ahead auditing survives a kill -9: the next run records what really happened.

The run is a real subprocess killed with SIGKILL at a controlled point (the
RETENTION_TEST_KILL_AT hook in retention.engine.execution): after a batch's `intent` entry but
before its commit (the database rolls back: `not applied`), or after the commit but before
`batch.committed` (`applied`). The next run must find the open intent, check the database,
append `batch.recovered` and `run.interrupted`, and finish the work.
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

from retention.audit import log as audit

if TYPE_CHECKING:
    from conftest import TestDatabase

POLICY = """\
version: 1
timezone: Europe/Amsterdam
databases:
  main:
    url: "{url}"
    purge: none
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
    old = dt.datetime(2020, 5, 1, 12, 0)
    with engine.begin() as conn:
        conn.execute(tickets.insert(), [{"id": i, "closed_at": old} for i in range(1, 31)])
        conn.execute(messages.insert(), [{"id": i, "ticket_id": i, "body": f"b{i}"} for i in range(1, 31)])


def _run(policy: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "retention.cli", "--policies", str(policy), "--log-format", "json",
         "run", "--as-of", "2026-11-24T03:00:00", "--format", "json", "--force"],
        capture_output=True, text=True, env=env, timeout=120,
    )


def _entries(path: Path) -> list[dict[str, Any]]:
    return list(audit.read_entries(path))


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


@pytest.mark.parametrize("point,expected,left_after_kill", [
    ("intent", "not applied", 30),  # killed before COMMIT: the database rolled the batch back
    ("commit", "applied", 20),      # killed after COMMIT, before `batch.committed`
])
def test_kill_between_intent_and_committed_is_recovered(db: TestDatabase, tmp_path: Path, point: str,
                                                        expected: str, left_after_kill: int) -> None:
    if db.name == "mariadb":
        pytest.skip("pinned on SQLite and PostgreSQL, as the issue asks; MariaDB shares the code path")
    _schema(db.engine)
    log = tmp_path / "audit.jsonl"
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY.format(url=db.url, audit=log))

    killed = _run(policy, {"RETENTION_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _count(db.engine, "tickets") == left_after_kill
    intents = [e for e in _entries(log) if e["event"] == "batch"]
    assert len(intents) == 1 and intents[0]["state"] == "intent" and intents[0]["keys"] == list(range(1, 11))
    assert not [e for e in _entries(log) if e["event"] == "batch.committed"]

    again = _run(policy)
    assert again.returncode == 0, again.stderr
    entries = _entries(log)
    recovered = [e for e in entries if e["event"] == "batch.recovered"]
    assert len(recovered) == 1
    assert recovered[0]["result"] == expected
    assert recovered[0]["of_run"] == intents[0]["run"] and recovered[0]["batch"] == intents[0]["batch"]
    interrupted = [e for e in entries if e["event"] == "run.interrupted"]
    assert [e["interrupted_run"] for e in interrupted] == [intents[0]["run"]]
    # The second run finished the work, and the whole log still verifies.
    assert _count(db.engine, "tickets") == 0 and _count(db.engine, "messages") == 0
    result = json.loads(again.stdout)
    assert result["policies"][0]["applied"] == left_after_kill
    assert audit.verify(log).ok

    # A third run has nothing left to recover.
    third = _run(policy)
    assert third.returncode == 0
    assert len([e for e in _entries(log) if e["event"] == "batch.recovered"]) == 1


def test_unwritable_audit_log_stops_before_touching_data(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    """Nothing is committed without a durable audit entry: no log, no run (exit 1)."""
    _schema(sqlite_db.engine)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the audit directory should be")
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY.format(url=sqlite_db.url, audit=blocker / "audit.jsonl"))
    result = _run(policy)
    assert result.returncode == 1
    assert "audit" in result.stderr.lower() or "lock" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    assert _count(sqlite_db.engine, "tickets") == 30

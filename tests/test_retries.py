"""Bounded retries: a batch whose connection is killed (``pg_terminate_backend`` on PostgreSQL,
``KILL`` on MariaDB) while it waits for a row lock held by the test is one rolled-back transaction,
so it is retried after a pause, at most ``RETRY_DELAYS`` times. Within that bound the run finishes
with correct totals; past it the run exits 1 with the batches committed so far counted and the
policies not yet run reported as ``skipped``. The run is a real subprocess.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from helpers import AS_OF, audit_path, ids, run_cli, write_policies

from retention.audit.log import read_entries, verify
from retention.databases import dialects
from retention.engine.execution import RETRY_DELAYS

if TYPE_CHECKING:
    from conftest import TestDatabase

DUE = set(range(1, 12))
RECENT = set(range(100, 120))
HELD_BY_TEST = 6  # first key of the second batch of five


def create(engine: sa.Engine) -> None:
    md = sa.MetaData()
    for name in ("members", "notes"):
        sa.Table(name, md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("left_at", sa.DateTime))
    md.create_all(engine)
    with engine.begin() as conn:
        for name in ("members", "notes"):
            conn.execute(md.tables[name].insert(),
                         [{"id": i, "left_at": dt.datetime(2020, 1, 1)} for i in DUE]
                         + [{"id": i, "left_at": dt.datetime(2026, 11, 1)} for i in RECENT])


def policy(name: str) -> dict[str, object]:
    return {"name": name, "table": name, "after": "left_at", "retain": "2 years", "action": "delete",
            "batch_size": 5}


WAITING = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
    "mariadb": "SELECT id FROM information_schema.PROCESSLIST WHERE db = DATABASE()"
               " AND info LIKE '%%FOR UPDATE%%' AND info NOT LIKE '%%PROCESSLIST%%'",
}
KILL = {"postgresql": "SELECT pg_terminate_backend({id})", "mariadb": "KILL {id}"}


def waiting(db: TestDatabase) -> list[int]:
    # A connection of its own: PostgreSQL keeps one snapshot of pg_stat_activity per transaction.
    with db.engine.connect() as conn:
        return [int(i) for i in conn.exec_driver_sql(WAITING[db.name]).scalars()]


def kill_waiting_run(db: TestDatabase, times: int, run: subprocess.Popen[str]) -> list[int]:
    """Kill the run's connection each time it waits for the held row, ``times`` times."""
    killed: list[int] = []
    with db.engine.connect() as admin:
        admin.commit()
        deadline = time.monotonic() + 60
        while len(killed) < times:
            admin.rollback()  # a fresh snapshot of the process list
            waiting = [i for i in admin.exec_driver_sql(WAITING[db.name]).scalars() if i not in killed]
            if waiting:
                admin.exec_driver_sql(KILL[db.name].format(id=int(waiting[0])))
                killed.append(int(waiting[0]))
            else:
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, f"the run never waited again after {len(killed)} kill(s)"
                time.sleep(0.05)
    return killed


def run_holding_a_row(db: TestDatabase, pf: Path, kills: int) -> tuple[int, dict[str, object], str]:
    with db.engine.connect() as other:
        other.execute(sa.text("UPDATE members SET left_at = left_at WHERE id = :id"), {"id": HELD_BY_TEST})
        run = subprocess.Popen(
            [sys.executable, "-m", "retention.cli", "--policies", str(pf), "--log-format", "json", "run",
             "--as-of", AS_OF, "--format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            kill_waiting_run(db, kills, run)
            if kills <= len(RETRY_DELAYS):
                # Let the last retry start waiting again before the row is let go.
                deadline = time.monotonic() + 30
                while not waiting(db):
                    assert run.poll() is None and time.monotonic() < deadline, run.communicate()
                    time.sleep(0.05)
            other.rollback()
        finally:
            stdout, stderr = run.communicate(timeout=120)
    return run.returncode, json.loads(stdout) if stdout.strip() else {}, stderr


def test_a_killed_connection_is_retried_and_the_run_finishes(server_db: TestDatabase, tmp_path: Path) -> None:
    db = server_db
    create(db.engine)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [policy("members"), policy("notes")])
    code, result, stderr = run_holding_a_row(db, pf, kills=2)
    assert code == 0, stderr
    by_name = {p["name"]: p for p in result["policies"]}  # type: ignore[union-attr]
    assert (by_name["members"]["applied"], by_name["notes"]["applied"]) == (len(DUE), len(DUE))
    assert ids(db.engine, "SELECT id FROM members") == RECENT
    assert ids(db.engine, "SELECT id FROM notes") == RECENT
    entries = list(read_entries(audit_path(pf)))
    retries = [e for e in entries if e["event"] == "batch.retry"]
    assert [e["attempt"] for e in retries] == [1, 2] and all(e["policy"] == "members" for e in retries)
    logged = sorted(k for e in entries if e["event"] == "batch" and e["policy"] == "members" for k in e["keys"])
    assert logged == sorted(DUE)
    assert verify(audit_path(pf)).ok


def test_retries_are_bounded_then_exit_1_with_correct_totals(server_db: TestDatabase, tmp_path: Path) -> None:
    db = server_db
    create(db.engine)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [policy("members"), policy("notes")])
    code, result, stderr = run_holding_a_row(db, pf, kills=len(RETRY_DELAYS) + 1)
    assert code == 1, stderr
    by_name = {p["name"]: p for p in result["policies"]}  # type: ignore[union-attr]
    assert by_name["members"]["status"] == "failed" and by_name["members"]["applied"] == 5
    assert by_name["notes"]["status"] == "skipped" and by_name["notes"]["applied"] == 0
    assert ids(db.engine, "SELECT id FROM members") == (DUE - {1, 2, 3, 4, 5}) | RECENT
    assert ids(db.engine, "SELECT id FROM notes") == DUE | RECENT
    entries = list(read_entries(audit_path(pf)))
    assert len([e for e in entries if e["event"] == "batch.retry"]) == len(RETRY_DELAYS)
    # The next night finishes the work.
    again = subprocess.run(
        [sys.executable, "-m", "retention.cli", "--policies", str(pf), "run", "--as-of", AS_OF, "--format", "json"],
        capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert ids(db.engine, "SELECT id FROM members") == RECENT


@pytest.mark.parametrize("dialect,error,transient", [
    ("postgresql", "57P01", True), ("postgresql", "40P01", True), ("postgresql", "40001", True),
    ("postgresql", "55P03", True), ("postgresql", "23503", False), ("postgresql", "42P01", False),
    ("mysql", 1213, True), ("mysql", 1205, True), ("mysql", 2006, True), ("mysql", 2013, True),
    ("mysql", 1927, True), ("mysql", 1451, False), ("mysql", 1146, False),
    ("sqlite", "database is locked", True), ("sqlite", "FOREIGN KEY constraint failed", False),
])
def test_which_errors_are_transient(dialect: str, error: object, transient: bool) -> None:
    class OperationalError(Exception):
        sqlstate = error if dialect == "postgresql" else None

    orig = OperationalError(error, "text") if dialect == "mysql" else OperationalError(str(error))
    exc = sa.exc.OperationalError("SELECT 1", None, orig)
    assert dialects.is_transient(exc, dialect) is transient


@pytest.mark.parametrize("url", ["postgresql+psycopg://u:s3cret@127.0.0.1:1/x", "mysql+pymysql://u:s3cret@127.0.0.1:1/x"])
def test_an_unreachable_database_at_start_is_retried_before_exit_2(
        tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("retention.engine.execution.RETRY_DELAYS", (0.01, 0.02, 0.03))
    pf = write_policies(tmp_path / "policies.yaml", url, [policy("members")])
    result = run_cli(pf)
    assert result.exit_code == 2, result
    retries = [json.loads(line) for line in result.stderr.splitlines() if '"database.retry"' in line]
    assert [r["wait_s"] for r in retries] == [0.01, 0.02, 0.03]
    assert "s3cret" not in result.stderr and "u:***@127.0.0.1:1" in result.stderr

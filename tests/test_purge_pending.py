"""Purge pending is not a failure: every policy was enforced, only the purge was held back (here
by a reader with an open snapshot on a WAL-mode SQLite file). The run says ``purge pending`` in
its JSON and in the audit log's ``run.end``, and exits 5, not 1: a job must not treat it as a
run that failed part-way.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from helpers import audit_path, ids, run_cli, sqlite_path, write_policies

from retention.audit.log import read_entries
from retention.errors import EXIT_PURGE_PENDING

if TYPE_CHECKING:
    from conftest import TestDatabase


def test_a_purge_held_back_by_a_reader_exits_5_with_its_own_status(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    md = sa.MetaData()
    people = sa.Table("people", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("left_at", sa.DateTime), sa.Column("name", sa.String(100)))
    md.create_all(sqlite_db.engine)
    with sqlite_db.engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.execute(people.insert(), [{"id": i, "left_at": dt.datetime(2020 if i <= 5 else 2026, 1, 1),
                                        "name": f"Persoon {i}"} for i in range(1, 21)])
    sqlite_db.dispose()
    pf = write_policies(tmp_path / "policies.yaml", sqlite_db.url, [
        {"name": "people", "table": "people", "after": "left_at", "retain": "2 years", "action": "delete"}],
        purge="thorough")
    reader = sqlite3.connect(str(sqlite_path(sqlite_db.url)), isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM people").fetchall()  # a snapshot from before the run
        result = run_cli(pf)
    finally:
        reader.close()
    assert result.exit_code == EXIT_PURGE_PENDING == 5, result
    assert result.data["status"] == "purge pending" and result.data["exit_code"] == 5
    assert result.policy("people")["status"] == "ok" and result.policy("people")["applied"] == 5
    assert [p["result"] for p in result.data["purge"]] == ["pending"]
    assert ids(sqlite_db.engine, "SELECT id FROM people") == set(range(6, 21))
    [end] = [e for e in read_entries(audit_path(pf)) if e["event"] == "run.end"]
    assert (end["status"], end["exit_code"]) == ("purge pending", 5)
    # Exit 5 promises a retry: the next run, with nothing new to remove, purges those tables again.
    again = run_cli(pf)
    assert again.exit_code == 0, again
    assert again.policy("people")["applied"] == 0
    assert [(p["tables"], p["result"]) for p in again.data["purge"]] == [(["people"], "done")]
    # And the night after that has no debt left: no purge at all.
    third = run_cli(pf)
    assert third.exit_code == 0 and third.data["purge"] == [], third

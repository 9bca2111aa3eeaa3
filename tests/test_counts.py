"""Counts that agree everywhere: `applied` = rows deleted + rows anonymised (CONTRACT.md section 3),
with `deleted` and `anonymised` beside it, in the JSON, the CSV, the text and `policy.end`; and a
policy that fails part-way reports what its committed batches did, checked against plain SQL.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from helpers import AS_OF, SHOP_POLICIES, audit_path, ids, parse_csv, run_cli, scalar, write_policies
from test_run import CUT, build_shop

from retention.audit.log import read_entries
from retention.engine import execution

if TYPE_CHECKING:
    from conftest import TestDatabase

DUE_ACCOUNTS = f"SELECT id FROM accounts WHERE deregistered_at <= '{CUT}' AND NOT legal_hold"


def _entries(policy_file: Path, event: str, policy: str) -> list[dict[str, Any]]:
    return [e for e in read_entries(audit_path(policy_file)) if e["event"] == event and e.get("policy") == policy]


def _committed(policy_file: Path, policy: str) -> int:
    return sum(e["count"] for e in _entries(policy_file, "batch.committed", policy))


def test_applied_is_deleted_plus_anonymised_in_json_csv_text_and_policy_end(
    db: TestDatabase, db_factory: Any, tmp_path: Path
) -> None:
    """The shop's accounts policy deletes some due accounts and anonymises the referenced ones:
    `applied` counts both, `deleted`/`anonymised` each part, equal to plain SQL after the run, and
    the same numbers are in the CSV, the text and the audit log's `policy.end`."""
    policy_file = build_shop(db, tmp_path)
    due = ids(db.engine, DUE_ACCOUNTS)
    run = run_cli(policy_file)
    assert run.exit_code == 0, run
    left = ids(db.engine, "SELECT id FROM accounts")
    deleted = len(due - left)
    anonymised = len(ids(db.engine, DUE_ACCOUNTS + " AND street = '[verwijderd]'"))
    assert deleted > 5 and anonymised > 3, "the shop must give both parts real work"
    acc = run.policy("accounts")
    assert (acc["applied"], acc["deleted"], acc["anonymised"]) == (deleted + anonymised, deleted, anonymised)
    end = _entries(policy_file, "policy.end", "accounts")[-1]
    assert (end["applied"], end["deleted"], end["anonymised"]) == (deleted + anonymised, deleted, anonymised)
    assert _committed(policy_file, "accounts") == deleted + anonymised

    # The same run on identical shops (same seed), rendered as CSV and as text.
    for fmt in ("csv", "text"):
        twin = db_factory(db.name)
        twin_file = build_shop(twin, tmp_path / fmt)
        out = run_cli(twin_file, fmt=fmt)
        assert out.exit_code == 0, out
        if fmt == "csv":
            row = next(r for r in parse_csv(out.stdout) if r["policy"] == "accounts")
            assert (int(row["applied"]), int(row["deleted"]), int(row["anonymised"])) == \
                (deleted + anonymised, deleted, anonymised)
        else:
            assert f"{deleted} row(s) were deleted from accounts" in out.stdout
            assert f"{anonymised} were anonymised instead" in out.stdout


def test_failure_after_two_batches_reports_what_the_committed_batches_did(
    db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third batch of accounts fails (injected database error): exit 1, status failed, and
    applied/deleted/anonymised equal what plain SQL finds changed (the two committed batches),
    in the JSON and in `policy.end`, never 0."""
    policies = copy.deepcopy(SHOP_POLICIES)
    policies[0]["batch_size"] = 5
    policy_file = build_shop(db, tmp_path, policies=policies)
    due = ids(db.engine, DUE_ACCOUNTS)
    orders_before = scalar(db.engine, "SELECT count(*) FROM orders")
    calls = [0]
    real_change = execution.Executor._change

    def failing(self: execution.Executor, conn: sa.Connection, keys: list[Any]) -> Any:
        if self.plan.policy.name == "accounts":
            calls[0] += 1
            if calls[0] == 3:
                raise sa.exc.OperationalError("DELETE ...", {}, Exception("server closed the connection (injected)"))
        return real_change(self, conn, keys)

    monkeypatch.setattr(execution.Executor, "_change", failing)
    run = run_cli(policy_file)
    assert run.exit_code == 1, run
    acc = run.policy("accounts")
    assert acc["status"] == "failed" and "injected" in acc["error"]
    deleted = len(due - ids(db.engine, "SELECT id FROM accounts"))
    anonymised = len(ids(db.engine, DUE_ACCOUNTS + " AND street = '[verwijderd]'"))
    assert deleted + anonymised == 10, "two batches of 5 keys committed"
    assert (acc["applied"], acc["deleted"], acc["anonymised"]) == (10, deleted, anonymised)
    assert acc["cascaded"].get("orders", 0) == orders_before - scalar(db.engine, "SELECT count(*) FROM orders")
    end = _entries(policy_file, "policy.end", "accounts")[-1]
    assert (end["status"], end["applied"], end["deleted"], end["anonymised"]) == ("failed", 10, deleted, anonymised)
    assert _committed(policy_file, "accounts") == 10


# -- a connection killed mid-run --------------------------------------------------------------

SESSIONS = 10


def _create_sessions(engine: sa.Engine) -> None:
    md = sa.MetaData()
    t = sa.Table("sessions", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("ended_at", sa.DateTime, nullable=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": i, "ended_at": dt.datetime(2025, 1, i)} for i in range(1, SESSIONS + 1)])


def _waiting_run(db: TestDatabase) -> int | None:
    """The id of the run's session waiting for the row lock, if it is waiting."""
    sql = {
        "postgresql": "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                      " AND datname = current_database() AND pid <> pg_backend_pid()",
        "mariadb": "SELECT id FROM information_schema.PROCESSLIST WHERE db = DATABASE()"
                   " AND info LIKE '%%FOR UPDATE%%' AND info NOT LIKE '%%PROCESSLIST%%'",
    }[db.name]
    with db.engine.connect() as conn:
        return conn.exec_driver_sql(sql).scalar()


def test_killed_connection_mid_run_reports_the_committed_batches(server_db: TestDatabase, tmp_path: Path) -> None:
    """batch_size 2 over 10 due sessions; another transaction holds session 5, so the run commits
    {1,2} and {3,4} and waits; its connection is then killed from outside (pg_terminate_backend /
    KILL CONNECTION), again on each retry until the run gives up. Exit 1, status failed,
    applied = deleted = 4 = the rows plain SQL finds gone, in the JSON and in `policy.end`."""
    db = server_db
    _create_sessions(db.engine)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [{
        "name": "sessions", "table": "sessions", "after": "ended_at", "retain": "30 days", "action": "delete",
        "batch_size": 2, "max_fraction": 1.0}])
    with db.engine.connect() as other:
        other.execute(sa.text("SELECT id FROM sessions WHERE id = 5 FOR UPDATE"))
        # --force: all 10 sessions are due, which the 100 % guard would block before any batch.
        run = subprocess.Popen(
            [sys.executable, "-m", "retention.cli", "--policies", str(pf), "--log-format", "json", "run",
             "--as-of", AS_OF, "--format", "json", "--force"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while (victim := _waiting_run(db)) is None:
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "the run never waited for the held row"
                time.sleep(0.05)
            # A lost connection is transient: the batch is retried (execution.RETRY_DELAYS) and
            # waits for the held row again, so every attempt's connection is killed until it gives up.
            killed: set[int] = set()
            while run.poll() is None:
                assert time.monotonic() < deadline + 30, "the run never gave up"
                if victim is None or victim in killed:
                    time.sleep(0.05)
                    victim = _waiting_run(db)
                    continue
                with db.engine.connect() as killer:
                    if db.name == "postgresql":
                        killer.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})
                    else:
                        killer.exec_driver_sql(f"KILL CONNECTION {int(victim)}")
                killed.add(victim)
            stdout, stderr = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
            other.rollback()
    assert run.returncode == 1, stderr
    data = json.loads(stdout)
    p = data["policies"][0]
    gone = SESSIONS - scalar(db.engine, "SELECT count(*) FROM sessions")
    assert gone == 4
    assert (p["status"], p["applied"], p["deleted"], p["anonymised"]) == ("failed", gone, gone, 0)
    end = _entries(pf, "policy.end", "sessions")[-1]
    assert (end["status"], end["applied"], end["deleted"]) == ("failed", gone, gone)
    assert len(killed) == 1 + len(execution.RETRY_DELAYS)

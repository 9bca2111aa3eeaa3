"""Databases are independent: one that cannot be reached, or fails part-way, fails its own
policies (later ones on it ``skipped``); the policies on the other databases still run; the run
exits 1. A file or schema problem on any database stays exit 2 before anything runs, and when no
database can be reached at all the run exits 2 as before.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
import yaml
from helpers import audit_path, ids, run_cli

from retention.audit.log import AuditLog, open_intents, read_entries

if TYPE_CHECKING:
    from conftest import TestDatabase

DEAD = "postgresql+psycopg://u:s3cret@127.0.0.1:1/gone"
DUE = set(range(1, 6))
RECENT = set(range(100, 110))


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("retention.engine.execution.RETRY_DELAYS", (0.01,))


def create(engine: sa.Engine, *tables: str) -> None:
    md = sa.MetaData()
    for name in tables:
        sa.Table(name, md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("closed_at", sa.DateTime))
    md.create_all(engine)
    with engine.begin() as conn:
        for name in tables:
            conn.execute(md.tables[name].insert(), [{"id": i, "closed_at": dt.datetime(2020, 1, 1)} for i in DUE]
                         + [{"id": i, "closed_at": dt.datetime(2026, 11, 1)} for i in RECENT])


def policy(name: str, database: str) -> dict[str, Any]:
    return {"name": name, "database": database, "table": name, "after": "closed_at", "retain": "2 years",
            "action": "delete"}


def write(tmp_path: Path, databases: dict[str, str], policies: list[dict[str, Any]]) -> Path:
    doc = {"version": 1, "timezone": "Europe/Amsterdam",
           "databases": {name: {"url": url, "purge": "none"} for name, url in databases.items()},
           "audit": {"path": "audit/retention.jsonl"}, "policies": policies}
    pf = tmp_path / "policies.yaml"
    pf.write_text(yaml.safe_dump(doc, sort_keys=False))
    return pf


def test_an_unreachable_database_fails_its_policies_and_the_others_run(db: TestDatabase, tmp_path: Path) -> None:
    create(db.engine, "tickets", "orders")
    pf = write(tmp_path, {"dead": DEAD, "live": db.url},
               [policy("gone", "dead"), policy("tickets", "live"), policy("orders", "live")])
    result = run_cli(pf)
    assert result.exit_code == 1, result
    assert result.data["status"] == "failed"
    gone = result.policy("gone")
    assert gone["status"] == "failed" and "database 'dead' unreachable" in gone["error"]
    assert "s3cret" not in result.stdout + result.stderr
    for name in ("tickets", "orders"):
        assert (result.policy(name)["status"], result.policy(name)["applied"]) == ("ok", len(DUE))
        assert ids(db.engine, f"SELECT id FROM {name}") == RECENT
    entries = list(read_entries(audit_path(pf)))
    assert [(e["policy"], e["status"]) for e in entries if e["event"] == "policy.end"] == \
        [("tickets", "ok"), ("orders", "ok"), ("gone", "failed")]
    assert [e["exit_code"] for e in entries if e["event"] == "run.end"] == [1]


FAILING_TRIGGER = {
    "sqlite": ["CREATE TRIGGER rt_fail BEFORE DELETE ON tickets BEGIN SELECT RAISE(ABORT, 'no deletes here'); END"],
    "postgresql": [
        "CREATE FUNCTION rt_fail() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'no deletes here'; END $$",
        "CREATE TRIGGER rt_fail BEFORE DELETE ON tickets FOR EACH ROW EXECUTE FUNCTION rt_fail()"],
    "mariadb": ["CREATE TRIGGER rt_fail BEFORE DELETE ON tickets FOR EACH ROW "
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'no deletes here'"],
}


def test_a_database_failing_part_way_skips_its_own_later_policies_only(
        db: TestDatabase, db_factory: Any, tmp_path: Path) -> None:
    other = db_factory("sqlite")
    create(db.engine, "tickets", "orders")
    create(other.engine, "notes")
    with db.engine.begin() as conn:
        for sql in FAILING_TRIGGER[db.name]:
            conn.exec_driver_sql(sql)
    pf = write(tmp_path, {"failing": db.url, "healthy": other.url},
               [policy("tickets", "failing"), policy("orders", "failing"), policy("notes", "healthy")])
    result = run_cli(pf)
    assert result.exit_code == 1, result
    assert result.policy("tickets")["status"] == "failed" and "no deletes here" in result.policy("tickets")["error"]
    assert result.policy("orders")["status"] == "skipped"
    assert (result.policy("notes")["status"], result.policy("notes")["applied"]) == ("ok", len(DUE))
    assert ids(db.engine, "SELECT id FROM tickets") == DUE | RECENT
    assert ids(db.engine, "SELECT id FROM orders") == DUE | RECENT
    assert ids(other.engine, "SELECT id FROM notes") == RECENT


def test_a_schema_problem_on_one_database_stops_the_run_before_anything(
        sqlite_db: TestDatabase, db_factory: Any, tmp_path: Path) -> None:
    other = db_factory("sqlite")
    create(sqlite_db.engine, "tickets")
    create(other.engine, "notes")  # but no table `missing`
    pf = write(tmp_path, {"good": sqlite_db.url, "bad": other.url},
               [policy("tickets", "good"), policy("missing", "bad")])
    result = run_cli(pf)
    assert result.exit_code == 2, result
    assert "policy 'missing'" in result.stderr and "missing" in result.stderr
    assert ids(sqlite_db.engine, "SELECT id FROM tickets") == DUE | RECENT


def test_no_database_reachable_is_exit_2(tmp_path: Path) -> None:
    pf = write(tmp_path, {"dead": DEAD}, [policy("gone", "dead")])
    result = run_cli(pf)
    assert result.exit_code == 2, result
    assert "u:***@127.0.0.1:1" in result.stderr and "s3cret" not in result.stderr


def test_an_open_intent_on_an_unreachable_database_stays_open(db: TestDatabase, tmp_path: Path) -> None:
    """Recovery cannot look at a database it cannot reach: the intent is left open for a later run
    (before, it would have been closed as `unknown` for good), and the other database still runs."""
    create(db.engine, "tickets")
    pf = write(tmp_path, {"dead": DEAD, "live": db.url}, [policy("gone", "dead"), policy("tickets", "live")])
    with AuditLog(audit_path(pf)).open() as log:
        log.append("run.start", "killed-run", dry_run=False, as_of="2026-11-23T03:00:00+01:00", policies=[])
        log.append("batch", "killed-run", policy="gone", database="dead", table="gone", action="delete",
                   state="intent", batch=1, key_column="id", keys=[1, 2], columns=[], count=2, cascaded={})
    result = run_cli(pf)
    assert result.exit_code == 1, result
    assert result.policy("tickets")["applied"] == len(DUE)
    assert [e["batch"] for e in open_intents(audit_path(pf))] == [1]
    assert not [e for e in read_entries(audit_path(pf)) if e["event"] == "batch.recovered"]

"""Batches: how the due rows are walked, locked and changed, and what the audit log says of each.

Anonymise policies of constants only take the database's shortest path: on PostgreSQL one
statement chooses and changes each batch (``dialects.update_next_batch``); elsewhere a
locking SELECT, whose keys MariaDB sends back as one JSON array (``dialects.batch_keys``),
then one UPDATE by key. Either way a row another transaction puts on hold while its batch
waits must stay untouched, and the audit log must list exactly the keys changed.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from helpers import AS_OF, audit_path, rows_by_id, run_cli, waiting_for_a_row_lock, write_policies
from sqlalchemy import event

from retention.audit.log import read_entries
from retention.databases import dialects

if TYPE_CHECKING:
    from conftest import TestDatabase

DUE = list(range(1, 12))  # left 2021: due at AS_OF
HELD = 12  # due, but on hold
KEPT = 13  # left 2026: inside the term
FIELDS = {"phone": None, "street": "redact", "birth_date": "generalise.year"}


def create_members(engine: sa.Engine) -> None:
    md = sa.MetaData()
    members = sa.Table(
        "members", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("left_at", sa.DateTime, nullable=True),
        sa.Column("legal_hold", sa.Boolean, nullable=False),
        sa.Column("phone", sa.String(40), nullable=True),
        sa.Column("street", sa.String(200), nullable=True),
        sa.Column("birth_date", sa.Date, nullable=True),
    )
    md.create_all(engine)

    def member(i: int, left: dt.datetime, hold: bool = False) -> dict[str, Any]:
        return {"id": i, "left_at": left, "legal_hold": hold, "phone": f"010-{i:07d}", "street": f"Straat {i}",
                "birth_date": dt.date(1960 + i, 6, 15)}

    rows = [member(i, dt.datetime(2021, 3, i, 9, 0)) for i in DUE]
    rows += [member(HELD, dt.datetime(2021, 3, 20), hold=True), member(KEPT, dt.datetime(2026, 3, 1))]
    with engine.begin() as conn:
        conn.execute(members.insert(), rows)


def members_policy(batch_size: int) -> dict[str, Any]:
    return {"name": "members", "table": "members", "after": "left_at", "retain": "24 months",
            "action": "anonymise", "exclude": {"legal_hold": True}, "fields": dict(FIELDS),
            "keep": {"legal_hold": "false on every anonymised row"},
            # About batches: unique leaving times fail the re-identification check, which only warns here.
            "reidentification": "warn", "batch_size": batch_size, "max_fraction": 1.0}


def anonymised(row: dict[str, Any]) -> bool:
    return row["phone"] is None and row["street"] == "[verwijderd]" and row["birth_date"].month == 1


def batch_entries(policy_file: Path) -> list[dict[str, Any]]:
    return [e for e in read_entries(audit_path(policy_file)) if e["event"] == "batch"]


# ------------------------------------------------------------------------------------------


def test_constant_anonymise_walks_every_due_row_in_batches_and_logs_exact_keys(
    db: TestDatabase, tmp_path: Path
) -> None:
    """Constants only, batch_size 3: every due row is anonymised, held and kept rows are not, each
    batch's audit entry lists at most 3 keys and together exactly the due ones; a second run
    finds nothing."""
    create_members(db.engine)
    before = rows_by_id(db.engine, "members")
    pf = write_policies(tmp_path / "policies.yaml", db.url, [members_policy(batch_size=3)])

    result = run_cli(pf)
    assert result.exit_code == 0, result
    p = result.policy("members")
    assert (p["due"], p["held"], p["applied"]) == (len(DUE), 1, len(DUE))

    after = rows_by_id(db.engine, "members")
    assert all(anonymised(after[i]) for i in DUE)
    assert after[HELD] == before[HELD] and after[KEPT] == before[KEPT]

    entries = batch_entries(pf)
    assert [len(e["keys"]) for e in entries] == [3, 3, 3, 2]
    assert sorted(k for e in entries for k in e["keys"]) == DUE
    assert all(e["count"] == len(e["keys"]) and e["columns"] == sorted(FIELDS) for e in entries)

    again = run_cli(pf)
    assert again.exit_code == 0 and again.policy("members")["applied"] == 0, again
    assert len(batch_entries(pf)) == len(entries)


def test_a_night_with_nothing_to_change_walks_no_batch(db: TestDatabase, tmp_path: Path) -> None:
    """After the first run every due row is anonymised but still past its term: the next run
    counts (0 due) and sends no batch statement at all, instead of visiting every anonymised
    row to find none pending."""
    create_members(db.engine)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [members_policy(batch_size=3)])
    assert run_cli(pf).exit_code == 0

    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(" ".join(statement.split()))

    event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        again = run_cli(pf)
    finally:
        event.remove(sa.engine.Engine, "before_cursor_execute", record)
    assert again.exit_code == 0 and again.policy("members")["due"] == 0, again
    on_members = [s for s in sent if "members" in s]
    assert on_members, "the run counted nothing on members: the recorder saw no statements"
    walks = [s for s in on_members if "ORDER BY members.id" in s or s.upper().startswith(("UPDATE", "DELETE", "WITH"))]
    assert walks == []


def test_row_put_on_hold_while_its_batch_waits_for_it_is_left_alone(server_db: TestDatabase, tmp_path: Path) -> None:
    """Another transaction holds the first due row and puts it on hold; the run (batch_size 1)
    waits for that row, then must see the hold: the row keeps its values, its key is in no
    audit entry, and the run still goes on to the later batches (a batch that changed nothing
    is not the end of the walk)."""
    db = server_db
    create_members(db.engine)
    before = rows_by_id(db.engine, "members")
    pf = write_policies(tmp_path / "policies.yaml", db.url, [members_policy(batch_size=1)])
    first = DUE[0]

    with db.engine.connect() as other:
        other.execute(sa.text("UPDATE members SET legal_hold = :t WHERE id = :id"), {"t": True, "id": first})
        run = subprocess.Popen(
            [sys.executable, "-m", "retention.cli", "--policies", str(pf), "--log-format", "json", "run",
             "--as-of", AS_OF, "--format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while not waiting_for_a_row_lock(db):
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "the run never waited for the held row"
                time.sleep(0.05)
            other.commit()
        finally:
            stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr

    after = rows_by_id(db.engine, "members")
    assert {k: v for k, v in after[first].items() if k != "legal_hold"} == \
        {k: v for k, v in before[first].items() if k != "legal_hold"}
    assert all(anonymised(after[i]) for i in DUE[1:])
    assert after[HELD] == before[HELD] and after[KEPT] == before[KEPT]
    logged = [k for e in batch_entries(pf) for k in e["keys"]]
    assert sorted(logged) == DUE[1:]


def test_key_list_cut_short_by_the_server_is_an_error_not_a_shorter_batch(db_factory: Any) -> None:
    """MariaDB caps JSON_ARRAYAGG at group_concat_max_len: a capped list must fail the batch,
    never hand back fewer or cut-off keys (``12`` cut to ``1`` would name another row)."""
    db = db_factory("mariadb")
    create_members(db.engine)
    engine = dialects.create_engine(db.url)
    try:
        members = sa.Table("members", sa.MetaData(), autoload_with=engine)
        query = dialects.lock_rows(sa.select(members.c.id).order_by(members.c.id), "mysql")
        with engine.begin() as conn:
            assert dialects.batch_keys(conn, query) == [*DUE, HELD, KEPT]
            conn.exec_driver_sql("SET SESSION group_concat_max_len = 8")
            with pytest.raises(sa.exc.DBAPIError, match="came back cut short"):
                dialects.batch_keys(conn, query)
    finally:
        engine.dispose()

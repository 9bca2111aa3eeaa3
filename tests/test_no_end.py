"""No personal data without an end: `validate` warns, and the preview reports per policy, the
rows of a policy table that no policy of the file will ever remove (outside every policy's
`where` on that table: an open ticket under `where: {status: closed}`), and the tables that
point at a policy table but that no policy or cascade covers. Counts checked in plain SQL.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from helpers import invoke, run_cli, scalar, write_policies

if TYPE_CHECKING:
    from conftest import TestDatabase

OLD = dt.datetime(2019, 5, 1, 12, 0)

ACCOUNTS = {"name": "accounts", "table": "accounts", "after": "left_at", "retain": "1 year", "action": "delete"}
CLOSED = {"name": "closed", "table": "tickets", "after": "closed_at", "retain": "2 years",
          "where": {"status": "closed"}, "action": "delete"}
STALE = {"name": "stale", "table": "tickets", "after": "opened_at", "retain": "2 years",
         "where": {"status": "open"}, "action": "delete"}


def _schema(engine: sa.Engine) -> None:
    md = sa.MetaData()
    accounts = sa.Table("accounts", md, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("left_at", sa.DateTime, index=True))
    tickets = sa.Table("tickets", md, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), index=True),
                       sa.Column("status", sa.String(10)), sa.Column("opened_at", sa.DateTime, index=True),
                       sa.Column("closed_at", sa.DateTime, index=True))
    sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), index=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [{"id": 1, "left_at": None}])
        conn.execute(tickets.insert(), [
            {"id": 1, "account_id": 1, "status": "closed", "opened_at": OLD, "closed_at": OLD},
            {"id": 2, "account_id": 1, "status": "open", "opened_at": OLD, "closed_at": None},
            {"id": 3, "account_id": 1, "status": "open", "opened_at": OLD, "closed_at": None},
            {"id": 4, "account_id": 1, "status": None, "opened_at": OLD, "closed_at": None},
        ])


def test_rows_outside_every_where_and_uncovered_tables_are_reported(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    never = scalar(db.engine, "SELECT count(*) FROM tickets WHERE status IS NULL OR status <> 'closed'")
    assert never == 3
    policy = write_policies(tmp_path / "policies.yaml", db.url, [ACCOUNTS, CLOSED])

    checked = invoke(["--policies", str(policy), "validate"])
    assert checked.exit_code == 0, checked.stderr
    assert (f"warning: shop.tickets: {never} row(s) outside every policy's `where` ('closed' where "
            "{'status': 'closed'}): no policy will ever remove them") in checked.stderr
    assert "warning: shop.notes (account_id -> accounts) is covered by no policy or cascade" in checked.stderr

    preview = run_cli(policy, "--dry-run")
    assert preview.policy("closed")["no_end"] == never
    assert preview.policy("accounts")["no_end"] == 0
    assert preview.policy("accounts")["no_end_tables"] == ["notes.account_id"]
    text = run_cli(policy, "--dry-run", fmt="text").stdout
    assert f"! {never} row(s) of tickets are outside every policy's `where`" in text


def test_a_policy_for_the_other_rows_leaves_only_those_no_where_matches(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    policy = write_policies(tmp_path / "policies.yaml", db.url,
                            [{**ACCOUNTS, "cascade": ["notes"]}, CLOSED, STALE])
    left = scalar(db.engine, "SELECT count(*) FROM tickets WHERE status IS NULL OR status NOT IN ('closed', 'open')")
    assert left == 1
    preview = run_cli(policy, "--dry-run")
    assert preview.policy("closed")["no_end"] == preview.policy("stale")["no_end"] == left
    assert preview.policy("accounts")["no_end_tables"] == []
    checked = invoke(["--policies", str(policy), "validate"])
    assert checked.exit_code == 0
    assert "is covered by no policy" not in checked.stderr
    assert f"shop.tickets: {left} row(s) outside every policy's `where`" in checked.stderr

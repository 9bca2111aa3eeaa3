"""Foreign keys decide: a row referenced by a row that stays is never deleted.

Pins the NULL case of `where`/`exclude` in the *referencing* policy: a child row whose
`where` column is NULL is not removed by its policy, so it still references its parent and
the parent must be deferred. (SQL's NOT of an unknown comparison is unknown, which once let
such a parent count as free.)
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from helpers import ids, run_cli, write_policies

if TYPE_CHECKING:
    from conftest import TestDatabase

OLD = dt.datetime(2020, 1, 1, 12, 0)

POLICIES = [
    {"name": "notes", "table": "notes", "after": "closed_at", "retain": "1 year", "where": {"status": "closed"},
     "action": "delete", "max_fraction": 1.0},
    {"name": "customers", "table": "customers", "after": "left_at", "retain": "1 year", "action": "delete",
     "max_fraction": 1.0},
]


def _schema(engine: sa.Engine) -> None:
    md = sa.MetaData()
    customers = sa.Table("customers", md, sa.Column("id", sa.Integer, primary_key=True),
                         sa.Column("left_at", sa.DateTime, index=True))
    notes = sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False, index=True),
                     sa.Column("status", sa.String(10), nullable=True),
                     sa.Column("closed_at", sa.DateTime, index=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(customers.insert(), [{"id": i, "left_at": OLD} for i in (1, 2, 3)])
        conn.execute(notes.insert(), [
            {"id": 1, "customer_id": 1, "status": "closed", "closed_at": OLD},  # goes: customer 1 can go too
            {"id": 2, "customer_id": 2, "status": None, "closed_at": OLD},      # stays (NULL status): keeps 2
            {"id": 3, "customer_id": 3, "status": "open", "closed_at": OLD},    # stays: keeps 3
        ])


def test_a_null_where_column_in_a_referencing_row_keeps_its_parent(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    policy = write_policies(tmp_path / "policies.yaml", db.url, POLICIES)

    preview = run_cli(policy, "--dry-run")
    assert preview.exit_code == 0, preview.stderr
    assert (preview.policy("customers")["due"], preview.policy("customers")["deferred"]) == (3, 2)

    result = run_cli(policy)
    assert result.exit_code == 0, result.stderr
    assert result.policy("notes")["applied"] == 1
    assert result.policy("customers")["applied"] == 1
    assert result.policy("customers")["deferred"] == 2
    assert result.policy("customers")["deferred_reasons"] == {"notes": 2}
    assert ids(db.engine, "SELECT id FROM customers") == {2, 3}
    assert ids(db.engine, "SELECT id FROM notes") == {2, 3}

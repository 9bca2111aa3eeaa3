"""Rule 1: one policy never cuts another's term short.

A table with a policy of its own keeps its rows for its own term. Its rows block their parent
like any other kept referencing row (the parent is deferred) until their own policy removes
them, and a `cascade` into such a table is refused by `validate` (exit 2, nothing touched).
Boundary: an order one second past its own term goes, and its customer with it; an order one
second inside its term stays, and keeps its customer. Preview and run agree; checked in SQL.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from helpers import ids, invoke, run_cli, scalar, unchanged_witness, write_policies

if TYPE_CHECKING:
    from conftest import TestDatabase

# AS_OF is 2026-11-24 03:00 local: orders' 3-year term ends for events up to 2023-11-24 03:00:00.
ORDER_CUT = dt.datetime(2023, 11, 24, 3, 0, 0)
SECOND = dt.timedelta(seconds=1)
LEFT = dt.datetime(2020, 1, 1, 12, 0)  # customers left long ago: all past their 1-year term

CUSTOMERS = {"name": "customers", "table": "customers", "after": "left_at", "retain": "1 year",
             "action": "delete", "max_fraction": 1.0}
ORDERS = {"name": "orders", "table": "orders", "after": "ordered_at", "retain": "3 years",
          "action": "delete", "max_fraction": 1.0}


def _schema(engine: sa.Engine) -> None:
    md = sa.MetaData()
    customers = sa.Table("customers", md, sa.Column("id", sa.Integer, primary_key=True),
                         sa.Column("left_at", sa.DateTime, index=True))
    orders = sa.Table("orders", md, sa.Column("id", sa.Integer, primary_key=True),
                      sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False,
                                index=True),
                      sa.Column("ordered_at", sa.DateTime, nullable=False, index=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(customers.insert(), [{"id": i, "left_at": LEFT} for i in (1, 2, 3)])
        conn.execute(orders.insert(), [
            {"id": 10, "customer_id": 1, "ordered_at": ORDER_CUT},           # exactly at its term's end: goes
            {"id": 11, "customer_id": 1, "ordered_at": ORDER_CUT - SECOND},  # one second past: goes
            {"id": 20, "customer_id": 2, "ordered_at": ORDER_CUT + SECOND},  # one second inside: stays
            {"id": 21, "customer_id": 2, "ordered_at": ORDER_CUT - SECOND},  # past: goes
        ])


def test_a_child_with_its_own_policy_keeps_its_parent_until_its_own_term_ends(
        db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    policy = write_policies(tmp_path / "policies.yaml", db.url, [CUSTOMERS, ORDERS])

    preview = run_cli(policy, "--dry-run")
    assert preview.exit_code == 0, preview
    run = run_cli(policy)
    assert run.exit_code == 0, run
    for result in (preview, run):
        orders, customers = result.policy("orders"), result.policy("customers")
        assert (orders["due"], orders["deferred"]) == (3, 0)
        assert (customers["due"], customers["deferred"]) == (3, 1)
        assert customers["deferred_reasons"] == {"orders": 1}
    assert (run.policy("orders")["applied"], run.policy("customers")["applied"]) == (3, 2)

    # Plain SQL: the order inside its term and the customer it points at are both still there.
    assert ids(db.engine, "SELECT id FROM orders") == {20}
    assert ids(db.engine, "SELECT id FROM customers") == {2}
    assert scalar(db.engine, "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id") == 1


def test_a_cascade_into_a_table_with_its_own_policy_is_refused(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    greedy = {**CUSTOMERS, "cascade": ["orders"]}
    policy = write_policies(tmp_path / "policies.yaml", db.url, [greedy, ORDERS])
    before = unchanged_witness(db)

    checked = invoke(["--policies", str(policy), "validate"])
    assert checked.exit_code == 2
    assert "policy 'customers', key 'cascade': table 'orders' has a policy of its own ('orders')" in checked.stderr
    assert "Traceback" not in checked.stderr

    # Also when only the parent's policy is run: the file as a whole decides.
    result = run_cli(policy, "--policy", "customers")
    assert result.exit_code == 2
    assert "table 'orders' has a policy of its own" in result.stderr
    assert unchanged_witness(db) == before

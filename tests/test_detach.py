"""`on_referenced: detach`: a due parent still referenced through a nullable foreign key by rows
that must be kept is deleted after that key is set to NULL in the kept rows (same transaction).

Boundary: an invoice one second inside its own term is kept and detached; one second past its
term it goes by its own policy and nothing is detached. Counts in the preview, the run, the
JSON and the audit log (action `detach`: table, keys, column; no values) are checked against
plain SQL. A NOT NULL foreign key is refused by validate, naming table and column.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from helpers import audit_path, ids, invoke, run_cli, scalar, unchanged_witness, write_policies

if TYPE_CHECKING:
    from conftest import TestDatabase

# AS_OF 2026-11-24 03:00 local: the invoices' 3-year term ends for events up to 2023-11-24 03:00:00.
INVOICE_CUT = dt.datetime(2023, 11, 24, 3, 0, 0)
SECOND = dt.timedelta(seconds=1)
LEFT = dt.datetime(2020, 1, 1, 12, 0)
NAME = "Jansen-Detachtest"

CUSTOMERS = {"name": "customers", "table": "customers", "after": "left_at", "retain": "1 year",
             "action": "delete", "on_referenced": "detach", "max_fraction": 1.0}
INVOICES = {"name": "invoices", "table": "invoices", "after": "issued_at", "retain": "3 years",
            "action": "delete", "max_fraction": 1.0}


def _schema(engine: sa.Engine, *, notes: bool = False) -> None:
    md = sa.MetaData()
    customers = sa.Table("customers", md, sa.Column("id", sa.Integer, primary_key=True),
                         sa.Column("left_at", sa.DateTime, index=True))
    invoices = sa.Table("invoices", md, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=True, index=True),
                        sa.Column("customer_name", sa.String(100), nullable=False),
                        sa.Column("issued_at", sa.DateTime, nullable=False, index=True))
    if notes:
        sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False, index=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(customers.insert(), [
            {"id": 1, "left_at": LEFT}, {"id": 2, "left_at": LEFT}, {"id": 3, "left_at": LEFT},
            {"id": 4, "left_at": dt.datetime(2026, 6, 1)},  # inside its own term: stays
        ])
        conn.execute(invoices.insert(), [
            {"id": 10, "customer_id": 1, "customer_name": NAME, "issued_at": INVOICE_CUT + SECOND},  # kept: detached
            {"id": 11, "customer_id": 1, "customer_name": NAME, "issued_at": INVOICE_CUT + 2 * SECOND},  # detached
            {"id": 20, "customer_id": 2, "customer_name": NAME, "issued_at": INVOICE_CUT - SECOND},  # goes itself
            {"id": 40, "customer_id": 4, "customer_name": NAME, "issued_at": INVOICE_CUT + SECOND},  # untouched
        ])


def test_detach_nulls_the_key_of_kept_rows_then_deletes_the_parent(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    policy = write_policies(tmp_path / "policies.yaml", db.url, [CUSTOMERS, INVOICES])
    # What the run must do, in plain SQL before it: invoices inside their term pointing at a due customer.
    expected_detached = scalar(db.engine, """
        SELECT count(*) FROM invoices i JOIN customers c ON c.id = i.customer_id
        WHERE c.left_at <= '2025-11-24 03:00:00' AND i.issued_at > '2023-11-24 03:00:00'""")
    assert expected_detached == 2

    preview = run_cli(policy, "--dry-run")
    assert preview.exit_code == 0, preview
    text = run_cli(policy, "--dry-run", fmt="text")
    assert "2 row(s) of invoices pointing at them would be detached first (customer_id set to NULL" in text.stdout
    run = run_cli(policy)
    assert run.exit_code == 0, run
    for result in (preview, run):
        customers = result.policy("customers")
        assert (customers["due"], customers["deferred"], customers["detached"]) == (3, 0, expected_detached)
        assert customers["detached_columns"] == {"invoices.customer_id": expected_detached}
        assert result.policy("invoices")["due"] == 1
    assert run.policy("customers")["applied"] == 3

    assert ids(db.engine, "SELECT id FROM customers") == {4}
    assert ids(db.engine, "SELECT id FROM invoices") == {10, 11, 40}
    assert ids(db.engine, "SELECT id FROM invoices WHERE customer_id IS NULL") == {10, 11}
    assert scalar(db.engine, "SELECT customer_id FROM invoices WHERE id = 40") == 4

    log = audit_path(policy).read_text(encoding="utf-8")
    entries = [json.loads(line) for line in log.splitlines()]
    detach = [e for e in entries if e["event"] == "batch" and e["action"] == "detach"]
    assert [(e["table"], e["key_column"], e["keys"], e["columns"], e["count"]) for e in detach] == [
        ("invoices", "id", [10, 11], ["customer_id"], 2)]
    ends = [e for e in entries if e["event"] == "policy.end" and e["policy"] == "customers" and not e["dry_run"]]
    assert ends[-1]["detached"] == 2 and ends[-1]["applied"] == 3
    assert NAME not in log

    again = run_cli(policy)
    assert again.exit_code == 0 and again.policy("customers")["detached"] == 0


def test_detach_through_a_not_null_foreign_key_is_refused(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine, notes=True)
    policy = write_policies(tmp_path / "policies.yaml", db.url, [CUSTOMERS, INVOICES])
    before = unchanged_witness(db)
    checked = invoke(["--policies", str(policy), "validate"])
    assert checked.exit_code == 2
    assert ("policy 'customers', key 'on_referenced': "
            "detach sets notes.customer_id to NULL, but the column is NOT NULL") in checked.stderr
    result = run_cli(policy)
    assert result.exit_code == 2
    assert unchanged_witness(db) == before


def test_detach_with_fields_is_refused_by_the_file_check(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    policy = write_policies(tmp_path / "policies.yaml", db.url,
                            [{**CUSTOMERS, "fields": {"left_at": None}}, INVOICES])
    checked = invoke(["--policies", str(policy), "validate"])
    assert checked.exit_code == 2
    assert "key 'fields': a delete policy takes no `fields`" in checked.stderr


def test_a_blocked_detach_policy_detaches_nothing_and_reports_none(db: TestDatabase, tmp_path: Path) -> None:
    """The max_fraction guard stops the whole policy, detaching included (exit 3)."""
    _schema(db.engine)
    policy = write_policies(tmp_path / "policies.yaml", db.url, [{**CUSTOMERS, "max_fraction": 0.1}, INVOICES])
    run = run_cli(policy)
    assert run.exit_code == 3, run
    customers = run.policy("customers")
    assert (customers["status"], customers["applied"], customers["detached"]) == ("blocked", 0, 0)
    assert scalar(db.engine, "SELECT count(*) FROM invoices WHERE customer_id IS NULL") == 0
    assert scalar(db.engine, "SELECT count(*) FROM customers") == 4


@pytest.mark.parametrize(("point", "expected", "nulls_after_kill"), [
    ("intent", "not applied", 0),  # killed before COMMIT: detach and delete rolled back together
    # (only the customers policy runs: invoice 20 is detached too, its own policy did not remove it)
    ("commit", "applied", 3),      # killed after COMMIT, before `batch.committed`
])
def test_a_killed_detach_batch_is_recovered(db: TestDatabase, tmp_path: Path, point: str, expected: str,
                                            nulls_after_kill: int) -> None:
    if db.name == "mariadb":
        pytest.skip("pinned on SQLite and PostgreSQL like tests/test_recovery.py; MariaDB shares the code path")
    _schema(db.engine)
    policy = write_policies(tmp_path / "policies.yaml", db.url, [CUSTOMERS, INVOICES])
    argv = [sys.executable, "-m", "retention.cli", "--policies", str(policy), "--log-format", "json",
            "run", "--as-of", "2026-11-24T03:00:00", "--format", "json", "--policy", "customers"]
    env = {**os.environ, "RETENTION_TEST_KILL_AT": point}
    killed = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert scalar(db.engine, "SELECT count(*) FROM invoices WHERE customer_id IS NULL") == nulls_after_kill

    again = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert again.returncode == 0, again.stderr
    entries = [json.loads(line) for line in audit_path(policy).read_text(encoding="utf-8").splitlines()]
    recovered = {e["batch"]: e["result"] for e in entries if e["event"] == "batch.recovered"}
    first_run = entries[0]["run"]
    intents = {e["batch"]: e["action"] for e in entries if e["event"] == "batch" and e["run"] == first_run}
    assert sorted(intents.values()) == ["delete", "detach"]
    assert recovered == dict.fromkeys(intents, expected)
    assert ids(db.engine, "SELECT id FROM customers") == {4}
    assert ids(db.engine, "SELECT id FROM invoices WHERE customer_id IS NULL") == {10, 11, 20}


def test_explain_says_a_detaching_delete_and_the_run_does_it(db: TestDatabase, tmp_path: Path) -> None:
    """`explain` of a due customer still referenced by a kept invoice: with on_referenced: detach
    its fate is delete (not deferred), naming the invoices detached first; the run then deletes it
    and keeps the invoices with a NULL key (plain SQL)."""
    _schema(db.engine)
    policy = write_policies(tmp_path / "policies.yaml", db.url, [CUSTOMERS, INVOICES])
    out = invoke(["--policies", str(policy), "--log-format", "json", "explain", "customers", "1",
                  "--as-of", "2026-11-24T03:00:00", "--format", "json"], parse_json=True)
    assert out.exit_code == 0, out
    assert out.data["fate"] == "delete"
    assert "detached first" in " ".join(out.data["reasons"]) and "invoices" in " ".join(out.data["reasons"])
    run = run_cli(policy)
    assert run.exit_code == 0, run
    assert scalar(db.engine, "SELECT count(*) FROM customers WHERE id = 1") == 0
    assert ids(db.engine, "SELECT id FROM invoices WHERE customer_id IS NULL") == {10, 11}

"""`retention erase`: one data subject erased now through the file's policies. The subject's
rows (the account, its orders, invoices and tickets by foreign key, a guest ticket by e-mail)
are treated as past their own policy's erasable point: invoices and orders inside their
statutory minimum stay (detached from the deleted account), held rows stay and are reported,
the rest goes with its cascades; `--dry-run` says which rows go and which stay under which
basis and changes nothing; more than the bound is refused without --force. Checked in plain
SQL on every database.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from helpers import audit_path, ids, invoke, snapshot, write_policies

if TYPE_CHECKING:
    from conftest import TestDatabase

EMAIL = "jan.jansen@example.com"
OUT = dt.datetime(2015, 3, 1, 10, 0)   # outside every 7-year floor
IN = dt.datetime(2024, 3, 1, 10, 0)    # inside them
EDGE = dt.datetime(2018, 12, 31, 23, 59, 59)  # floor (7 years from the end of 2018) ends 2026-01-01 00:00

ACCOUNTS = {"name": "accounts", "table": "accounts", "after": "deregistered_at", "retain": "24 months",
            "action": "delete", "on_referenced": "detach", "exclude": {"legal_hold": True}, "basis": "privacy"}
ORDERS = {"name": "orders", "table": "orders", "after": "ordered_at", "retain": "7 years", "minimum": "7 years",
          "minimum_align": "end_of_year", "align": "end_of_year", "action": "delete", "basis": "BW 2:10"}
INVOICES = {"name": "invoices", "table": "invoices", "after": "issued_at", "retain": "7 years",
            "minimum": "7 years", "minimum_align": "end_of_year", "align": "end_of_year", "action": "delete",
            "cascade": ["invoice_lines"], "basis": "AWR art. 52"}
TICKETS = {"name": "tickets", "table": "tickets", "after": "last_activity_at", "retain": "2 years",
           "exclude": {"legal_hold": True}, "action": "delete", "cascade": ["ticket_messages"], "basis": "privacy"}


def schema(engine: sa.Engine) -> None:
    md = sa.MetaData()
    fk = sa.ForeignKey
    accounts = sa.Table("accounts", md, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("email", sa.String(100)), sa.Column("deregistered_at", sa.DateTime, index=True),
                        sa.Column("legal_hold", sa.Boolean))
    orders = sa.Table("orders", md, sa.Column("id", sa.Integer, primary_key=True),
                      sa.Column("account_id", sa.Integer, fk("accounts.id"), nullable=True, index=True),
                      sa.Column("ordered_at", sa.DateTime, nullable=False, index=True))
    invoices = sa.Table("invoices", md, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("account_id", sa.Integer, fk("accounts.id"), nullable=True, index=True),
                        sa.Column("issued_at", sa.DateTime, nullable=False, index=True))
    lines = sa.Table("invoice_lines", md, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("invoice_id", sa.Integer, fk("invoices.id"), nullable=False, index=True))
    tickets = sa.Table("tickets", md, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("account_id", sa.Integer, fk("accounts.id"), nullable=True, index=True),
                       sa.Column("email", sa.String(100)), sa.Column("last_activity_at", sa.DateTime, index=True),
                       sa.Column("legal_hold", sa.Boolean))
    messages = sa.Table("ticket_messages", md, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("ticket_id", sa.Integer, fk("tickets.id"), nullable=False, index=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [
            {"id": 1, "email": EMAIL, "deregistered_at": None, "legal_hold": False},  # still a customer
            {"id": 2, "email": "piet@example.com", "deregistered_at": None, "legal_hold": False},
            {"id": 3, "email": "other@example.com", "deregistered_at": None, "legal_hold": False},
        ])
        conn.execute(orders.insert(), [
            {"id": 11, "account_id": 1, "ordered_at": OUT}, {"id": 12, "account_id": 1, "ordered_at": IN},
            {"id": 21, "account_id": 2, "ordered_at": OUT}, {"id": 31, "account_id": 3, "ordered_at": OUT},
        ])
        conn.execute(invoices.insert(), [
            {"id": 11, "account_id": 1, "issued_at": OUT}, {"id": 12, "account_id": 1, "issued_at": IN},
            {"id": 13, "account_id": 1, "issued_at": EDGE},
            {"id": 21, "account_id": 2, "issued_at": OUT}, {"id": 31, "account_id": 3, "issued_at": OUT},
        ])
        conn.execute(lines.insert(), [{"id": 10 * i + j, "invoice_id": i} for i in (11, 12, 13, 21, 31)
                                      for j in (1, 2)])
        conn.execute(tickets.insert(), [
            {"id": 11, "account_id": 1, "email": EMAIL, "last_activity_at": IN, "legal_hold": False},
            {"id": 12, "account_id": None, "email": EMAIL, "last_activity_at": None, "legal_hold": False},  # guest
            {"id": 13, "account_id": None, "email": "someone@example.com", "last_activity_at": OUT,
             "legal_hold": False},
            {"id": 21, "account_id": 2, "email": "piet@example.com", "last_activity_at": OUT, "legal_hold": True},
            {"id": 22, "account_id": 2, "email": "piet@example.com", "last_activity_at": OUT, "legal_hold": False},
        ])
        conn.execute(messages.insert(), [{"id": 10 * i + j, "ticket_id": i} for i in (11, 12, 13, 21, 22)
                                         for j in (1, 2)])


def policy_file(tmp_path: Path, db: TestDatabase) -> Path:
    return write_policies(tmp_path / "policies.yaml", db.url, [ACCOUNTS, ORDERS, INVOICES, TICKETS])


def erase(policy: Path, key: str, *args: str, fmt: str = "json") -> Any:
    return invoke(["--policies", str(policy), "erase", "--policy", "accounts", "--key", key,
                   "--request", "AVG-2026-031", "--format", fmt, *args], parse_json=fmt == "json")


def table(result: Any, name: str) -> dict[str, Any]:
    return next(t for t in result.data["tables"] if t["table"] == name)


def kept(result: Any, name: str) -> dict[Any, str]:
    return {k["key"]: k["basis"] for k in table(result, name)["kept"]}


def events(policy: Path, *names: str) -> list[dict[str, Any]]:
    path = audit_path(policy)
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if e["event"] in names]


def test_erase_removes_the_subject_and_keeps_what_the_law_keeps(db: TestDatabase, tmp_path: Path) -> None:
    schema(db.engine)
    policy = policy_file(tmp_path, db)
    before = snapshot(db.engine)

    preview = erase(policy, "1", "--match", "tickets.email", "--dry-run", "--as-of", "2026-11-24T03:00")
    assert preview.exit_code == 0, preview
    assert snapshot(db.engine) == before  # a preview changes nothing
    assert events(policy, "erase.start", "erase.end", "batch") == []

    run = erase(policy, "1", "--match", "tickets.email", "--as-of", "2026-11-24T03:00")
    assert run.exit_code == 0, run
    for result in (preview, run):
        assert table(result, "accounts")["deleted"] == [1]
        assert table(result, "orders")["deleted"] == [11]
        assert kept(result, "orders") == {12: "statutory minimum of 7 years"}
        assert table(result, "invoices")["deleted"] == [11, 13]  # 13's floor ended on 2026-01-01
        assert kept(result, "invoices") == {12: "statutory minimum of 7 years"}
        assert table(result, "invoices")["kept"][0]["until"] == "2031-12-31"
        assert table(result, "invoices")["basis"] == "AWR art. 52"
        assert table(result, "invoices")["cascaded"] == {"invoice_lines": 4}
        assert table(result, "tickets")["deleted"] == [11, 12]
        assert table(result, "accounts")["detached"] == {"orders.account_id": [12], "invoices.account_id": [12]}
    # Plain SQL: what went, what stayed, what was detached.
    assert ids(db.engine, "SELECT id FROM accounts") == {2, 3}
    assert ids(db.engine, "SELECT id FROM orders") == {12, 21, 31}
    assert ids(db.engine, "SELECT id FROM invoices") == {12, 21, 31}
    assert ids(db.engine, "SELECT id FROM invoice_lines") == {121, 122, 211, 212, 311, 312}
    assert ids(db.engine, "SELECT id FROM tickets") == {13, 21, 22}
    assert ids(db.engine, "SELECT id FROM ticket_messages") == {131, 132, 211, 212, 221, 222}
    assert ids(db.engine, "SELECT id FROM orders WHERE account_id IS NULL") == {12}
    assert ids(db.engine, "SELECT id FROM invoices WHERE account_id IS NULL") == {12}
    # The log: framed, keys only, no e-mail address.
    start, end = events(policy, "erase.start"), events(policy, "erase.end")
    assert len(start) == len(end) == 1
    assert start[0]["request"] == "AVG-2026-031" and start[0]["key"] == "1"
    assert start[0]["keys"] == {"accounts": [1], "orders": [11, 12], "invoices": [11, 12, 13],
                                "tickets": [11, 12]}
    assert start[0]["matched"] == ["tickets.email"]
    batches = events(policy, "batch")
    assert {(b["table"], b["action"], tuple(b["keys"])) for b in batches} == {
        ("orders", "delete", (11,)), ("invoices", "delete", (11, 13)), ("tickets", "delete", (11, 12)),
        ("orders", "detach", (12,)), ("invoices", "detach", (12,)), ("accounts", "delete", (1,))}
    assert all(b["run"] == start[0]["run"] for b in batches)
    assert EMAIL not in audit_path(policy).read_text(encoding="utf-8")


def test_the_statutory_floor_at_its_boundary(db: TestDatabase, tmp_path: Path) -> None:
    """Invoice 13 (2018-12-31 23:59:59): inside its floor one second before 2026-01-01, past it one second after."""
    schema(db.engine)
    policy = policy_file(tmp_path, db)
    inside = erase(policy, "1", "--dry-run", "--as-of", "2025-12-31T23:59:59")
    past = erase(policy, "1", "--dry-run", "--as-of", "2026-01-01T00:00:01")
    assert 13 in kept(inside, "invoices") and 13 not in table(inside, "invoices")["deleted"]
    assert 13 in table(past, "invoices")["deleted"] and 13 not in kept(past, "invoices")
    run = erase(policy, "1", "--as-of", "2025-12-31T23:59:59")
    assert run.exit_code == 0, run
    assert ids(db.engine, "SELECT id FROM invoices WHERE id = 13 AND account_id IS NULL") == {13}


def test_held_rows_are_kept_and_reported(db: TestDatabase, tmp_path: Path) -> None:
    """Account 2's ticket 21 is under legal hold and its order 21 in the registry: both stay, and
    the account with them (a hold follows links); its other ticket and its old invoice go."""
    schema(db.engine)
    policy = policy_file(tmp_path, db)
    r = invoke(["--policies", str(policy), "hold", "add", "--policy", "orders", "--key", "21", "--reason", "claim",
                "--until", "2099-01-01"])
    assert r.exit_code == 0, r
    result = erase(policy, "2", "--as-of", "2026-11-24T03:00")
    assert result.exit_code == 0, result
    assert kept(result, "accounts") == {2: "hold (tickets.legal_hold, registry)"}  # via ticket 21 and order 21
    assert kept(result, "orders") == {21: "hold (registry)"}
    assert kept(result, "tickets") == {21: "hold (tickets.legal_hold)"}
    assert table(result, "tickets")["deleted"] == [22]
    assert table(result, "invoices")["deleted"] == [21]
    assert ids(db.engine, "SELECT id FROM accounts") == {1, 2, 3}
    assert ids(db.engine, "SELECT id FROM orders WHERE account_id = 2") == {21}
    assert ids(db.engine, "SELECT id FROM tickets WHERE account_id = 2") == {21}
    assert ids(db.engine, "SELECT id FROM invoices WHERE account_id = 2") == set()


def test_an_erasure_above_the_bound_is_refused_without_force(db: TestDatabase, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from retention.engine import erase as eraser

    monkeypatch.setattr(eraser, "MAX_ROWS", 3)
    schema(db.engine)
    policy = policy_file(tmp_path, db)
    before = snapshot(db.engine)
    refused = erase(policy, "1", "--as-of", "2026-11-24T03:00", fmt="text")
    assert refused.exit_code == 3, refused
    assert "more than 3" in refused.stderr and "--force" in refused.stderr
    assert snapshot(db.engine) == before
    assert events(policy, "erase.start") == []
    forced = erase(policy, "1", "--as-of", "2026-11-24T03:00", "--force")
    assert forced.exit_code == 0, forced
    assert ids(db.engine, "SELECT id FROM accounts") == {2, 3}


def test_bad_erase_input_touches_nothing(db: TestDatabase, tmp_path: Path) -> None:
    schema(db.engine)
    policy = policy_file(tmp_path, db)
    before = snapshot(db.engine)
    for args, message in [(("--key", "99"), "no row"), (("--key", "x"), "not an integer"),
                          (("--key", "1", "--match", "nope.email"), "no policy"),
                          (("--key", "1", "--match", "tickets.nope"), "no column"),
                          (("--key", "1", "--match", "tickets"), "TABLE.COLUMN")]:
        r = invoke(["--policies", str(policy), "erase", "--policy", "accounts", "--request", "R", *args])
        assert r.exit_code == 2, (args, r)
        assert message in r.stderr, (args, r.stderr)
    assert snapshot(db.engine) == before


def test_audit_show_lists_the_erasure_as_a_run_of_its_own(db: TestDatabase, tmp_path: Path) -> None:
    """The erasure's batches are reported as a subject erasure with what it deleted; hold entries
    are no run."""
    schema(db.engine)
    policy = policy_file(tmp_path, db)
    assert invoke(["--policies", str(policy), "hold", "add", "--policy", "orders", "--key", "31", "--reason", "x",
                   "--until", "2099-01-01"]).exit_code == 0
    assert erase(policy, "1", "--match", "tickets.email", "--as-of", "2026-11-24T03:00").exit_code == 0
    shown = invoke(["--policies", str(policy), "audit", "show", "--format", "json"], parse_json=True)
    assert shown.exit_code == 0, shown
    [run] = shown.data["runs"]
    assert (run["kind"], run["status"]) == ("erasure", "ok")
    assert {p["policy"]: p["deleted"] for p in run["policies"]} == {"orders": 1, "invoices": 2, "tickets": 2,
                                                                    "accounts": 1}
    text = invoke(["--policies", str(policy), "audit", "show"])
    assert "SUBJECT ERASURE" in text.stdout
    found = invoke(["--policies", str(policy), "audit", "find", "--policy", "accounts", "--key", "1",
                    "--table", "accounts"])
    assert found.exit_code == 0, found
    assert "subject erasure, request AVG-2026-031" in found.stdout and ": deleted" in found.stdout


def test_an_account_still_referenced_by_kept_invoices_is_anonymised(db: TestDatabase, tmp_path: Path) -> None:
    """With `on_referenced: anonymise` (tests/helpers.py SHOP_POLICIES) the erased account that
    kept invoices still point at is anonymised in place, not deleted; its tickets go."""
    from helpers import SHOP_POLICIES

    from retention.demo import create_shop

    create_shop(db.engine, accounts=150, seed=3, today=dt.date(2026, 11, 24))
    with db.engine.connect() as conn:
        subject, email = conn.execute(sa.text(
            "SELECT a.id, a.email FROM accounts a JOIN invoices i ON i.account_id = a.id "
            "WHERE i.issued_at >= '2021-01-01' AND EXISTS (SELECT 1 FROM tickets t WHERE t.account_id = a.id) "
            "AND a.legal_hold = :f ORDER BY a.id"), {"f": False}).first()
    invoices = ids(db.engine, "SELECT id FROM invoices WHERE account_id = :a", a=subject)
    policy = write_policies(tmp_path / "policies.yaml", db.url, SHOP_POLICIES)
    result = erase(policy, str(subject), "--as-of", "2026-11-24T03:00")
    assert result.exit_code == 0, result
    assert table(result, "accounts")["anonymised"] == [subject]
    assert ids(db.engine, "SELECT id FROM accounts WHERE id = :a AND email <> :e", a=subject, e=email) == {subject}
    assert ids(db.engine, "SELECT id FROM tickets WHERE account_id = :a", a=subject) == set()
    kept_invoices = ids(db.engine, "SELECT id FROM invoices WHERE account_id = :a", a=subject)
    assert kept_invoices and kept_invoices <= invoices
    assert set(kept(result, "invoices")) == kept_invoices

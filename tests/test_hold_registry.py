"""The hold registry (`retention hold add/list/lift`): a hold keeps one row and the rows of the
other policies linked to it, exactly like an `exclude` hold, counted as `held` with the reason
`registry`; it ends at the start of its date in the file's time zone (one second either side),
the next real run says so and records `hold.expired`; add, lift and expiry are in the audit log
without the reason text. On every database, the rows checked in plain SQL.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from helpers import audit_path, ids, invoke, run_cli, scalar, write_policies

if TYPE_CHECKING:
    from conftest import TestDatabase

OLD = dt.datetime(2019, 5, 1, 12, 0)  # past every term below
REASON = "claim of Jan Jansen, lawyer mr. P. de Vries"  # free text that names people

ACCOUNTS = {"name": "accounts", "table": "accounts", "after": "left_at", "retain": "1 year", "action": "delete",
            "on_referenced": "detach", "max_fraction": 1.0}
INVOICES = {"name": "invoices", "table": "invoices", "after": "issued_at", "retain": "3 years", "action": "delete",
            "max_fraction": 1.0}
TICKETS = {"name": "tickets", "table": "tickets", "after": "closed_at", "retain": "1 year", "action": "delete",
           "max_fraction": 1.0}


def _schema(engine: sa.Engine) -> None:
    md = sa.MetaData()
    accounts = sa.Table("accounts", md, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("left_at", sa.DateTime, index=True))
    invoices = sa.Table("invoices", md, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=True, index=True),
                        sa.Column("issued_at", sa.DateTime, nullable=False, index=True))
    tickets = sa.Table("tickets", md, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=True, index=True),
                       sa.Column("closed_at", sa.DateTime, index=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [{"id": i, "left_at": OLD} for i in (1, 2, 3)])
        conn.execute(invoices.insert(), [{"id": 10 * i, "account_id": i, "issued_at": OLD} for i in (1, 2, 3)])
        conn.execute(tickets.insert(), [{"id": 100 * i, "account_id": i, "closed_at": OLD} for i in (1, 2, 3)])


def _policy(tmp_path: Path, db: TestDatabase) -> Path:
    return write_policies(tmp_path / "policies.yaml", db.url, [ACCOUNTS, INVOICES, TICKETS])


def hold(policy: Path, *args: str) -> Any:
    return invoke(["--policies", str(policy), "hold", *args])


def add(policy: Path, name: str, key: str, until: str = "2099-01-01", *extra: str) -> Any:
    return hold(policy, "add", "--policy", name, "--key", key, "--reason", REASON, "--until", until, *extra)


def _events(policy: Path, name: str) -> list[dict[str, Any]]:
    path = audit_path(policy)
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [e for e in entries if e["event"] == name]


def test_a_registry_hold_keeps_its_row_and_the_rows_linked_to_it(db: TestDatabase, tmp_path: Path) -> None:
    """Account 2 held: it, its invoice and its ticket stay. Invoice 30 held: it and its account
    stay (one link up), but not the account's ticket (two links away). Counted as `registry`."""
    _schema(db.engine)
    policy = _policy(tmp_path, db)
    r = add(policy, "accounts", "2", "2099-01-01", "--by", "dpo")
    assert r.exit_code == 0, r
    assert "hold 1 added" in r.stdout
    assert add(policy, "invoices", "30").exit_code == 0
    # The table holds what was asked, in plain SQL.
    assert scalar(db.engine, "SELECT COUNT(*) FROM retention_holds WHERE lifted_at IS NULL") == 2

    preview = run_cli(policy, "--dry-run")
    run = run_cli(policy)
    assert (preview.exit_code, run.exit_code) == (0, 0), run
    for result in (preview, run):
        accounts, invoices, tickets = (result.policy(n) for n in ("accounts", "invoices", "tickets"))
        assert (accounts["held"], accounts["due"], accounts["held_reasons"]) == (2, 1, {"registry": 2})
        assert (invoices["held"], invoices["due"], invoices["held_reasons"]) == (2, 1, {"registry": 2})
        assert (tickets["held"], tickets["due"], tickets["held_reasons"]) == (1, 2, {"registry": 1})
    assert ids(db.engine, "SELECT id FROM accounts") == {2, 3}
    assert ids(db.engine, "SELECT id FROM invoices") == {20, 30}
    assert ids(db.engine, "SELECT id FROM tickets") == {200}
    # The kept rows keep their links: nothing of a held row was detached.
    assert ids(db.engine, "SELECT account_id FROM invoices") == {2, 3}

    added = _events(policy, "hold.added")
    assert [(e["hold"], e["policy"], e["table"], e["key"], e["until"]) for e in added] == [
        (1, "accounts", "accounts", "2", "2099-01-01"), (2, "invoices", "invoices", "30", "2099-01-01")]
    assert added[0]["by"] == "dpo"
    assert REASON not in audit_path(policy).read_text(encoding="utf-8")


def test_a_registry_hold_ends_at_the_start_of_its_date(db: TestDatabase, tmp_path: Path) -> None:
    """A hold until 2026-11-24 holds at 23:59:59 the day before (Amsterdam) and not at 00:00:01;
    that run reports the expiry once and records `hold.expired`."""
    _schema(db.engine)
    policy = _policy(tmp_path, db)
    assert add(policy, "accounts", "1").exit_code == 0
    # Time passes: the hold's end date is now in the past of the machine's clock.
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE retention_holds SET until = :d"), {"d": dt.date(2026, 11, 24)})

    before = run_cli(policy, "--policy", "accounts", as_of="2026-11-23T23:59:59")
    assert before.exit_code == 0, before
    assert (before.policy("accounts")["held"], before.policy("accounts")["applied"]) == (1, 2)
    assert ids(db.engine, "SELECT id FROM accounts") == {1}
    assert _events(policy, "hold.expired") == []
    assert not before.policy("accounts")["warnings"]

    # The last account goes: the whole table, which the 100 % guard holds back without --force.
    after = run_cli(policy, "--policy", "accounts", "--force", as_of="2026-11-24T00:00:01")
    assert after.exit_code == 0, after
    assert (after.policy("accounts")["held"], after.policy("accounts")["applied"]) == (0, 1)
    assert ids(db.engine, "SELECT id FROM accounts") == set()
    assert after.policy("accounts")["warnings"] == [
        "hold 1 expired (key 1 of accounts, until 2026-11-24): rows due again"]
    expired = _events(policy, "hold.expired")
    assert [(e["hold"], e["policy"], e["key"], e["until"]) for e in expired] == [(1, "accounts", "1", "2026-11-24")]
    assert expired[0]["run"] == after.data["run"]

    again = run_cli(policy, "--policy", "accounts", as_of="2026-11-24T00:00:02")
    assert not again.policy("accounts")["warnings"]
    assert len(_events(policy, "hold.expired")) == 1
    listed = json.loads(hold(policy, "list", "--expired", "--format", "json").stdout)
    assert [(h["id"], h["state"]) for h in listed] == [(1, "expired")]
    assert "no active holds" in hold(policy, "list").stdout


def test_a_dry_run_reports_an_expiry_but_records_nothing(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    policy = _policy(tmp_path, db)
    assert add(policy, "accounts", "1").exit_code == 0
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE retention_holds SET until = :d"), {"d": dt.date(2026, 11, 24)})
    preview = run_cli(policy, "--dry-run")
    assert preview.policy("accounts")["warnings"] == [
        "hold 1 expired (key 1 of accounts, until 2026-11-24): rows due again"]
    assert _events(policy, "hold.expired") == []
    assert scalar(db.engine, "SELECT COUNT(*) FROM retention_holds WHERE expired_at IS NULL") == 1


def test_a_lifted_hold_no_longer_holds(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    policy = _policy(tmp_path, db)
    assert add(policy, "accounts", "1").exit_code == 0
    assert add(policy, "accounts", "2").exit_code == 0
    lifted = hold(policy, "lift", "1")
    assert lifted.exit_code == 0, lifted
    assert "hold 1 lifted" in lifted.stdout
    assert hold(policy, "lift", "1").exit_code == 2  # once
    listed = json.loads(hold(policy, "list", "--format", "json").stdout)
    assert [h["id"] for h in listed] == [2]
    assert [h["state"] for h in json.loads(hold(policy, "list", "--expired", "--format", "json").stdout)] == [
        "lifted", "active"]
    run = run_cli(policy)
    assert run.exit_code == 0, run
    assert ids(db.engine, "SELECT id FROM accounts") == {2}
    assert [(e["hold"], e["key"]) for e in _events(policy, "hold.lifted")] == [(1, "1")]


def test_bad_hold_input_is_refused_and_touches_nothing(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    policy = _policy(tmp_path, db)
    cases = [
        (("add", "--policy", "nope", "--key", "1", "--reason", "x", "--until", "2099-01-01"), "unknown policy"),
        (("add", "--policy", "accounts", "--key", "abc", "--reason", "x", "--until", "2099-01-01"), "not an integer"),
        (("add", "--policy", "accounts", "--key", "99", "--reason", "x", "--until", "2099-01-01"), "no row"),
        (("add", "--policy", "accounts", "--key", "1", "--reason", "x", "--until", "2020-01-01"), "not after today"),
        (("add", "--policy", "accounts", "--key", "1", "--reason", "x", "--until", "soon"), "expected a date"),
        (("add", "--policy", "accounts", "--key", "1", "--reason", " ", "--until", "2099-01-01"), "--reason"),
    ]
    for args, message in cases:
        r = hold(policy, *args)
        assert r.exit_code == 2, (args, r)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not sa.inspect(db.engine).has_table("retention_holds")
    assert not audit_path(policy).exists()


def test_the_text_preview_names_the_hold_registry(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    policy = _policy(tmp_path, db)
    assert add(policy, "accounts", "2").exit_code == 0
    preview = run_cli(policy, "--dry-run", fmt="text")
    assert preview.exit_code == 0, preview
    assert "1 row(s) past their term kept under a hold (1 by the hold registry)" in preview.stdout


def test_a_text_key_is_compared_as_text(db: TestDatabase, tmp_path: Path) -> None:
    md = sa.MetaData()
    vouchers = sa.Table("vouchers", md, sa.Column("code", sa.String(20), primary_key=True),
                        sa.Column("used_at", sa.DateTime, index=True))
    md.create_all(db.engine)
    with db.engine.begin() as conn:
        conn.execute(vouchers.insert(), [{"code": c, "used_at": OLD} for c in ("ABC-1", "ABC-10", "abc-2")])
    policy = write_policies(tmp_path / "policies.yaml", db.url, [
        {"name": "vouchers", "table": "vouchers", "after": "used_at", "retain": "1 year", "action": "delete",
         "max_fraction": 1.0}])
    assert add(policy, "vouchers", "ABC-1").exit_code == 0
    run = run_cli(policy)
    assert run.exit_code == 0, run
    assert run.policy("vouchers")["held_reasons"] == {"registry": 1}
    assert ids(db.engine, "SELECT code FROM vouchers") == {"ABC-1"}

"""Holds follow foreign keys: a row kept by one policy's `exclude` also keeps the rows of the
file's other policies that it references or that reference it (one link), unless a policy
says `holds: own`. Counted as `held` with the hold flag as the reason (`held_reasons`), in the
preview and the run alike; what stays is checked in plain SQL, on every database.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from helpers import hold_tables, ids, run_cli, snapshot, statements, write_policies

if TYPE_CHECKING:
    from conftest import TestDatabase

OLD = dt.datetime(2019, 5, 1, 12, 0)  # past every term below at AS_OF (2026-11-24)

ACCOUNTS = {"name": "accounts", "table": "accounts", "after": "left_at", "retain": "1 year", "action": "delete",
            "on_referenced": "detach", "exclude": {"legal_hold": True}, "max_fraction": 1.0}
INVOICES = {"name": "invoices", "table": "invoices", "after": "issued_at", "retain": "3 years", "action": "delete",
            "max_fraction": 1.0}
TICKETS = {"name": "tickets", "table": "tickets", "after": "closed_at", "retain": "1 year", "action": "delete",
           "exclude": {"legal_hold": True}, "max_fraction": 1.0}


def _schema(engine: sa.Engine) -> None:
    md = sa.MetaData()
    accounts, tickets = hold_tables(md)
    invoices = sa.Table("invoices", md, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=True, index=True),
                        sa.Column("issued_at", sa.DateTime, nullable=False, index=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [
            {"id": 1, "left_at": OLD, "legal_hold": True},   # held itself
            {"id": 2, "left_at": OLD, "legal_hold": False},  # held through its held ticket 200
            {"id": 3, "left_at": OLD, "legal_hold": None},   # a NULL flag is no hold: goes
        ])
        conn.execute(invoices.insert(), [
            {"id": 10, "account_id": 1, "issued_at": OLD},  # its account is held: held
            {"id": 20, "account_id": 2, "issued_at": OLD},  # account 2 is held only through a link: goes
            {"id": 30, "account_id": 3, "issued_at": OLD},  # goes
        ])
        conn.execute(tickets.insert(), [
            {"id": 100, "account_id": 1, "closed_at": OLD, "legal_hold": False},  # its account is held: held
            {"id": 200, "account_id": 2, "closed_at": OLD, "legal_hold": True},   # held itself
            {"id": 300, "account_id": 3, "closed_at": OLD, "legal_hold": False},  # goes
        ])


def test_a_hold_keeps_the_rows_linked_to_it_in_other_policies(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    policy = write_policies(tmp_path / "policies.yaml", db.url, [ACCOUNTS, INVOICES, TICKETS])
    held_rows = {
        "accounts": {1, 2}, "invoices": {10}, "tickets": {100, 200},
    }
    before = snapshot(db.engine)

    preview = run_cli(policy, "--dry-run")
    assert preview.exit_code == 0, preview
    run = run_cli(policy)
    assert run.exit_code == 0, run
    for result in (preview, run):
        accounts, invoices, tickets = (result.policy(n) for n in ("accounts", "invoices", "tickets"))
        assert (accounts["held"], accounts["due"]) == (2, 1)
        assert accounts["held_reasons"] == {"accounts.legal_hold": 1, "tickets.legal_hold": 1}
        assert (invoices["held"], invoices["due"]) == (1, 2)
        assert invoices["held_reasons"] == {"accounts.legal_hold": 1}
        assert (tickets["held"], tickets["due"]) == (2, 1)
        assert tickets["held_reasons"] == {"tickets.legal_hold": 1, "accounts.legal_hold": 1}

    after = snapshot(db.engine)
    for table, keep in held_rows.items():
        assert set(after[table]) == keep, table
        assert {k: after[table][k] for k in keep} == {k: before[table][k] for k in keep}, table  # untouched
    assert ids(db.engine, "SELECT id FROM accounts") == {1, 2}


def test_holds_own_opts_a_policy_out_of_linked_holds(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    own = {**INVOICES, "holds": "own"}
    policy = write_policies(tmp_path / "policies.yaml", db.url, [ACCOUNTS, own, TICKETS])
    # --force: without linked holds all three invoices are due, which the 100 % guard would stop.
    result = run_cli(policy, "--force")
    assert result.exit_code == 0, result
    assert (result.policy("invoices")["held"], result.policy("invoices")["applied"]) == (0, 3)
    assert ids(db.engine, "SELECT id FROM invoices") == set()
    # The other policies still follow links.
    assert ids(db.engine, "SELECT id FROM tickets") == {100, 200}


def test_a_hold_of_a_policy_not_selected_still_holds(db: TestDatabase, tmp_path: Path) -> None:
    """`--policy invoices`: the accounts policy does not run, but its hold is still a hold."""
    _schema(db.engine)
    policy = write_policies(tmp_path / "policies.yaml", db.url, [ACCOUNTS, INVOICES, TICKETS])
    result = run_cli(policy, "--policy", "invoices")
    assert result.exit_code == 0, result
    assert (result.policy("invoices")["held"], result.policy("invoices")["applied"]) == (1, 2)
    assert ids(db.engine, "SELECT id FROM invoices") == {10}


def _boundary_schema(engine: sa.Engine) -> None:
    """Rows at every edge of a linked hold: NULL flags, NULL links, a held ticket with no
    account (a NULL among the held tickets' accounts must hold no account), and an account held
    through two tickets (counted once)."""
    md = sa.MetaData()
    accounts, tickets = hold_tables(md)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [
            {"id": 1, "left_at": OLD, "legal_hold": True},   # held itself
            {"id": 2, "left_at": OLD, "legal_hold": False},  # held through its held ticket 200
            {"id": 3, "left_at": OLD, "legal_hold": None},   # its tickets are not held: goes
            {"id": 4, "left_at": OLD, "legal_hold": False},  # no ticket at all: goes
        ])
        conn.execute(tickets.insert(), [
            {"id": 100, "account_id": 1, "closed_at": OLD, "legal_hold": False},    # its account is held
            {"id": 200, "account_id": 2, "closed_at": OLD, "legal_hold": True},     # held itself
            {"id": 201, "account_id": 2, "closed_at": OLD, "legal_hold": True},     # a second held one: one hold
            {"id": 300, "account_id": 3, "closed_at": OLD, "legal_hold": False},    # goes
            {"id": 301, "account_id": 3, "closed_at": OLD, "legal_hold": None},     # goes
            {"id": 400, "account_id": None, "closed_at": OLD, "legal_hold": True},  # held, links nothing
            {"id": 401, "account_id": None, "closed_at": OLD, "legal_hold": False},  # no link: goes
        ])


def test_linked_holds_in_the_counts_match_plain_sql_at_their_boundary(db: TestDatabase, tmp_path: Path) -> None:
    """The counts read the whole range once; on MariaDB they test a linked hold as a list of the
    held rows' keys (`IN (SELECT ...)`, computed once per statement; the tally groups the rows
    by their hold conditions), the batches as an EXISTS per row (a list would be computed again
    for every batch). All must keep exactly the rows plain SQL says are held, and count each
    once."""
    _boundary_schema(db.engine)
    policy = write_policies(tmp_path / "policies.yaml", db.url, [ACCOUNTS, TICKETS])
    held_tickets = ids(db.engine, "SELECT t.id FROM tickets t WHERE t.legal_hold = TRUE OR EXISTS "
                                  "(SELECT 1 FROM accounts a WHERE a.id = t.account_id AND a.legal_hold = TRUE)")
    held_accounts = ids(db.engine, "SELECT a.id FROM accounts a WHERE a.legal_hold = TRUE OR EXISTS "
                                   "(SELECT 1 FROM tickets t WHERE t.account_id = a.id AND t.legal_hold = TRUE)")
    assert (held_tickets, held_accounts) == ({100, 200, 201, 400}, {1, 2})  # the data is what it says

    with statements() as seen:
        preview = run_cli(policy, "--dry-run", "--force")
        run = run_cli(policy, "--force")
    assert preview.exit_code == 0, preview
    assert run.exit_code == 0, run
    for result in (preview, run):
        tickets, accounts = result.policy("tickets"), result.policy("accounts")
        assert (tickets["held"], tickets["due"]) == (len(held_tickets), 7 - len(held_tickets))
        assert tickets["held_reasons"] == {"tickets.legal_hold": 3, "accounts.legal_hold": 1}
        assert (accounts["held"], accounts["due"]) == (len(held_accounts), 4 - len(held_accounts))
        assert accounts["held_reasons"] == {"accounts.legal_hold": 1, "tickets.legal_hold": 1}
    assert ids(db.engine, "SELECT id FROM tickets") == held_tickets
    assert ids(db.engine, "SELECT id FROM accounts") == held_accounts

    # Which form each statement used: the key list in counts on MariaDB only, never in a batch.
    listed = re.compile(r"IN \(SELECT \w+\.(account_id|id) FROM (tickets|accounts) AS \w+ WHERE \w+\.\1 IS NOT NULL")
    counts = [s for s in seen if ("sum(CASE" in s or "GROUP BY" in s) and "legal_hold" in s]
    batches = [s for s in seen if "FOR UPDATE" in s and "legal_hold" in s]
    assert counts
    assert not any(listed.search(s) for s in batches)
    if db.name == "mariadb":
        assert batches and all("EXISTS" in s for s in batches)
        assert all(listed.search(s) for s in counts), counts
        assert any("GROUP BY" in s for s in counts), counts
    else:
        assert not any(listed.search(s) for s in counts), counts


def test_two_policies_with_the_same_hold_are_one_test_per_link(db: TestDatabase, tmp_path: Path) -> None:
    """Two policies of the accounts table with the same `exclude`: the tickets they hold are the
    same, and each statement of the tickets policy tests the link once, not once per policy."""
    _boundary_schema(db.engine)
    again = {**ACCOUNTS, "name": "accounts_again", "action": "anonymise", "fields": {"left_at": "null"}}
    again.pop("on_referenced")
    policy = write_policies(tmp_path / "policies.yaml", db.url, [ACCOUNTS, again, TICKETS])
    held = ids(db.engine, "SELECT t.id FROM tickets t WHERE t.legal_hold = TRUE OR EXISTS "
                          "(SELECT 1 FROM accounts a WHERE a.id = t.account_id AND a.legal_hold = TRUE)")
    with statements() as seen:
        run = run_cli(policy, "--force", "--policy", "tickets")
    assert run.exit_code == 0, run
    tickets = run.policy("tickets")
    assert (tickets["held"], tickets["applied"]) == (len(held), 7 - len(held))
    assert tickets["held_reasons"] == {"tickets.legal_hold": 3, "accounts.legal_hold": 1}
    assert ids(db.engine, "SELECT id FROM tickets") == held
    # The batches' selection: the account's hold tested once per row.
    batches = [s for s in seen if "ORDER BY tickets.id" in s and "legal_hold" in s]
    assert batches
    assert all(len(re.findall(r"FROM accounts AS", s)) == 1 for s in batches), batches


def test_a_batch_repeats_its_key_bound_on_the_held_rows_pointing_at_it(db: TestDatabase, tmp_path: Path) -> None:
    """Batches of two accounts, accounts 3 and 7 held through their tickets: 3 is the first key
    after a batch's bound, 7 lies inside the next batch's walk. Each batch after the first tests
    the tickets' hold with the bound repeated on `tickets.account_id` (a linked row equal to a key
    past the bound is past it too: PostgreSQL then starts its walk of the tickets' index there,
    not at its start in every batch), and exactly the due accounts are anonymised."""
    md = sa.MetaData()
    accounts, tickets = hold_tables(md)
    accounts.append_column(sa.Column("name", sa.String(40)))
    md.create_all(db.engine)
    with db.engine.begin() as conn:
        conn.execute(accounts.insert(), [{"id": i, "left_at": OLD, "legal_hold": False, "name": f"n{i}"}
                                         for i in range(1, 11)])
        conn.execute(tickets.insert(), [
            {"id": 103, "account_id": 3, "closed_at": OLD, "legal_hold": True},
            {"id": 107, "account_id": 7, "closed_at": OLD, "legal_hold": True},
            {"id": 105, "account_id": 5, "closed_at": OLD, "legal_hold": False},  # no hold: 5 goes
        ])
    anonymise = {**ACCOUNTS, "action": "anonymise", "fields": {"name": "null"}, "batch_size": 2,
                 "keep": {"legal_hold": "the hold"}}
    anonymise.pop("on_referenced")
    policy = write_policies(tmp_path / "policies.yaml", db.url, [anonymise, TICKETS])
    with statements() as seen:
        run = run_cli(policy, "--force", "--policy", "accounts")
    assert run.exit_code == 0, run
    assert (run.policy("accounts")["held"], run.policy("accounts")["applied"]) == (2, 8)
    assert ids(db.engine, "SELECT id FROM accounts WHERE name IS NULL") == {1, 2, 4, 5, 6, 8, 9, 10}
    assert ids(db.engine, "SELECT id FROM accounts WHERE name IS NOT NULL") == {3, 7}
    batches = [s for s in seen if "ORDER BY accounts.id" in s and "FROM tickets AS" in s]
    bounded = [s for s in batches if re.search(r"tickets_\d+\.account_id > ", s)]
    assert len(batches) >= 4 and len(bounded) == len(batches) - 1, batches  # every batch but the first


def test_a_text_column_pointing_at_an_integer_key_gets_no_bound(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    """SQLite lets a TEXT column reference an integer key, and compares it with a number as text:
    `'10' > 9` is false. The held ticket of account 10 must still hold it in the batch after key
    9, so the bound is repeated only on integer columns."""
    db = sqlite_db
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE accounts (id INTEGER PRIMARY KEY, left_at DATETIME, "
                             "legal_hold BOOLEAN, name VARCHAR(40))")
        conn.exec_driver_sql("CREATE TABLE tickets (id INTEGER PRIMARY KEY, account_id TEXT REFERENCES accounts (id), "
                             "closed_at DATETIME, legal_hold BOOLEAN)")
        for i in range(1, 13):
            conn.exec_driver_sql("INSERT INTO accounts VALUES (?, ?, 0, ?)", (i, OLD.isoformat(" "), f"n{i}"))
        conn.exec_driver_sql("INSERT INTO tickets VALUES (110, 10, ?, 1)", (OLD.isoformat(" "),))
        assert conn.exec_driver_sql("SELECT typeof(account_id) FROM tickets").scalar_one() == "text"
    anonymise = {**ACCOUNTS, "action": "anonymise", "fields": {"name": "null"}, "batch_size": 3,
                 "keep": {"legal_hold": "the hold"}}
    anonymise.pop("on_referenced")
    policy = write_policies(tmp_path / "policies.yaml", db.url, [anonymise, TICKETS])
    run = run_cli(policy, "--force", "--policy", "accounts")
    assert run.exit_code == 0, run
    assert ids(db.engine, "SELECT id FROM accounts WHERE name IS NOT NULL") == {10}
    assert run.policy("accounts")["applied"] == 11

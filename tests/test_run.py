"""`retention run` end to end on the demo shop, on SQLite, PostgreSQL and MariaDB.

What the tool should do is computed here with plain SQL of the test's own (never with
retention's planning code), from the policy terms at the fixed moment 2026-11-24T03:00
(Europe/Amsterdam):

- accounts: deregistered_at <= 2024-11-24 03:00 and no legal hold; deferred (and then
  anonymised) while a not-due invoice or a not-removed ticket still points at them;
- invoices: 7 years from the end of the book year: issued before 2019-01-01;
- correspondence: tickets closed at or before 2024-11-24 03:00, status closed, no hold.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pendulum
import sqlalchemy as sa
from helpers import (
    POLICY_KEYS,
    RUN_KEYS,
    SHOP_POLICIES,
    SHOP_TODAY,
    ids,
    parse_csv,
    rows_by_id,
    run_cli,
    snapshot,
    unchanged_witness,
    write_policies,
)

from retention.demo import create_shop, shop_metadata

if TYPE_CHECKING:
    from conftest import TestDatabase

CUT = "2024-11-24 03:00:00.000000"  # 24 months / 2 years before AS_OF, local wall clock
# Holds follow links (docs/policy-file.md): an account under legal hold holds its invoices and
# tickets; a ticket under legal hold holds its account.
ACCOUNT_HELD = "(a.legal_hold OR EXISTS (SELECT 1 FROM tickets ht WHERE ht.account_id = a.id AND ht.legal_hold))"
ACCOUNT_DUE = f"a.deregistered_at <= '{CUT}' AND NOT {ACCOUNT_HELD}"
HELD_ACCOUNT_OF = "EXISTS (SELECT 1 FROM accounts ha WHERE ha.id = {}.account_id AND ha.legal_hold)"
TICKET_PAST = f"t.status = 'closed' AND t.closed_at IS NOT NULL AND t.closed_at <= '{CUT}'"
TICKET_HELD = f"(t.legal_hold OR {HELD_ACCOUNT_OF.format('t')})"
TICKET_REMOVED = f"{TICKET_PAST} AND NOT {TICKET_HELD}"
INVOICE_PAST = "i.issued_at < '2019-01-01'"
INVOICE_DUE = f"{INVOICE_PAST} AND NOT {HELD_ACCOUNT_OF.format('i')}"
ACCOUNT_FIELDS = ("first_name", "last_name", "email", "phone", "street", "postcode", "city", "birth_date")


def build_shop(db: TestDatabase, tmp_path: Path, *, purge: str | None = "none",
               policies: list[dict[str, Any]] | None = None) -> Path:
    create_shop(db.engine, accounts=400, seed=7, today=SHOP_TODAY)
    add_old_customers(db.engine)
    return write_policies(tmp_path / "policies.yaml", db.url, policies or SHOP_POLICIES, purge=purge)


def add_old_customers(engine: sa.Engine) -> None:
    """Two customers of the shop's first years, whose every invoice and ticket has expired too.

    The demo's growth curve leaves almost nothing that old, yet "the account goes with its
    orders in the same run as its last invoice" is what must be shown.
    """
    md = shop_metadata()
    t = md.tables
    dtm = dt.datetime
    with engine.begin() as conn:
        for n, account in enumerate((90001, 90002)):
            conn.execute(t["accounts"].insert(), [{
                "id": account, "first_name": "Oud", "last_name": f"Klant{n}", "email": f"oud{n}@example.nl",
                "phone": "010-1234567", "street": "Oude Gracht 1", "postcode": "3511 AA", "city": "Utrecht",
                "birth_date": dt.date(1950, 6, 15), "created_at": dtm(2016, 12, 1, 9),
                "deregistered_at": dtm(2018, 3, 1, 10), "legal_hold": False,
            }])
            for k in range(2):
                order = 90000 + 10 * n + k
                conn.execute(t["orders"].insert(), [{
                    "id": order, "account_id": account, "ordered_at": dtm(2017, 5, 2 + k, 10), "status": "delivered",
                    "total_cents": 1000, "shipping_street": "Oude Gracht 1", "shipping_postcode": "3511 AA",
                    "shipping_city": "Utrecht",
                }])
                conn.execute(t["invoices"].insert(), [{
                    "id": order, "account_id": account, "number": f"OLD-{order}", "issued_at": dt.date(2017, 5, 2 + k),
                    "customer_name": f"Oud Klant{n}", "billing_street": "Oude Gracht 1",
                    "billing_postcode": "3511 AA", "billing_city": "Utrecht", "total_cents": 1000, "vat_cents": 174,
                }])
                conn.execute(t["invoice_lines"].insert(), [
                    {"id": order * 10 + i, "invoice_id": order, "description": "Rollator", "quantity": 1,
                     "unit_price_cents": 500, "vat_rate": 21} for i in range(2)
                ])
            conn.execute(t["tickets"].insert(), [{
                "id": account, "account_id": account, "subject": "Opzeggen", "status": "closed",
                "opened_at": dtm(2018, 2, 20, 9), "closed_at": dtm(2018, 2, 21, 9),
                "last_activity_at": dtm(2018, 2, 21, 9), "legal_hold": False,
            }])
            conn.execute(t["ticket_messages"].insert(), [{
                "id": account, "ticket_id": account, "sent_at": dtm(2018, 2, 20, 9), "sender": "customer",
                "body": "Graag mijn account opheffen.",
            }])


@dataclass
class Expected:
    accounts_due: set[int]
    accounts_held: set[int]
    accounts_deferred: set[int]
    accounts_deleted: set[int]
    orders_deleted: set[int]
    orders_kept_of_deferred: set[int]
    invoices_due: set[int]
    invoices_held: set[int]
    invoice_lines_deleted: set[int]
    tickets_due: set[int]
    tickets_held: set[int]
    messages_deleted: set[int]

    def counts(self, policy: str) -> dict[str, Any]:
        if policy == "accounts":
            return {"due": len(self.accounts_due), "held": len(self.accounts_held),
                    "deferred": len(self.accounts_deferred), "cascaded": {"orders": len(self.orders_deleted)}}
        if policy == "invoices":
            return {"due": len(self.invoices_due), "held": len(self.invoices_held), "deferred": 0,
                    "cascaded": {"invoice_lines": len(self.invoice_lines_deleted)}}
        return {"due": len(self.tickets_due), "held": len(self.tickets_held), "deferred": 0,
                "cascaded": {"ticket_messages": len(self.messages_deleted)}}


def expected(engine: sa.Engine, tickets_removed: bool = True) -> Expected:
    """What the shipped policies must do at AS_OF, by plain SQL.

    ``tickets_removed=False``: the correspondence policy does not run (blocked), so every
    ticket still references its account.
    """
    staying_ticket = f"NOT ({TICKET_REMOVED})" if tickets_removed else "1 = 1"
    due = ids(engine, f"SELECT a.id FROM accounts a WHERE {ACCOUNT_DUE}")
    held = ids(engine, f"SELECT a.id FROM accounts a WHERE a.deregistered_at <= '{CUT}' AND {ACCOUNT_HELD}")
    deferred = ids(engine, f"""
        SELECT a.id FROM accounts a
        WHERE {ACCOUNT_DUE} AND (
            EXISTS (SELECT 1 FROM invoices i WHERE i.account_id = a.id AND NOT ({INVOICE_DUE}))
            OR EXISTS (SELECT 1 FROM tickets t WHERE t.account_id = a.id AND {staying_ticket}))
    """)
    deleted = due - deferred
    orders = {r[0]: r[1] for r in _rows(engine, "SELECT id, account_id FROM orders")}
    invoices_due = ids(engine, f"SELECT i.id FROM invoices i WHERE {INVOICE_DUE}")
    lines = {r[0]: r[1] for r in _rows(engine, "SELECT id, invoice_id FROM invoice_lines")}
    tickets_due = ids(engine, f"SELECT t.id FROM tickets t WHERE {TICKET_REMOVED}")
    tickets_held = ids(engine, f"SELECT t.id FROM tickets t WHERE {TICKET_PAST} AND {TICKET_HELD}")
    invoices_held = ids(engine, f"SELECT i.id FROM invoices i WHERE {INVOICE_PAST} AND {HELD_ACCOUNT_OF.format('i')}")
    messages = {r[0]: r[1] for r in _rows(engine, "SELECT id, ticket_id FROM ticket_messages")}
    return Expected(
        accounts_due=due, accounts_held=held, accounts_deferred=deferred, accounts_deleted=deleted,
        orders_deleted={o for o, a in orders.items() if a in deleted},
        orders_kept_of_deferred={o for o, a in orders.items() if a in deferred},
        invoices_due=invoices_due, invoices_held=invoices_held,
        invoice_lines_deleted={x for x, i in lines.items() if i in invoices_due},
        tickets_due=tickets_due, tickets_held=tickets_held,
        messages_deleted={m for m, t in messages.items() if t in tickets_due},
    )


def _rows(engine: sa.Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql)))


def _plausible(exp: Expected) -> None:
    """The demo shop must give every rule real work, or the comparisons prove little."""
    assert len(exp.accounts_due) >= 20
    assert exp.accounts_held
    assert len(exp.accounts_deferred) >= 3
    assert len(exp.accounts_deleted) >= 10
    assert {90000, 90001, 90010, 90011} <= exp.orders_deleted and exp.orders_kept_of_deferred
    assert exp.invoices_due and exp.invoice_lines_deleted
    assert len(exp.tickets_due) >= 20 and exp.tickets_held and exp.messages_deleted


def _purge_held_back_by_another_database(db: TestDatabase, run: Any) -> bool:
    """PostgreSQL's VACUUM FULL waits for old transactions in *every* database of the server: on a
    server shared with other test runs the default (thorough) purge may end `pending` (exit 5)
    through no fault of this run. Accepted only when exactly that, and all policies were done."""
    purges = run.data.get("purge", [])
    return (
        db.name == "postgresql" and run.exit_code == 5 and run.data.get("status") == "purge pending"
        and all(p["status"] == "ok" for p in run.data["policies"])
        and len(purges) == 1 and purges[0]["result"] == "pending" and "database '" in purges[0]["detail"]
    )


def _assert_counts(run: Any, exp: Expected) -> None:
    for name in ("accounts", "invoices", "correspondence"):
        got = run.policy(name)
        want = exp.counts(name)
        assert {k: got[k] for k in want} == want, name


# ------------------------------------------------------------------------------------------


def test_dry_run_and_real_run_counts_equal_plain_sql_and_dry_run_changes_nothing(
    db: TestDatabase, tmp_path: Path
) -> None:
    """Counts per policy (due, held, deferred, cascaded) equal independent SQL, in the preview and
    in the real run; the preview has the contract's JSON keys and writes nothing; its `due` is the
    real run's `applied + deferred`."""
    policy_file = build_shop(db, tmp_path)
    exp = expected(db.engine)
    _plausible(exp)
    before = unchanged_witness(db)

    dry = run_cli(policy_file, "--dry-run")
    assert dry.exit_code == 0, dry
    assert set(dry.data) >= RUN_KEYS
    assert dry.data["dry_run"] is True
    assert dry.data["as_of"] == "2026-11-24T03:00:00+01:00"
    assert [p["name"] for p in dry.data["policies"]] and len(dry.data["policies"]) == 3
    for p in dry.data["policies"]:
        assert set(p) >= POLICY_KEYS, p
        assert p["applied"] == 0
        assert p["status"] == "ok"
    assert dry.policy("accounts")["cutoff"] == "2024-11-24T03:00:00+01:00"
    assert dry.policy("correspondence")["cutoff"] == "2024-11-24T03:00:00+01:00"
    assert dry.policy("invoices")["cutoff"].startswith("2018-12-31T23:59:59")
    _assert_counts(dry, exp)
    assert unchanged_witness(db) == before, "the dry run changed the database"

    real = run_cli(policy_file)
    assert real.exit_code == 0, real
    assert real.data["dry_run"] is False
    _assert_counts(real, exp)
    # applied = deleted + anonymised (CONTRACT.md section 3): the deferred accounts are anonymised.
    accounts = real.policy("accounts")
    assert (accounts["deleted"], accounts["anonymised"]) == (len(exp.accounts_deleted), len(exp.accounts_deferred))
    assert accounts["applied"] == len(exp.accounts_deleted) + len(exp.accounts_deferred)
    assert real.policy("invoices")["applied"] == real.policy("invoices")["deleted"] == len(exp.invoices_due)
    assert real.policy("correspondence")["applied"] == len(exp.tickets_due)
    for name in ("accounts", "invoices", "correspondence"):
        d, r = dry.policy(name), real.policy(name)
        assert d["due"] == r["deleted"] + r["deferred"], name
        assert (d["to_delete"], d["to_anonymise"]) == (r["deleted"], r["anonymised"]), name
        assert d["cascaded"] == r["cascaded"], name
        assert r["status"] == "ok"
    # The preview's sample: the first keys the run changes (deferred accounts are anonymised).
    changed = {"accounts": exp.accounts_deleted | exp.accounts_deferred, "invoices": exp.invoices_due,
               "correspondence": exp.tickets_due}
    for name, keys in changed.items():
        assert dry.policy(name)["sample_keys"] == sorted(keys)[:5], name
    # Again at the same moment: the deferred accounts are still due, but already anonymised, so
    # nothing would change and the sample is empty.
    again = run_cli(policy_file, "--dry-run")
    assert again.policy("accounts")["deferred"] == len(exp.accounts_deferred) > 0
    assert again.policy("accounts")["sample_keys"] == []


def test_real_run_removes_every_due_row_and_changes_nothing_else(db: TestDatabase, tmp_path: Path) -> None:
    """After the run (default purge level): no due row is left, rows inside their term and held
    rows are byte-for-byte unchanged, deferred accounts are anonymised (their invoices keep the
    billing data), orders go with deleted accounts and stay with deferred ones; a second run right
    after changes nothing and applies 0."""
    policy_file = build_shop(db, tmp_path, purge=None)
    exp = expected(db.engine)
    _plausible(exp)
    before = snapshot(db.engine)
    accounts_before = rows_by_id(db.engine, "accounts")

    run = run_cli(policy_file)
    assert run.exit_code == 0 or _purge_held_back_by_another_database(db, run), run
    after = snapshot(db.engine)

    # No due row is left: the only due accounts still there are the deferred ones.
    assert ids(db.engine, f"SELECT a.id FROM accounts a WHERE {ACCOUNT_DUE}") \
        == exp.accounts_deferred
    assert ids(db.engine, f"SELECT i.id FROM invoices i WHERE {INVOICE_DUE}") == set()
    assert ids(db.engine, f"SELECT t.id FROM tickets t WHERE {TICKET_REMOVED}") == set()

    removed = {
        "accounts": exp.accounts_deleted, "orders": exp.orders_deleted, "invoices": exp.invoices_due,
        "invoice_lines": exp.invoice_lines_deleted, "tickets": exp.tickets_due,
        "ticket_messages": exp.messages_deleted,
    }
    for table, rows in before.items():
        gone = removed[table]
        assert set(after[table]) == set(rows) - gone, table
        for key, row in rows.items():
            if key in gone or (table == "accounts" and key in exp.accounts_deferred):
                continue
            assert after[table][key] == row, f"{table} {key} changed"

    # Held rows are untouched (also covered above; named here because it matters).
    for key in exp.accounts_held:
        assert after["accounts"][key] == before["accounts"][key]
    for key in exp.tickets_held:
        assert after["tickets"][key] == before["tickets"][key]

    # Deferred accounts: still there, anonymised with the policy's fields.
    accounts_after = rows_by_id(db.engine, "accounts")
    assert exp.accounts_deferred <= set(accounts_after)
    for key in exp.accounts_deferred:
        old, new = accounts_before[key], accounts_after[key]
        assert new["street"] == "[verwijderd]"
        assert new["phone"] is None and new["city"] is None
        assert new["email"] != old["email"] and "@" in new["email"]
        if old["birth_date"] is not None:
            assert new["birth_date"] == dt.date(old["birth_date"].year, 1, 1)
        if old["postcode"] is not None:
            assert new["postcode"] == old["postcode"][:4] and len(new["postcode"]) == 4
        for column in ("id", "created_at", "deregistered_at", "legal_hold"):
            assert new[column] == old[column], column
    assert len({accounts_after[k]["email"] for k in exp.accounts_deferred}) > 1, "one constant fake email"

    # Invoices of deferred accounts keep customer name and billing address.
    kept_invoices = ids(db.engine, "SELECT id FROM invoices WHERE account_id IN ({})".format(
        ", ".join(str(k) for k in sorted(exp.accounts_deferred))))
    assert kept_invoices
    for key in kept_invoices:
        assert after["invoices"][key] == before["invoices"][key]

    # Orders: gone with deleted accounts, kept with deferred ones.
    assert not exp.orders_deleted & set(after["orders"])
    assert exp.orders_kept_of_deferred <= set(after["orders"])

    # A second run right after: nothing left to do, nothing changes.
    again = run_cli(policy_file)
    assert again.exit_code == 0, again
    for p in again.data["policies"]:
        assert p["applied"] == 0, p
        assert p["cascaded"] in ({}, {k: 0 for k in p["cascaded"]}), p
    assert again.policy("accounts")["deferred"] == len(exp.accounts_deferred)
    assert snapshot(db.engine) == after


def test_max_fraction_blocks_that_policy_only_and_force_overrides(db: TestDatabase, tmp_path: Path) -> None:
    """correspondence with max_fraction 0.01: exit 3, that policy `blocked` and none of its rows
    touched (its tickets then still hold their accounts), the other policies done; --force runs it."""
    policies = copy.deepcopy(SHOP_POLICIES)
    policies[2]["max_fraction"] = 0.01
    policy_file = build_shop(db, tmp_path, policies=policies)
    exp_blocked = expected(db.engine, tickets_removed=False)
    exp_full = expected(db.engine)
    assert exp_blocked.accounts_deferred > exp_full.accounts_deferred
    tickets_before = snapshot(db.engine, ["tickets", "ticket_messages"])

    blocked = run_cli(policy_file)
    assert blocked.exit_code == 3, blocked
    corr = blocked.policy("correspondence")
    assert corr["status"] == "blocked"
    assert corr["applied"] == 0 and corr["due"] == len(exp_full.tickets_due)
    assert snapshot(db.engine, ["tickets", "ticket_messages"]) == tickets_before
    assert blocked.policy("invoices")["status"] == "ok"
    assert blocked.policy("invoices")["applied"] == len(exp_full.invoices_due)
    acc = blocked.policy("accounts")
    assert acc["status"] == "ok"
    assert acc["deferred"] == len(exp_blocked.accounts_deferred)
    assert acc["deleted"] == len(exp_blocked.accounts_deleted)
    assert acc["applied"] == acc["deleted"] + acc["anonymised"] == len(exp_blocked.accounts_due)
    assert ids(db.engine, "SELECT id FROM accounts") >= exp_blocked.accounts_deferred

    forced = run_cli(policy_file, "--force")
    assert forced.exit_code == 0, forced
    assert forced.policy("correspondence")["status"] == "ok"
    assert forced.policy("correspondence")["applied"] == len(exp_full.tickets_due)
    assert ids(db.engine, f"SELECT t.id FROM tickets t WHERE {TICKET_REMOVED}") == set()
    # Accounts that only their tickets held are removable now.
    assert forced.policy("accounts")["applied"] == len(exp_blocked.accounts_deferred - exp_full.accounts_deferred)
    assert ids(db.engine, f"SELECT a.id FROM accounts a WHERE {ACCOUNT_DUE}") \
        == exp_full.accounts_deferred


def test_future_as_of_refused_for_a_real_run_allowed_for_a_dry_run(db: TestDatabase, tmp_path: Path) -> None:
    """A real run with --as-of in the future exits 2 and touches nothing; a dry run may look ahead."""
    policy_file = build_shop(db, tmp_path)
    future = pendulum.now("Europe/Amsterdam").add(days=40).format("YYYY-MM-DD[T]HH:mm:ss")
    before = unchanged_witness(db)

    refused = run_cli(policy_file, as_of=future)
    assert refused.exit_code == 2, refused
    assert "future" in refused.stderr
    assert unchanged_witness(db) == before

    # --force only so that a much later test date cannot trip the share guard.
    preview = run_cli(policy_file, "--dry-run", "--force", as_of=future)
    assert preview.exit_code == 0, preview
    assert preview.data["dry_run"] is True
    assert preview.data["as_of"].startswith(future)
    now_due = expected(db.engine).counts("accounts")["due"]
    assert preview.policy("accounts")["due"] >= now_due
    assert unchanged_witness(db) == before


def test_csv_has_one_row_per_policy_and_text_shows_basis_and_cutoff(db: TestDatabase, tmp_path: Path) -> None:
    """`--format csv`: a header and one row per policy with the same counts as JSON; `--format
    text`: each policy's basis and cut-off."""
    policy_file = build_shop(db, tmp_path)
    exp = expected(db.engine)

    rows = parse_csv(run_cli(policy_file, "--dry-run", fmt="csv").stdout)
    assert sorted(r["policy"] for r in rows) == ["accounts", "correspondence", "invoices"]
    by_name = {r["policy"]: r for r in rows}
    for name in ("accounts", "invoices", "correspondence"):
        want = exp.counts(name)
        assert int(by_name[name]["due"]) == want["due"]
        assert int(by_name[name]["held"]) == want["held"]
        assert int(by_name[name]["deferred"]) == want["deferred"]
        assert by_name[name]["applied"] == "0"
    assert by_name["accounts"]["cutoff"] == "2024-11-24T03:00:00+01:00"

    text = run_cli(policy_file, "--dry-run", fmt="text")
    assert text.exit_code == 0, text
    for policy in SHOP_POLICIES:
        assert policy["basis"] in text.stdout
    assert "cut-off" in text.stdout
    assert "2024-11-24 03:00:00" in text.stdout  # accounts and correspondence
    assert "2018-12-31 23:59:59" in text.stdout  # invoices: end of the 2018 book year
    assert f"due {len(exp.accounts_due)}," in text.stdout


# -- foreign keys that the database does not enforce ------------------------------------------

def _unenforced_sqlite(db: TestDatabase) -> sa.Engine:
    """An engine on the test database without `PRAGMA foreign_keys` (SQLite's default)."""
    db.dispose()
    engine = sa.create_engine(db.url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
    return engine


def _customers_schema(engine: sa.Engine) -> None:
    md = sa.MetaData()
    sa.Table("customers", md, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("email", sa.String(100)), sa.Column("left_at", sa.DateTime))
    sa.Table("bills", md, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")),
             sa.Column("issued_on", sa.Date, nullable=False))
    md.create_all(engine)


FK_POLICIES: list[dict[str, Any]] = [
    {"name": "customers", "table": "customers", "after": "left_at", "retain": "24 months",
     "action": "delete", "max_fraction": 1.0},
    {"name": "bills", "table": "bills", "after": "issued_on", "retain": "7 years", "align": "end_of_year",
     "action": "delete", "max_fraction": 1.0},
]


def test_referenced_row_is_deferred_by_reflection_not_by_the_pragma(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    """SQLite without PRAGMA foreign_keys: a due customer referenced by a not-due bill is deferred
    (reason: bills), not deleted; one referenced only by a due bill goes with it; an unreferenced
    one goes."""
    engine = _unenforced_sqlite(sqlite_db)
    _customers_schema(engine)
    left = dt.datetime(2020, 5, 1, 12, 0)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO customers (id, email, left_at) VALUES "
                             "(1, 'a@x.nl', :t), (2, 'b@x.nl', :t), (3, 'c@x.nl', :t), (4, 'd@x.nl', NULL)"),
                     {"t": left})
        conn.execute(sa.text("INSERT INTO bills (id, customer_id, issued_on) VALUES "
                             "(10, 1, '2024-03-01'), (11, 3, '2017-06-01'), (12, 4, '2024-03-01')"))
    engine.dispose()
    policy_file = write_policies(tmp_path / "policies.yaml", sqlite_db.url, FK_POLICIES)

    dry = run_cli(policy_file, "--dry-run")
    assert dry.exit_code == 0, dry
    assert (dry.policy("customers")["due"], dry.policy("customers")["deferred"]) == (3, 1)
    assert dry.policy("customers")["deferred_reasons"] == {"bills": 1}
    assert dry.policy("bills")["due"] == 1

    real = run_cli(policy_file)
    assert real.exit_code == 0, real
    assert (real.policy("customers")["applied"], real.policy("customers")["deferred"]) == (2, 1)
    engine = sa.create_engine(sqlite_db.url)
    try:
        assert ids(engine, "SELECT id FROM customers") == {1, 4}
        assert ids(engine, "SELECT id FROM bills") == {10, 12}
    finally:
        engine.dispose()


def test_declared_foreign_key_without_violations_deletes_every_due_row(
    sqlite_db: TestDatabase, tmp_path: Path
) -> None:
    """A declared FK that no due row is held by (children all point at kept parents): every due
    parent is deleted, none deferred, the children untouched."""
    engine = _unenforced_sqlite(sqlite_db)
    _customers_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO customers (id, email, left_at) VALUES "
                             "(1, 'a@x.nl', '2020-01-01 00:00:00.000000'), (2, 'b@x.nl', '2021-06-30 08:00:00.000000'),"
                             " (3, 'c@x.nl', NULL), (4, 'd@x.nl', '2026-01-01 00:00:00.000000')"))
        conn.execute(sa.text("INSERT INTO bills (id, customer_id, issued_on) VALUES "
                             "(10, 3, '2024-03-01'), (11, 4, '2025-06-01')"))
    engine.dispose()
    policy_file = write_policies(tmp_path / "policies.yaml", sqlite_db.url, FK_POLICIES)

    real = run_cli(policy_file)
    assert real.exit_code == 0, real
    p = real.policy("customers")
    assert (p["due"], p["deferred"], p["applied"]) == (2, 0, 2)
    engine = sa.create_engine(sqlite_db.url)
    try:
        assert ids(engine, "SELECT id FROM customers") == {3, 4}
        assert ids(engine, "SELECT id FROM bills") == {10, 11}
    finally:
        engine.dispose()

"""The demo shop (retention.demo): schema, determinism, integrity, edge cases, calibration.

SQLite files only; the other databases are exercised through create_shop by the run tests.
Plain SQL on the stored text: SQLAlchemy stores a DateTime on SQLite as
'YYYY-MM-DD HH:MM:SS.ffffff' and a Date as 'YYYY-MM-DD', so string comparison is date order.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from helpers import invoke

from retention import demo
from retention.demo import TABLES, DemoSummary, build_demo, create_shop, shop_metadata
from retention.errors import InvalidInput

TODAY = dt.date(2026, 11, 24)
MIDNIGHT = "2026-11-24 00:00:00.000000"  # nothing may be at or after the start of today
START = "2016-11-24"  # ten years before TODAY
ACCOUNTS = 2_000

# The terms of policies.yaml at TODAY (plain SQL, independent of the planning code).
ACCOUNT_CUT = "2024-11-24 00:00:00.000000"  # deregistered_at <= today - 24 months
INVOICE_CUT = "2019-01-01"  # issued before 1 January of (today.year - 7)
TICKET_CUT = "2024-11-24 00:00:00.000000"  # last_activity_at <= today - 2 years

DATETIME_COLUMNS = {
    "accounts": ("created_at", "deregistered_at"),
    "orders": ("ordered_at",),
    "tickets": ("opened_at", "closed_at", "last_activity_at"),
    "ticket_messages": ("sent_at",),
}
FOREIGN_KEYS = [  # (child, column, parent)
    ("orders", "account_id", "accounts"),
    ("invoices", "account_id", "accounts"),
    ("invoice_lines", "invoice_id", "invoices"),
    ("tickets", "account_id", "accounts"),
    ("ticket_messages", "ticket_id", "tickets"),
]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoSummary]:
    path = tmp_path_factory.mktemp("demo") / "shop.db"
    seen: list[int] = []
    summary = build_demo(path, accounts=ACCOUNTS, seed=42, today=TODAY, progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == ACCOUNTS
    return path, summary


@pytest.fixture(scope="module")
def db(shop: tuple[Path, DemoSummary]) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(shop[0])
    yield conn
    conn.close()


def one(db: sqlite3.Connection, sql: str) -> Any:
    return db.execute(sql).fetchone()[0]


def count(db: sqlite3.Connection, table: str, where: str) -> int:
    return int(one(db, f"SELECT count(*) FROM {table} WHERE {where}"))


def per_parent(db: sqlite3.Connection, parent: str, child: str, column: str) -> set[int]:
    """The distinct numbers of child rows per parent row (0 included)."""
    sql = f"SELECT count(c.id) FROM {parent} p LEFT JOIN {child} c ON c.{column} = p.id GROUP BY p.id"
    return {n for (n,) in db.execute(sql)}


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in TABLES}


# ----------------------------------------------------------------------------- API and schema


def test_summary_counts_match_the_tables(shop: tuple[Path, DemoSummary], db: sqlite3.Connection) -> None:
    path, summary = shop
    assert summary.path == str(path)
    assert summary.url.startswith("sqlite:///") and summary.url.endswith("shop.db")
    assert (summary.seed, summary.today) == (42, TODAY)
    assert list(summary.counts) == list(TABLES)
    for table, n in summary.counts.items():
        assert one(db, f"SELECT count(*) FROM {table}") == n, table
    assert summary.counts["accounts"] == ACCOUNTS
    assert summary.total_rows == sum(summary.counts.values())
    assert all(n > 0 for n in summary.counts.values())


def test_schema_is_the_one_the_policies_name(shop: tuple[Path, DemoSummary]) -> None:
    assert shop_metadata() is not shop_metadata()
    engine = sa.create_engine(f"sqlite:///{shop[0]}")
    insp = sa.inspect(engine)
    assert set(insp.get_table_names()) == set(TABLES)
    md = shop_metadata()
    for name in TABLES:
        reflected = {c["name"]: c for c in insp.get_columns(name)}
        assert list(reflected) == list(md.tables[name].columns.keys()), name
        for col in md.tables[name].columns:
            assert reflected[col.name]["nullable"] == col.nullable, (name, col.name)
    cols = {c["name"]: c for c in insp.get_columns("accounts")}
    assert isinstance(cols["deregistered_at"]["type"], sa.DateTime)
    assert isinstance(cols["birth_date"]["type"], sa.Date)
    issued = next(c for c in insp.get_columns("invoices") if c["name"] == "issued_at")
    assert isinstance(issued["type"], sa.Date) and not isinstance(issued["type"], sa.DateTime)
    indexes = {(t, tuple(ix["column_names"])) for t in TABLES for ix in insp.get_indexes(t)}
    assert {
        ("accounts", ("deregistered_at",)),
        ("orders", ("account_id",)),
        ("invoices", ("account_id",)),
        ("invoices", ("issued_at",)),
        ("invoice_lines", ("invoice_id",)),
        ("tickets", ("account_id",)),
        ("tickets", ("closed_at",)),
        ("tickets", ("last_activity_at",)),
        ("orders", ("ordered_at",)),
        ("ticket_messages", ("ticket_id",)),
    } <= indexes
    assert "ix_accounts_deregistered_at" in {ix["name"] for ix in insp.get_indexes("accounts")}
    unique = [u["column_names"] for u in insp.get_unique_constraints("invoices")]
    assert ["number"] in unique
    fks = {
        (t, tuple(fk["constrained_columns"]), fk["referred_table"]) for t in TABLES for fk in insp.get_foreign_keys(t)
    }
    assert fks == {(c, (col,), p) for c, col, p in FOREIGN_KEYS}
    engine.dispose()


def test_sqlite_values_are_stored_exactly_as_sqlalchemy_stores_them(shop: tuple[Path, DemoSummary]) -> None:
    """The SQLite fast path writes text itself; it must equal SQLAlchemy's own bind processing,
    or comparisons with bound parameters (the policies' cut-offs) would be off."""
    dialect = sa.create_engine("sqlite://").dialect
    as_datetime = dialect.type_descriptor(sa.DateTime()).bind_processor(dialect)
    as_date = dialect.type_descriptor(sa.Date()).bind_processor(dialect)
    assert as_datetime is not None and as_date is not None
    engine = sa.create_engine(f"sqlite:///{shop[0]}")
    t = shop_metadata().tables
    with engine.connect() as conn:
        tickets = t["tickets"]
        typed = conn.execute(sa.select(tickets.c.closed_at, tickets.c.opened_at).order_by(tickets.c.id).limit(50)).all()
        raw = conn.exec_driver_sql("SELECT closed_at, opened_at FROM tickets ORDER BY id LIMIT 50").all()
        issued = conn.execute(sa.select(t["invoices"].c.issued_at).order_by(t["invoices"].c.id).limit(50)).all()
        issued_raw = conn.exec_driver_sql("SELECT issued_at FROM invoices ORDER BY id LIMIT 50").all()
        hold = conn.exec_driver_sql("SELECT DISTINCT legal_hold FROM accounts").scalars().all()
    engine.dispose()
    for (closed, opened), (closed_raw, opened_raw) in zip(typed, raw, strict=True):
        assert as_datetime(opened) == opened_raw
        assert (closed is None and closed_raw is None) or as_datetime(closed) == closed_raw
    assert [as_date(d) for (d,) in issued] == [d for (d,) in issued_raw]
    assert set(hold) == {0, 1}


# ----------------------------------------------------------------------------- determinism


def test_same_seed_and_today_give_identical_rows_other_seed_or_today_do_not(tmp_path: Path) -> None:
    a = build_demo(tmp_path / "a.db", accounts=300, seed=7, today=TODAY)
    b = build_demo(tmp_path / "b.db", accounts=300, seed=7, today=TODAY)
    c = build_demo(tmp_path / "c.db", accounts=300, seed=8, today=TODAY)
    d = build_demo(tmp_path / "d.db", accounts=300, seed=7, today=dt.date(2025, 3, 1))
    rows_a = dump(tmp_path / "a.db")
    assert a.counts == b.counts and rows_a == dump(tmp_path / "b.db")
    rows_c = dump(tmp_path / "c.db")
    assert rows_c["accounts"] != rows_a["accounts"] and rows_c["ticket_messages"] != rows_a["ticket_messages"]
    assert c.counts["accounts"] == 300
    assert dump(tmp_path / "d.db")["accounts"] != rows_a["accounts"]
    assert d.today == dt.date(2025, 3, 1)


def test_create_shop_on_an_engine_and_tiny_sizes(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'e.db'}")
    summary = create_shop(engine, accounts=5, seed=1, today=TODAY)
    assert summary.counts["accounts"] == 5 and summary.path is not None
    # A database that already holds shop rows is refused, not appended to.
    with pytest.raises(InvalidInput, match="already has shop data"):
        create_shop(engine, accounts=5, seed=1, today=TODAY)
    engine.dispose()
    empty = build_demo(tmp_path / "empty.db", accounts=0, today=TODAY)
    assert set(empty.counts.values()) == {0}


# ----------------------------------------------------------------------------- integrity


# Each query lists rows that break a rule: all must come back empty.
BROKEN_RULES = {
    **{
        f"orphan {child}.{column}": f"""
            SELECT c.id FROM {child} c LEFT JOIN {parent} p ON p.id = c.{column}
            WHERE c.{column} IS NOT NULL AND p.id IS NULL"""
        for child, column, parent in FOREIGN_KEYS
    },
    "invoice without lines": """
        SELECT i.id FROM invoices i WHERE NOT EXISTS (SELECT 1 FROM invoice_lines l WHERE l.invoice_id = i.id)""",
    "ticket whose first message is not at its opening": """
        SELECT t.id FROM tickets t
        WHERE t.opened_at IS NOT (SELECT min(sent_at) FROM ticket_messages m WHERE m.ticket_id = t.id)""",
    "deregistered before created": "SELECT id FROM accounts WHERE deregistered_at <= created_at",
    "order outside the customer's active period": """
        SELECT o.id FROM orders o JOIN accounts a ON a.id = o.account_id
        WHERE o.ordered_at < a.created_at OR o.ordered_at > a.deregistered_at""",
    "ticket opened outside the customer's active period": """
        SELECT t.id FROM tickets t JOIN accounts a ON a.id = t.account_id
        WHERE t.opened_at < a.created_at OR t.opened_at > a.deregistered_at""",
    "ticket status and closed_at disagree": """
        SELECT id FROM tickets WHERE status NOT IN ('open', 'closed') OR (status = 'open') <> (closed_at IS NULL)""",
    "ticket's last activity is not its closing (closed) or its last message (open)": """
        SELECT t.id FROM tickets t
        WHERE t.last_activity_at IS NOT (CASE WHEN t.status = 'closed' THEN t.closed_at
                                              ELSE (SELECT max(sent_at) FROM ticket_messages m WHERE m.ticket_id = t.id)
                                         END)""",
    "ticket not closed 0-30 days after opening": """
        SELECT id FROM tickets WHERE julianday(closed_at) - julianday(opened_at) NOT BETWEEN 0 AND 30""",
    "held ticket that is open": "SELECT id FROM tickets WHERE legal_hold AND status = 'open'",
    "message outside its ticket": """
        SELECT m.id FROM ticket_messages m JOIN tickets t ON t.id = m.ticket_id
        WHERE m.sent_at < t.opened_at OR m.sent_at > t.closed_at OR m.sender NOT IN ('customer', 'agent')""",
    "invoice not on the day of one of the customer's orders": """
        SELECT i.id FROM invoices i WHERE NOT EXISTS (
            SELECT 1 FROM orders o WHERE o.account_id = i.account_id AND date(o.ordered_at) = i.issued_at)""",
    "invoice name or address not the account's": """
        SELECT i.id FROM invoices i JOIN accounts a ON a.id = i.account_id
        WHERE i.customer_name <> a.first_name || ' ' || a.last_name OR i.billing_street <> a.street
           OR i.billing_postcode <> a.postcode OR i.billing_city <> a.city""",
    "invoice total is not lines + VAT": """
        SELECT i.id FROM invoices i WHERE i.total_cents <> i.vat_cents + (
            SELECT sum(quantity * unit_price_cents) FROM invoice_lines l WHERE l.invoice_id = i.id)""",
    "duplicate e-mail address": "SELECT email FROM accounts GROUP BY email HAVING count(*) > 1",
    "not a Dutch postcode": """
        SELECT id FROM accounts WHERE postcode NOT GLOB '[1-9][0-9][0-9][0-9] [A-Z][A-Z]'""",
    "first customer message without the customer's name and e-mail": """
        SELECT m.id FROM ticket_messages m JOIN tickets t ON t.id = m.ticket_id JOIN accounts a ON a.id = t.account_id
        WHERE m.sent_at = t.opened_at AND (instr(m.body, a.last_name) = 0 OR instr(m.body, a.email) = 0)""",
}


@pytest.mark.parametrize("rule", BROKEN_RULES)
def test_no_row_breaks_a_rule(db: sqlite3.Connection, rule: str) -> None:
    assert db.execute(BROKEN_RULES[rule]).fetchmany(5) == []


def test_sqlite_foreign_key_check_is_clean(db: sqlite3.Connection) -> None:
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    assert one(db, "PRAGMA integrity_check") == "ok"


def test_build_demo_inserts_with_foreign_keys_on_and_the_default_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []
    real = demo.create_shop

    def spy(engine: sa.Engine, **kwargs: object) -> DemoSummary:
        with engine.connect() as conn:
            seen.append(conn.exec_driver_sql("PRAGMA foreign_keys").scalar())
        return real(engine, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(demo, "create_shop", spy)
    build_demo(tmp_path / "fk.db", accounts=20, today=TODAY)
    assert seen == [1]
    conn = sqlite3.connect(tmp_path / "fk.db")
    try:
        assert one(conn, "PRAGMA journal_mode") == "delete"
    finally:
        conn.close()


def test_nothing_in_the_future_or_before_the_ten_years(db: sqlite3.Connection) -> None:
    for table, columns in DATETIME_COLUMNS.items():
        for column in columns:
            lo, hi = db.execute(f"SELECT min({column}), max({column}) FROM {table}").fetchone()
            assert hi < MIDNIGHT, (table, column, hi)
            assert lo >= START, (table, column, lo)
    assert one(db, "SELECT max(issued_at) FROM invoices") < TODAY.isoformat()
    assert one(db, "SELECT min(issued_at) FROM invoices") >= START
    assert one(db, "SELECT max(birth_date) FROM accounts") < "2008-11-24"  # adults only


def test_no_wall_clock_time_that_does_not_exist_in_amsterdam(shop: tuple[Path, DemoSummary]) -> None:
    zone = ZoneInfo("Europe/Amsterdam")
    engine = sa.create_engine(f"sqlite:///{shop[0]}")
    md = shop_metadata()
    with engine.connect() as conn:
        for table, columns in DATETIME_COLUMNS.items():
            for column in columns:
                for (value,) in conn.execute(sa.select(md.tables[table].c[column])):
                    if value is None:
                        continue
                    there_and_back = value.replace(tzinfo=zone).astimezone(dt.UTC).astimezone(zone)
                    assert there_and_back.replace(tzinfo=None) == value, (table, column, value)
    engine.dispose()


# ----------------------------------------------------------------------------- shape and edge cases


def test_proportions_and_growth(db: sqlite3.Connection) -> None:
    assert 0.30 < one(db, "SELECT avg(deregistered_at IS NOT NULL) FROM accounts") < 0.40
    assert 0.003 < one(db, "SELECT avg(legal_hold) FROM accounts") < 0.03
    assert 0.05 < one(db, "SELECT avg(status = 'open') FROM tickets") < 0.15
    assert 0.1 < one(db, "SELECT avg(phone IS NULL) FROM accounts") < 0.3
    assert 0.05 < one(db, "SELECT avg(birth_date IS NULL) FROM accounts") < 0.25
    assert 0.8 < one(db, "SELECT 1.0 * (SELECT count(*) FROM invoices) / count(*) FROM orders") < 0.98
    assert count(db, "tickets", "account_id IS NULL") > 0  # contact form, no account
    orders = per_parent(db, "accounts", "orders", "account_id")
    assert orders <= set(range(6)) and {0, 1, 5} <= orders
    assert per_parent(db, "accounts", "tickets", "account_id") == {0, 1, 2}
    assert per_parent(db, "invoices", "invoice_lines", "invoice_id") == {1, 2, 3, 4}
    assert per_parent(db, "tickets", "ticket_messages", "ticket_id") == {1, 2, 3, 4}
    # The shop grows: more recent activity than old.
    for table, column in (("orders", "ordered_at"), ("accounts", "created_at"), ("tickets", "opened_at")):
        per_year = dict(db.execute(f"SELECT substr({column}, 1, 4), count(*) FROM {table} GROUP BY 1").fetchall())
        assert per_year["2025"] > per_year["2022"] > per_year["2019"] > 0, table


def test_leap_day_and_year_end_events_exist(db: sqlite3.Connection) -> None:
    assert count(db, "accounts", "deregistered_at LIKE '%-02-29 %'") >= 2
    assert count(db, "accounts", "deregistered_at = '2024-02-29 10:15:00.000000'") == 1
    assert count(db, "tickets", "closed_at LIKE '%-02-29 %'") >= 2
    assert count(db, "invoices", "issued_at LIKE '%-02-29'") >= 2
    for table, column in (("accounts", "deregistered_at"), ("tickets", "closed_at")):
        assert count(db, table, f"{column} LIKE '%-12-31 23:59:59.000000'") >= 2
        assert count(db, table, f"{column} LIKE '%-01-01 00:00:00.000000'") >= 2
    # Both sides of the 24-month term's year end, and of the 7-year book-year boundary.
    assert count(db, "accounts", "deregistered_at = '2023-12-31 23:59:59.000000'") == 1
    assert count(db, "accounts", "deregistered_at = '2024-12-31 23:59:59.000000'") == 1
    assert count(db, "invoices", "issued_at = '2018-12-31'") >= 1
    assert count(db, "invoices", "issued_at = '2019-01-01'") >= 1
    # Exactly on the cut-off.
    assert count(db, "accounts", f"deregistered_at = '{ACCOUNT_CUT}'") == 1
    assert count(db, "tickets", f"closed_at = '{TICKET_CUT}'") >= 1


def test_deferred_held_and_open_ticket_cases_exist(db: sqlite3.Connection) -> None:
    past_term = f"a.deregistered_at <= '{ACCOUNT_CUT}' AND NOT a.legal_hold"
    kept_invoice = f"EXISTS (SELECT 1 FROM invoices i WHERE i.account_id = a.id AND i.issued_at >= '{INVOICE_CUT}')"
    any_ticket = "EXISTS (SELECT 1 FROM tickets t WHERE t.account_id = a.id)"
    # Past the term but an invoice must be kept: the invoice is detached, the account deleted.
    assert count(db, "accounts a", f"{past_term} AND {kept_invoice}") >= 3
    # ... and plenty that can simply be deleted.
    assert count(db, "accounts a", f"{past_term} AND NOT {kept_invoice} AND NOT {any_ticket}") >= 10
    # Deregistered customers with a ticket still open, one of them long past the term.
    ticket_of = "tickets t JOIN accounts a ON a.id = t.account_id"
    assert count(db, ticket_of, "t.status = 'open' AND a.deregistered_at IS NOT NULL") >= 2
    assert count(db, ticket_of, f"t.status = 'open' AND {past_term}") >= 1
    # Open tickets nobody touched for more than 2 years: their term ends too (policies.yaml).
    assert count(db, "tickets", f"status = 'open' AND last_activity_at <= '{TICKET_CUT}'") >= 10
    # Legal holds: deregistered long ago, just past the term, active; closed tickets under hold.
    assert count(db, "accounts", "legal_hold AND deregistered_at < '2020-01-01'") >= 1
    assert count(db, "accounts", f"legal_hold AND deregistered_at <= '{ACCOUNT_CUT}'") >= 2
    assert count(db, "accounts", "legal_hold AND deregistered_at IS NULL") >= 1
    assert count(db, "tickets", f"legal_hold AND status = 'closed' AND closed_at <= '{TICKET_CUT}'") >= 2
    # Missing optional data, also on an account that will be anonymised or deleted.
    assert count(db, "accounts", "phone IS NULL AND birth_date IS NULL") >= 2
    assert count(db, "accounts a", f"phone IS NULL AND birth_date IS NULL AND {past_term}") >= 1


# ----------------------------------------------------------------------------- calibration


def due_fractions(conn: sqlite3.Connection, account_cut: str, invoice_cut: str, ticket_cut: str) -> dict[str, float]:
    """Share of each policy's table past its term (held rows included), by plain SQL."""
    wheres = {
        "accounts": ("accounts", f"deregistered_at <= '{account_cut}'"),
        "orders": ("orders", f"ordered_at < '{invoice_cut}'"),  # the same book-year term as invoices
        "invoices": ("invoices", f"issued_at < '{invoice_cut}'"),
        "correspondence": ("tickets", f"last_activity_at <= '{ticket_cut}'"),
    }
    return {name: count(conn, table, where) / count(conn, table, "1 = 1") for name, (table, where) in wheres.items()}


def test_no_policy_would_trip_the_safety_guard_at_today(db: sqlite3.Connection) -> None:
    """max_fraction defaults to 0.5: the fresh shop must not have more than half of any table due,
    yet every policy must have real work."""
    fractions = due_fractions(db, ACCOUNT_CUT, INVOICE_CUT, TICKET_CUT)
    for name, fraction in fractions.items():
        assert 0 < fraction <= 0.45, (name, fraction)
    assert fractions["accounts"] > 0.03 and fractions["correspondence"] > 0.15


@pytest.mark.parametrize("today", [dt.date(2024, 2, 29), dt.date(2031, 1, 1)])
def test_calibration_holds_on_other_days(tmp_path: Path, today: dt.date) -> None:
    build_demo(tmp_path / "s.db", accounts=1_500, seed=5, today=today)
    two_years = dt.date(today.year - 2, today.month, 28 if (today.month, today.day) == (2, 29) else today.day)
    cut = f"{two_years.isoformat()} 00:00:00.000000"
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        fractions = due_fractions(conn, cut, f"{today.year - 7}-01-01", cut)
        latest = [one(conn, f"SELECT max({c}) FROM {t}") for t, cs in DATETIME_COLUMNS.items() for c in cs]
        assert max(latest) < today.isoformat()
        assert one(conn, "SELECT count(*) FROM accounts WHERE deregistered_at LIKE '%-02-29 %'") >= 2
    finally:
        conn.close()
    for name, fraction in fractions.items():
        assert 0 < fraction <= 0.45, (name, fraction)


# ----------------------------------------------------------------------------- build_demo and files


def test_build_demo_refuses_a_non_empty_file_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    path.write_bytes(b"something precious")
    with pytest.raises(InvalidInput, match="already exists and is not empty"):
        build_demo(path, accounts=10, today=TODAY)
    assert path.read_bytes() == b"something precious"
    summary = build_demo(path, accounts=10, today=TODAY, overwrite=True)
    assert summary.counts["accounts"] == 10
    with pytest.raises(InvalidInput, match=re.escape(str(path))):
        build_demo(path, accounts=10, today=TODAY)
    # A built demo is not empty either.
    assert dump(path)["accounts"]


def test_build_demo_uses_an_empty_file_and_creates_parents(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    assert build_demo(empty, accounts=10, today=TODAY).counts["accounts"] == 10
    nested = tmp_path / "var" / "deep" / "demo.db"
    assert build_demo(nested, accounts=10, today=TODAY).path == str(nested)
    assert nested.exists()
    with pytest.raises(InvalidInput, match="directory"):
        build_demo(tmp_path, accounts=10, today=TODAY)


def test_a_failed_build_leaves_no_half_built_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"

    def fail(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_demo(path, accounts=10, today=TODAY, progress=fail)
    assert not path.exists()


# ----------------------------------------------------------------------------- retention demo --as-of


def test_demo_as_of_builds_the_shop_up_to_that_day_and_leaves_a_backlog(tmp_path: Path) -> None:
    """`retention demo --as-of DAY` ends the data before DAY; enforced two years later, the shop holds
    the backlog of a first run: far more than the calibrated share of accounts and tickets is due."""
    path = tmp_path / "backlog.db"
    result = invoke(["demo", "--path", str(path), "--accounts", "1500", "--seed", "5", "--as-of", "2024-11-24"])
    assert result.exit_code == 0, result
    assert f"{path}: 1500 accounts" in result.stdout
    conn = sqlite3.connect(path)
    try:
        latest = [one(conn, f"SELECT max({c}) FROM {t}") for t, cs in DATETIME_COLUMNS.items() for c in cs]
        assert max(latest) < "2024-11-24"
        # Enforced on TODAY, the terms of every account deregistered before 2024-11-24 have passed.
        fractions = due_fractions(conn, ACCOUNT_CUT, INVOICE_CUT, TICKET_CUT)
    finally:
        conn.close()
    assert 0.30 < fractions["accounts"] < 0.45, fractions
    assert fractions["correspondence"] > 0.8, fractions


@pytest.mark.parametrize(
    ("as_of", "message"),
    [
        ("2999-01-01", "demo: --as-of 2999-01-01 is in the future"),
        ("24-11-2024", "demo: --as-of '24-11-2024' is not a date; write it as YYYY-MM-DD"),
    ],
)
def test_demo_as_of_rejects_a_future_day_or_a_non_date_with_exit_2(tmp_path: Path, as_of: str, message: str) -> None:
    path = tmp_path / "never.db"
    result = invoke(["demo", "--path", str(path), "--accounts", "10", "--as-of", as_of])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not path.exists()


def test_demo_url_builds_the_same_shop_in_a_server_database(server_db: Any, tmp_path: Path) -> None:
    """`retention demo --url` fills an empty PostgreSQL or MariaDB database with the shop the same seed
    and date give in SQLite (row counts per table, by plain SQL); a second build into it is refused
    (exit 2, nothing touched), as is a database that cannot be reached."""
    today = "2026-11-24"
    out = invoke(["demo", "--url", server_db.url, "--accounts", "120", "--seed", "7", "--as-of", today])
    assert out.exit_code == 0, out
    sqlite_shop = build_demo(tmp_path / "twin.db", accounts=120, seed=7, today=dt.date(2026, 11, 24))
    with server_db.engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in TABLES}
    assert counts == sqlite_shop.counts and counts["accounts"] == 120

    again = invoke(["demo", "--url", server_db.url, "--accounts", "5"])
    assert again.exit_code == 2 and "already has shop data" in again.stderr
    with server_db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM accounts")).scalar_one() == 120

    gone = invoke(["demo", "--url", "postgresql+psycopg://nobody@127.0.0.1:1/none", "--accounts", "5"])
    assert gone.exit_code == 2 and "cannot" in gone.stderr and "Traceback" not in gone.stderr


def test_partitioned_demo_is_refused_where_orders_would_lose_their_foreign_key(
        db_factory: Any, tmp_path: Path) -> None:
    """`demo --partitioned` puts the orders in a partition per year on PostgreSQL only: MariaDB's
    partitioned tables have no foreign keys (the legal holds and detaching follow
    orders.account_id), and SQLite has no partitions. Exit 2, a reason, nothing created."""
    mariadb = db_factory("mariadb")
    out = invoke(["demo", "--url", mariadb.url, "--accounts", "5", "--partitioned"])
    assert out.exit_code == 2, out
    assert "--partitioned needs PostgreSQL, not MariaDB/MySQL" in out.stderr
    assert sa.inspect(mariadb.engine).get_table_names() == []
    path = tmp_path / "shop.db"
    out = invoke(["demo", "--path", str(path), "--accounts", "5", "--partitioned"])
    assert out.exit_code == 2, out
    assert "--partitioned needs a PostgreSQL --url" in out.stderr
    assert not path.exists()

"""The re-identification check: k, below_k and linkable, on every database, against plain SQL.

A policy whose anonymised rows can be singled out (a unique birth year + postcode area) or are
still joined to kept personal data (an invoice with the customer's name) is blocked before
it writes anything (exit 3, nothing touched) unless it says `reidentification: warn`. The
numbers are compared with GROUP BY / EXISTS queries written here, never with the package's.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from helpers import audit_path, ids, invoke, run_cli, scalar, statements, unchanged_witness, write_policies

from retention.audit import log as audit
from retention.demo import build_demo

if TYPE_CHECKING:
    from conftest import TestDatabase

REDACTED = "[verwijderd]"
LEFT = dt.datetime(2020, 3, 1, 10, 0)


def create_shop(engine: sa.Engine, people: list[tuple[int, str]], invoices: list[tuple[int, str | None]] = (),
                ) -> None:
    """customers: (birth year, postcode) each, all left on LEFT (due); invoices: (customer, name or NULL)."""
    md = sa.MetaData()
    customers = sa.Table(
        "customers", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("left_at", sa.DateTime, nullable=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("birth_date", sa.Date, nullable=True),
        sa.Column("postcode", sa.String(10), nullable=True),
    )
    invoice = sa.Table(
        "invoices", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=True),
        sa.Column("customer_name", sa.String(100), nullable=True),
        sa.Column("issued_at", sa.Date, nullable=False),
    )
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(customers.insert(), [
            {"id": i, "left_at": LEFT + dt.timedelta(minutes=i), "name": f"Person {i}",
             "birth_date": dt.date(year, 1 + i % 12, 1 + i % 28), "postcode": f"{postcode} X{i % 10}"}
            for i, (year, postcode) in enumerate(people, start=1)
        ])
        if invoices:
            conn.execute(invoice.insert(), [
                {"id": n, "customer_id": c, "customer_name": name, "issued_at": dt.date(2025, 1, 1)}
                for n, (c, name) in enumerate(invoices, start=1)
            ])


def customers_policy(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "customers", "table": "customers", "after": "left_at", "retain": "24 months",
        "action": "anonymise", "max_fraction": 1.0,
        "fields": {"name": "redact", "birth_date": "generalise.year", "postcode": "generalise.postcode",
                   "left_at": "generalise.year"},
    }
    base.update(overrides)
    return base


def write(tmp_path: Path, db: TestDatabase, policy: dict[str, Any], personal: dict[str, list[str]] | None = None,
          ) -> Path:
    import yaml

    pf = write_policies(tmp_path / "policies.yaml", db.url, [policy])
    if personal:
        doc = yaml.safe_load(pf.read_text(encoding="utf-8"))
        doc["personal"] = personal
        pf.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return pf


def year(column: str, dialect: str) -> str:
    return f"strftime('%Y', {column})" if dialect == "sqlite" else f"EXTRACT(YEAR FROM {column})"


def expected_k(db: TestDatabase, threshold: int, where: str = "1 = 1") -> tuple[int | None, int, int]:
    """(k, below_k, rows) over the customers in ``where``, at their generalised values, in plain SQL."""
    groups = (f"SELECT COUNT(*) AS n FROM customers WHERE {where} GROUP BY substr(postcode, 1, 4), "
              f"{year('birth_date', db.name)}, {year('left_at', db.name)}")
    with db.engine.connect() as conn:
        k, below, rows = conn.execute(sa.text(
            f"SELECT MIN(n), SUM(CASE WHEN n < {threshold} THEN n ELSE 0 END), SUM(n) FROM ({groups}) g")).one()
    return (None if k is None else int(k)), int(below or 0), int(rows or 0)


def expected_linkable(db: TestDatabase, where: str = "1 = 1") -> int:
    return int(scalar(db.engine, f"SELECT COUNT(*) FROM customers c WHERE {where} AND EXISTS (SELECT 1 FROM "
                                 "invoices i WHERE i.customer_id = c.id AND i.customer_name IS NOT NULL)"))


def reid(result: Any) -> dict[str, Any]:
    return result.policy("customers")["reidentification"]


# ------------------------------------------------------------------------------------------ k


@pytest.mark.parametrize(("sizes", "threshold", "passes"), [
    ((5, 5), 5, True),
    ((4, 6), 5, False),  # the boundary: one group of 4 under a threshold of 5
    ((4, 6), 4, True),
], ids=["k5-of-5", "k4-of-5", "k4-of-4"])
def test_k_at_its_threshold(db: TestDatabase, tmp_path: Path, sizes: tuple[int, int], threshold: int,
                            passes: bool) -> None:
    people = [(1970, "1234")] * sizes[0] + [(1980, "5678")] * sizes[1]
    create_shop(db.engine, people)
    pf = write(tmp_path, db, customers_policy(k_anonymity=threshold))
    k, below, rows = expected_k(db, threshold)
    assert (k, rows) == (min(sizes), 10)

    # Every row of the table is due: --force passes the 100 % guard, the subject here is the check.
    preview = run_cli(pf, "--dry-run", "--force")
    got = reid(preview)
    assert (got["k"], got["below_k"], got["linkable"], got["rows"]) == (k, below, 0, rows)
    assert got["passed"] is passes
    assert got["quasi_identifiers"] == ["left_at", "birth_date", "postcode"]

    before = unchanged_witness(db)
    result = run_cli(pf, "--force")
    got = reid(result)
    assert (got["k"], got["below_k"], got["linkable"]) == (k, below, 0)
    if passes:
        assert result.exit_code == 0, result
        assert result.policy("customers")["applied"] == 10
        # After the run, the same numbers from the values actually stored.
        assert expected_k(db, threshold, where=f"name = '{REDACTED}'") == (k, below, rows)
    else:
        assert result.exit_code == 3, result
        assert result.policy("customers")["status"] == "blocked"
        assert "re-identification check failed" in result.policy("customers")["error"]
        assert unchanged_witness(db) == before


def test_a_unique_birth_year_and_postcode_fails_and_touches_nothing(db: TestDatabase, tmp_path: Path) -> None:
    people = [(1950 + i, f"{1000 + i}") for i in range(8)] + [(1990, "2000")] * 5
    create_shop(db.engine, people)
    pf = write(tmp_path, db, customers_policy())
    k, below, rows = expected_k(db, 5)
    assert (k, below, rows) == (1, 8, 13)
    before = unchanged_witness(db)

    # All 13 rows are due: --force passes the 100 % guard (it does not pass the check under test).
    preview = run_cli(pf, "--dry-run", "--force", fmt="text")
    assert preview.exit_code == 3, preview  # the preview predicts the real run's block, as for max_fraction
    assert "[BLOCKED]" in preview.stdout and "re-identification (FAILS)" in preview.stdout
    assert "k = 1 row(s) (needed: 5)" in preview.stdout and "8 row(s) in smaller groups" in preview.stdout
    assert "re-identification check failed: 8 of 13 anonymised row(s)" in preview.stdout

    result = run_cli(pf, "--force")
    assert result.exit_code == 3, result
    assert (reid(result)["k"], reid(result)["below_k"]) == (1, 8)
    assert result.policy("customers")["applied"] == 0
    assert unchanged_witness(db) == before
    ends = [e for e in (json.loads(line) for line in audit_path(pf).read_text().splitlines())
            if e["event"] == "policy.end" and not e["dry_run"]]
    assert ends[-1]["status"] == "blocked"
    assert {k_: ends[-1]["reidentification"][k_] for k_ in ("k", "below_k", "linkable")} == \
        {"k": 1, "below_k": 8, "linkable": 0}

    # Accepted knowingly: the policy runs, the numbers are still reported, with a warning.
    pf = write(tmp_path, db, customers_policy(reidentification="warn"))
    warned = run_cli(pf, "--force")
    assert warned.exit_code == 0, warned
    assert warned.policy("customers")["applied"] == 13
    assert any("re-identification check failed" in w for w in warned.policy("customers")["warnings"])
    assert expected_k(db, 5, where=f"name = '{REDACTED}'") == (1, 8, 13)


def test_rows_anonymised_by_earlier_runs_count_too(db: TestDatabase, tmp_path: Path) -> None:
    """All anonymised rows, not only tonight's: a group of 5 split over two runs is still 5, and
    a row anonymised before that sits alone still makes k = 1."""
    create_shop(db.engine, [(1970, "1234")] * 5)
    with db.engine.begin() as conn:  # three rows anonymised by an earlier run (and one alone in its group)
        conn.execute(sa.text(f"UPDATE customers SET name = '{REDACTED}', postcode = '1234' WHERE id <= 3"))
    pf = write(tmp_path, db, customers_policy())
    preview = run_cli(pf, "--dry-run")
    assert (reid(preview)["rows"], reid(preview)["k"]) == (5, 5)
    assert preview.policy("customers")["due"] == 2
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO customers (id, left_at, name, birth_date, postcode) VALUES "
                             f"(99, '2019-05-05 00:00:00', '{REDACTED}', '1930-01-01', '9999')"))
    preview = run_cli(pf, "--dry-run")
    assert (reid(preview)["rows"], reid(preview)["k"], reid(preview)["below_k"]) == (6, 1, 1)
    assert (reid(preview)["k"], reid(preview)["below_k"], reid(preview)["rows"]) == expected_k(db, 5)


# ------------------------------------------------------------------------------------------ links


def test_a_linking_foreign_key_from_a_row_with_personal_columns_fails(db: TestDatabase, tmp_path: Path) -> None:
    """Ten customers in one group (k = 10): passes on k. Three are still referenced by an invoice
    carrying the name (linkable), one by an invoice whose name is NULL (not linkable)."""
    create_shop(db.engine, [(1970, "1234")] * 10, invoices=[(1, "Person 1"), (2, "Person 2"), (2, "P. 2"),
                                                             (3, "Person 3"), (4, None)])
    personal = {"invoices": ["customer_name"]}
    pf = write(tmp_path, db, customers_policy(), personal=personal)
    assert expected_linkable(db) == 3
    before = unchanged_witness(db)
    result = run_cli(pf, "--force")  # all ten customers are due: past the 100 % guard, to the check
    got = reid(result)
    assert (got["k"], got["below_k"], got["linkable"], got["links"]) == (10, 0, 3, {"invoices": 3})
    assert result.exit_code == 3, result
    assert "3 still linked by a foreign key" in result.policy("customers")["error"]
    assert unchanged_witness(db) == before

    # validate shows the same numbers, and warns that a real run blocks the policy.
    validated = invoke(["--policies", str(pf), "validate"])
    assert validated.exit_code == 0, validated
    assert "k = 10" in validated.stdout and "3 still linked by a foreign key" in validated.stdout
    assert "a real run blocks it (exit 3)" in validated.stderr

    # Without the invoice's personal columns declared, nothing says the invoice is personal.
    pf = write(tmp_path, db, customers_policy())
    assert reid(run_cli(pf, "--dry-run", "--force"))["linkable"] == 0

    # The names gone from the invoices (or the links detached): it passes, and runs.
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE invoices SET customer_name = NULL"))
    pf = write(tmp_path, db, customers_policy(), personal=personal)
    assert expected_linkable(db) == 0
    result = run_cli(pf, "--force")
    assert result.exit_code == 0, result
    assert (reid(result)["linkable"], result.policy("customers")["applied"]) == (0, 10)


def test_an_anonymised_row_pointing_at_kept_personal_data_is_linkable(db: TestDatabase, tmp_path: Path) -> None:
    """The other direction: an anonymised invoice whose customer_id still points at a customer who
    holds a name (a policy's `fields` column) is linkable; with customer_id nulled too it is not."""
    create_shop(db.engine, [(1970, "1234")] * 3, invoices=[(1, "A"), (1, "B"), (2, "C"), (None, "D"),
                                                            (3, "E"), (3, "F")])
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE invoices SET issued_at = '2010-06-01'"))
        conn.execute(sa.text("UPDATE customers SET left_at = NULL WHERE id = 3"))  # still a customer
    invoices = {"name": "invoices", "table": "invoices", "after": "issued_at", "retain": "7 years",
                "action": "anonymise", "fields": {"customer_name": None}, "max_fraction": 1.0, "k_anonymity": 1,
                "keep": {"customer_id": "the link under test"}, "reidentification": "enforce"}
    customers = customers_policy(retain="100 years")  # names customers.name as personal; due nowhere
    pf = write_policies(tmp_path / "policies.yaml", db.url, [invoices, customers])
    expected = int(scalar(db.engine, "SELECT COUNT(*) FROM invoices i WHERE EXISTS (SELECT 1 FROM customers c "
                                     "WHERE c.id = i.customer_id AND c.name IS NOT NULL)"))
    assert expected == 5
    result = run_cli(pf, "--dry-run", "--force")  # all six invoices are due: past the 100 % guard
    got = result.policy("invoices")["reidentification"]
    assert (got["linkable"], got["links"]) == (expected, {"customers": expected})

    invoices["fields"] = {"customer_name": None, "customer_id": None}
    del invoices["keep"]
    pf = write_policies(tmp_path / "policies.yaml", db.url, [invoices, customers])
    result = run_cli(pf, "--force")
    assert result.exit_code == 0, result
    assert result.policy("invoices")["reidentification"]["linkable"] == 0


# ------------------------------------------------------------------------------------------ the demo


def test_demo_with_a_backlog_matches_plain_sql(tmp_path: Path) -> None:
    """The demo built three years back (a first run's backlog); an anonymise policy over accounts
    that nulls or redacts every personal column and generalises the dates. The tool's k and
    linkable, in the preview and after the run, equal GROUP BY / EXISTS written here."""
    demo = tmp_path / "demo.db"
    build_demo(demo, accounts=3000, seed=7, today=dt.date(2023, 11, 24))
    url = f"sqlite:///{demo}"
    policy = {
        "name": "accounts", "table": "accounts", "after": "deregistered_at", "retain": "24 months",
        "action": "anonymise", "exclude": {"legal_hold": True}, "max_fraction": 1.0,
        "fields": {"first_name": "redact", "last_name": "redact", "email": "redact", "phone": None, "street": None,
                   "postcode": "generalise.postcode", "city": None, "birth_date": "generalise.year",
                   "created_at": "generalise.year", "deregistered_at": "generalise.year"},
        "keep": {"legal_hold": "false on every anonymised account"},
        # The links to invoices, orders and tickets are the point of the measurement: let it run.
        "reidentification": "warn",
    }
    personal = {"invoices": ["customer_name", "billing_street", "billing_postcode", "billing_city"],
                "orders": ["shipping_street", "shipping_postcode", "shipping_city"], "tickets": ["subject"]}
    pf = write_policies(tmp_path / "policies.yaml", url, [policy])
    import yaml

    doc = yaml.safe_load(pf.read_text(encoding="utf-8"))
    doc["personal"] = personal
    pf.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    as_of = "2026-11-24T03:00:00"
    # A first real run of over 100 rows: --force passes the rate guard (not what is measured here).
    preview = run_cli(pf, "--dry-run", "--force", as_of=as_of)
    result = run_cli(pf, "--force", as_of=as_of)
    assert result.exit_code == 0, result
    assert result.policy("accounts")["applied"] > 1000

    engine = sa.create_engine(url)
    anonymised = f"first_name = '{REDACTED}'"
    with engine.connect() as conn:
        k, below, rows = conn.execute(sa.text(
            "SELECT MIN(n), SUM(CASE WHEN n < 5 THEN n ELSE 0 END), SUM(n) FROM (SELECT COUNT(*) AS n FROM accounts "
            f"WHERE {anonymised} GROUP BY postcode, birth_date, created_at, deregistered_at, legal_hold) g")).one()
        linkable = conn.execute(sa.text(
            f"SELECT COUNT(*) FROM accounts a WHERE {anonymised} AND ("
            "EXISTS (SELECT 1 FROM invoices i WHERE i.account_id = a.id AND (i.customer_name IS NOT NULL OR "
            "i.billing_street IS NOT NULL OR i.billing_postcode IS NOT NULL OR i.billing_city IS NOT NULL)) OR "
            "EXISTS (SELECT 1 FROM orders o WHERE o.account_id = a.id AND (o.shipping_street IS NOT NULL OR "
            "o.shipping_postcode IS NOT NULL OR o.shipping_city IS NOT NULL)) OR "
            "EXISTS (SELECT 1 FROM tickets t WHERE t.account_id = a.id AND t.subject IS NOT NULL))")).scalar()
    engine.dispose()
    assert rows == result.policy("accounts")["applied"]
    for got in (reid_of(preview), reid_of(result)):
        assert (got["k"], got["below_k"], got["linkable"], got["rows"]) == (k, below, linkable, rows)
    assert linkable > rows // 2  # most of the backlog's accounts are still linked (726 of 1039)


def reid_of(result: Any) -> dict[str, Any]:
    return result.policy("accounts")["reidentification"]


def test_audit_show_renders_the_check_with_its_numbers(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    """policy.end carries the numbers; `audit show` text, CSV and HTML show them and the verdict."""
    from helpers import parse_csv

    create_shop(sqlite_db.engine, [(1950 + i, f"{1000 + i}") for i in range(3)] + [(1990, "2000")] * 5)
    pf = write(tmp_path, sqlite_db, customers_policy())
    assert run_cli(pf, "--force").exit_code == 3  # all 8 due: past the 100 % guard, blocked by the check
    text = invoke(["--policies", str(pf), "audit", "show"]).stdout
    assert ("customers: re-identification check FAILED: 8 rows anonymised had the policy run (it was blocked); "
            "smallest group sharing left_at, "
            "birth_date, postcode: k = 1 (needed 5); 3 in smaller groups; 0 still linked") in text
    rows = parse_csv(invoke(["--policies", str(pf), "audit", "show", "--format", "csv"]).stdout)
    assert [(r["k"], r["below_k"], r["linkable"]) for r in rows] == [("1", "3", "0")]
    page = invoke(["--policies", str(pf), "audit", "show", "--format", "html"]).stdout
    assert "Re-identification (latest)" in page and "FAILED" in page and "k = 1 (needed 5)" in page
    assert "Re-identification check</dt>" in page


def test_on_referenced_anonymise_counts_the_rows_that_stay_anonymised(db: TestDatabase, tmp_path: Path) -> None:
    """A delete policy anonymises only the due rows still referenced; an earlier-anonymised row that
    nothing references any more is deleted tonight, so it is not in the set the check measures."""
    create_shop(db.engine, [(1970, "1234")] * 6, invoices=[(i, None) for i in range(1, 6)])
    with db.engine.begin() as conn:  # customer 6 was anonymised by an earlier run; its invoice is gone
        conn.execute(sa.text(f"UPDATE customers SET name = '{REDACTED}' WHERE id = 6"))
    policy = customers_policy(action="delete", on_referenced="anonymise")
    pf = write(tmp_path, db, policy, personal={"invoices": ["customer_name"]})
    referenced = int(scalar(db.engine, "SELECT COUNT(*) FROM customers c WHERE EXISTS "
                                       "(SELECT 1 FROM invoices i WHERE i.customer_id = c.id)"))
    assert referenced == 5
    # Every customer is due (deleted or anonymised): --force passes the 100 % guard.
    preview = run_cli(pf, "--dry-run", "--force")
    assert (reid(preview)["rows"], reid(preview)["k"], reid(preview)["linkable"]) == (referenced, 5, 0)
    result = run_cli(pf, "--force")
    assert result.exit_code == 0, result
    assert int(scalar(db.engine, f"SELECT COUNT(*) FROM customers WHERE name = '{REDACTED}'")) == referenced
    assert expected_k(db, 5, where=f"name = '{REDACTED}'") == (5, 0, referenced)


@pytest.mark.parametrize(("personal", "message"), [
    ({"invoice": ["customer_name"]}, "key 'personal.invoice': no database of the file has a table 'invoice'"),
    ({"invoices": ["customer_name", "iban"]}, "key 'personal.invoices': table 'invoices' has no column 'iban'"),
])
def test_personal_lists_name_real_tables_and_columns(db: TestDatabase, tmp_path: Path,
                                                    personal: dict[str, list[str]], message: str) -> None:
    create_shop(db.engine, [(1970, "1234")] * 5, invoices=[(1, "A")])
    pf = write(tmp_path, db, customers_policy(), personal=personal)
    result = invoke(["--policies", str(pf), "validate"])
    assert result.exit_code == 2, result
    line = next(x for x in result.stderr.splitlines() if "personal." in x).removeprefix("error: ")
    number = next(i + 1 for i, t in enumerate(pf.read_text().splitlines())
                  if t.strip().startswith(f"{next(iter(personal))}:"))
    assert line == f"{pf}:{number}: {message}", line


def test_a_blocked_delete_policy_deletes_nothing_either(db: TestDatabase, tmp_path: Path) -> None:
    """on_referenced: anonymise with linked rows: the whole policy is blocked before its first
    batch, its deletions included ("nothing of that policy was touched")."""
    create_shop(db.engine, [(1970, "1234")] * 8, invoices=[(1, "Person 1"), (2, "Person 2")])
    pf = write(tmp_path, db, customers_policy(action="delete", on_referenced="anonymise"),
               personal={"invoices": ["customer_name"]})
    before = unchanged_witness(db)
    result = run_cli(pf, "--force")  # all 8 due: past the 100 % guard, so the check is what blocks it
    assert result.exit_code == 3, result
    assert (reid(result)["rows"], reid(result)["linkable"]) == (2, 2)
    assert result.policy("customers")["applied"] == 0
    assert int(scalar(db.engine, "SELECT COUNT(*) FROM customers")) == 8
    assert unchanged_witness(db) == before


def test_a_preview_blocked_by_a_guard_shows_the_check_as_if_let_through(db: TestDatabase, tmp_path: Path) -> None:
    """A first night's backlog is blocked (here: 100 % of the table due); its preview must still tell
    the DPO whether letting it through would leave anonymous rows: k and below_k of every due row,
    as plain SQL computes them, marked `if_let_through`. The blocked real run changes nothing and
    reports the rows as they stay (none anonymised)."""
    people = [(1950 + i, f"{1000 + i}") for i in range(3)] + [(1990, "2000")] * 6
    create_shop(db.engine, people)
    pf = write(tmp_path, db, customers_policy())
    k, below, rows = expected_k(db, 5)
    assert (k, below, rows) == (1, 3, 9)

    preview = run_cli(pf, "--dry-run", fmt="text")
    assert preview.exit_code == 3, preview
    assert "[BLOCKED]" in preview.stdout
    assert "of 9 anonymised row(s) if it is let through" in preview.stdout
    assert "(if let through)" in preview.stdout
    got = reid(run_cli(pf, "--dry-run", "--record"))
    assert (got["k"], got["below_k"], got["rows"], got["if_let_through"]) == (k, below, rows, True)
    # The recorded preview keeps what the DPO saw, for the inspector.
    [entry] = [e for e in audit.read_entries(audit_path(pf)) if e["event"] == "preview"]
    recorded = entry["policies"][0]["reidentification"]
    assert (recorded["k"], recorded["below_k"], recorded["rows"], recorded["if_let_through"]) == (k, below, rows, True)

    before = unchanged_witness(db)
    result = run_cli(pf)
    assert result.exit_code == 3 and result.policy("customers")["applied"] == 0
    assert reid(result)["rows"] == 0 and "if_let_through" not in reid(result)
    assert unchanged_witness(db) == before


def test_still_referenced_rows_are_counted_once_and_not_when_their_reference_goes_tonight(
        db: TestDatabase, tmp_path: Path) -> None:
    """A delete policy with `on_referenced: anonymise` measures the rows that stay referenced:
    a customer with two kept invoices is one row, not two (PostgreSQL joins the referenced keys,
    which must be distinct), and a customer whose only invoice an earlier policy deletes tonight
    is deleted, not measured. Counted with EXISTS written here, before and after the run."""
    create_shop(db.engine, [(1970, "1234")] * 6,
                invoices=[(1, None), (1, None), (2, None), (3, None), (None, None)])
    with db.engine.begin() as conn:  # customer 2's invoice is past the invoices' 7 years tonight
        conn.execute(sa.text("UPDATE invoices SET issued_at = :d WHERE customer_id = 2"), {"d": dt.date(2017, 1, 1)})
    invoices = {"name": "invoices", "table": "invoices", "after": "issued_at", "retain": "7 years",
                "action": "delete", "max_fraction": 1.0}
    customers = customers_policy(action="delete", on_referenced="anonymise", reidentification="warn")
    pf = write_policies(tmp_path / "policies.yaml", db.url, [invoices, customers])
    as_of = "2026-11-24T03:00:00"
    staying = int(scalar(db.engine, "SELECT COUNT(*) FROM customers c WHERE EXISTS (SELECT 1 FROM invoices i "
                                    "WHERE i.customer_id = c.id AND i.issued_at > '2019-11-24')"))
    assert staying == 2  # customers 1 and 3

    preview = run_cli(pf, "--dry-run", "--force", as_of=as_of)
    assert (reid(preview)["rows"], reid(preview)["k"]) == (staying, staying)
    result = run_cli(pf, "--force", as_of=as_of)
    assert result.exit_code == 0, result
    assert (reid(result)["rows"], reid(result)["k"]) == (staying, staying)
    assert result.policy("customers")["deleted"] == 4
    assert set(result.policy("customers")["phases_s"]) == {"survey", "check", "batches", "commit", "audit"}
    assert ids(db.engine, f"SELECT id FROM customers WHERE name = '{REDACTED}'") == {1, 3}
    assert ids(db.engine, "SELECT id FROM customers") == {1, 3}


def test_rows_referenced_through_a_cascade_table_are_measured(db: TestDatabase, tmp_path: Path) -> None:
    """A reference to a cascade row (an invoice pointing at a customer's cart) keeps the customer,
    anonymised: the check measures it, once, with the customers referenced directly (EXISTS here)."""
    md = sa.MetaData()
    sa.Table("customers", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("left_at", sa.DateTime), sa.Column("name", sa.String(100)),
             sa.Column("birth_date", sa.Date), sa.Column("postcode", sa.String(10)))
    sa.Table("carts", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")))
    sa.Table("invoices", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("cart_id", sa.Integer, sa.ForeignKey("carts.id")),
             sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")))
    md.create_all(db.engine)
    with db.engine.begin() as conn:
        conn.execute(md.tables["customers"].insert(), [
            {"id": i, "left_at": LEFT, "name": f"Person {i}", "birth_date": dt.date(1970, 1, 1), "postcode": "1234 AB"}
            for i in range(1, 6)])
        conn.execute(md.tables["carts"].insert(), [{"id": c, "customer_id": c} for c in (1, 2, 3)])
        # Customer 1 through its cart twice, 2 through its cart and directly, 4 directly; 3 and 5 not at all.
        conn.execute(md.tables["invoices"].insert(), [
            {"id": 1, "cart_id": 1, "customer_id": None}, {"id": 2, "cart_id": 1, "customer_id": None},
            {"id": 3, "cart_id": 2, "customer_id": 2}, {"id": 4, "cart_id": None, "customer_id": 4}])
    policy = customers_policy(action="delete", on_referenced="anonymise", cascade=["carts"], reidentification="warn")
    pf = write(tmp_path, db, policy)
    referenced = ids(db.engine, "SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 FROM invoices i WHERE "
                                "i.customer_id = c.id) OR EXISTS (SELECT 1 FROM carts k JOIN invoices i ON "
                                "i.cart_id = k.id WHERE k.customer_id = c.id)")
    assert referenced == {1, 2, 4}
    preview = run_cli(pf, "--dry-run", "--force")
    assert reid(preview)["rows"] == len(referenced)
    result = run_cli(pf, "--force")
    assert result.exit_code == 0, result
    assert reid(result)["rows"] == len(referenced)
    assert ids(db.engine, f"SELECT id FROM customers WHERE name = '{REDACTED}'") == referenced
    assert ids(db.engine, "SELECT id FROM customers") == referenced


def test_group_sizes_as_a_window_on_mariadb_give_the_group_by_numbers(db: TestDatabase, tmp_path: Path) -> None:
    """MariaDB sizes each row's group with `count(*) OVER (PARTITION BY ...)` (its GROUP BY goes
    through a temporary table on disk at a backlog's size); the other databases GROUP BY. Groups
    of 3, 4 and 6 under a threshold of 5: k 3 and 7 rows below it, as plain SQL counts them, and
    each form only where it belongs."""
    create_shop(db.engine, [(1960, "1111")] * 3 + [(1970, "1234")] * 4 + [(1980, "5678")] * 6)
    pf = write(tmp_path, db, customers_policy())
    assert expected_k(db, 5) == (3, 7, 13)
    with statements() as seen:
        preview = run_cli(pf, "--dry-run", "--force")
    got = reid(preview)
    assert (got["k"], got["below_k"], got["rows"], got["passed"]) == (3, 7, 13, False)
    checks = [s for s in seen if "min(rt_" in s]
    assert len(checks) == 1
    assert ("OVER (PARTITION BY" in checks[0]) == (db.name == "mariadb")
    assert ("GROUP BY" in checks[0]) == (db.name != "mariadb")

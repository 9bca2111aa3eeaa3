"""Anonymisation strategies, on SQLite, PostgreSQL and MariaDB.

One small ``people`` table, one column per strategy (null, redact, redact: TEXT,
fake.email, fake.first_name, generalise.year/month on DATE and DateTime columns,
generalise.postcode). Rows that left before 2024-11-24 03:00 are due at the fixed moment.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from helpers import (
    AS_OF,
    audit_path,
    invoke,
    rows_by_id,
    run_cli,
    snapshot,
    statements,
    unchanged_witness,
    write_policies,
)

from retention.databases import dialects

if TYPE_CHECKING:
    from conftest import TestDatabase

DUE = range(1, 21)  # left 2020-2023: due at AS_OF
KEPT = range(21, 24)  # left 2025: inside the term
NEVER = 24  # never left: after is NULL

FIELDS: dict[str, str | None] = {
    "email": "fake.email",
    "first_name": "fake.first_name",
    "phone": None,  # YAML null
    "mobile": "null",  # the word
    "street": "redact",
    "note": "redact: weg",
    "postcode": "generalise.postcode",
    "birth_date": "generalise.year",  # DATE
    "last_login": "generalise.year",  # DateTime
    "visit_on": "generalise.month",  # DATE
    "signup_at": "generalise.month",  # DateTime
}
PERSONAL = ("email", "first_name", "phone", "mobile", "street", "note", "postcode", "birth_date", "last_login",
            "visit_on", "signup_at")


def create_people(engine: sa.Engine) -> None:
    md = sa.MetaData()
    sa.Table(
        "people", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("left_at", sa.DateTime, nullable=True),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("first_name", sa.String(100), nullable=False),
        sa.Column("phone", sa.String(40), nullable=True),
        sa.Column("mobile", sa.String(40), nullable=True),
        sa.Column("street", sa.String(200), nullable=True),
        sa.Column("note", sa.String(200), nullable=True),
        sa.Column("postcode", sa.String(10), nullable=True),
        sa.Column("birth_date", sa.Date, nullable=True),
        sa.Column("last_login", sa.DateTime, nullable=True),
        sa.Column("visit_on", sa.Date, nullable=True),
        sa.Column("signup_at", sa.DateTime, nullable=True),
        sa.Column("anonymised_at", sa.DateTime, nullable=True),
    )
    md.create_all(engine)
    people = md.tables["people"]

    def person(i: int, left_at: dt.datetime | None, prefix: str) -> dict[str, Any]:
        return {
            "id": i, "left_at": left_at, "email": f"{prefix.lower()}{i}.mail@example.org",
            "first_name": f"{prefix}name{i}", "phone": f"010-55{i:05d}", "mobile": f"06-99{i:06d}",
            "street": f"{prefix}straat {i}", "note": f"{prefix} private note {i}", "postcode": f"{1000 + i} XK",
            "birth_date": dt.date(1950 + i, 5, 17), "last_login": dt.datetime(2021, 8, 9, 10, 11, 12 + i),
            "visit_on": dt.date(2019, 7, 3 + i), "signup_at": dt.datetime(2015, 3, 14, 15, 9, 26 + i),
            "anonymised_at": None,
        }

    rows = [person(i, dt.datetime(2020 + i % 4, 1 + i % 12, 10, 12, 30), "Old") for i in DUE]
    rows += [person(i, dt.datetime(2025, 6, i - 20, 8, 0), "Keep") for i in KEPT]
    rows.append(person(NEVER, None, "Stay"))
    with engine.begin() as conn:
        conn.execute(people.insert(), rows)


def people_policy(**overrides: Any) -> dict[str, Any]:
    """The columns no field covers are kept (every column must be accounted for); these tests are
    about the strategies, so the re-identification check only warns (test_reidentification.py)."""
    base: dict[str, Any] = {
        "name": "people", "table": "people", "after": "left_at", "retain": "24 months",
        "action": "anonymise", "fields": dict(FIELDS), "max_fraction": 1.0, "reidentification": "warn",
    }
    base.update(overrides)
    left = [c for c in (*PERSONAL, "anonymised_at") if c not in base["fields"] and c != base.get("marker")]
    if left and "keep" not in overrides and base["table"] == "people":
        base["keep"] = {c: "not a field of this test" for c in left}
    return base


def hexes(value: Any) -> set[str]:
    """MD5, SHA-1 and SHA-256 hex of a value's usual text forms (plain and lower-case)."""
    out = set()
    for text in {str(value), str(value).lower(), str(value).strip()}:
        for algo in ("md5", "sha1", "sha256"):
            out.add(hashlib.new(algo, text.encode()).hexdigest())
    return out


# ------------------------------------------------------------------------------------------


def test_each_strategy_changes_its_column_and_nothing_else(db: TestDatabase, tmp_path: Path) -> None:
    """null/redact/redact: TEXT/fake/generalise each give their value on every due row; rows inside
    the term or without an event are untouched; fakes differ per row; no hash of an old value and
    no old value of an anonymised field is left in the table or written to the audit log."""
    create_people(db.engine)
    before = rows_by_id(db.engine, "people")
    pf = write_policies(tmp_path / "policies.yaml", db.url, [people_policy()])

    result = run_cli(pf)
    assert result.exit_code == 0, result
    p = result.policy("people")
    assert (p["due"], p["held"], p["deferred"], p["applied"]) == (len(DUE), 0, 0, len(DUE))
    after = rows_by_id(db.engine, "people")
    assert set(after) == set(before)

    for i in DUE:
        old, new = before[i], after[i]
        assert new["email"] != old["email"] and "@" in new["email"], i
        assert new["first_name"] != old["first_name"] and new["first_name"], i
        assert new["phone"] is None and new["mobile"] is None, i
        assert new["street"] == "[verwijderd]", i
        assert new["note"] == "weg", i
        assert new["postcode"] == old["postcode"][:4] and new["postcode"].isdigit(), i
        assert new["birth_date"] == dt.date(old["birth_date"].year, 1, 1), i
        assert new["last_login"] == dt.datetime(old["last_login"].year, 1, 1), i
        assert new["visit_on"] == dt.date(old["visit_on"].year, old["visit_on"].month, 1), i
        assert new["signup_at"] == dt.datetime(old["signup_at"].year, old["signup_at"].month, 1), i
        assert (new["id"], new["left_at"], new["anonymised_at"]) == (old["id"], old["left_at"], None), i
    for i in [*KEPT, NEVER]:
        assert after[i] == before[i], i

    # Fresh fakes per row, not one constant (20 rows drawn from thousands of values).
    assert len({after[i]["email"] for i in DUE}) >= 15
    assert len({after[i]["first_name"] for i in DUE}) >= 8

    # Nothing that could be matched back to the old values: no hash, no old value.
    cells = [str(v) for row in after.values() for v in row.values() if v is not None]
    text = "\n".join(cells)
    for i in DUE:
        for column in PERSONAL:
            for h in hexes(before[i][column]):
                assert h not in text, (i, column)
        for column in ("email", "first_name", "phone", "mobile", "street", "note"):
            assert before[i][column] not in cells, (i, column)
    log = audit_path(pf).read_text(encoding="utf-8")
    for i in DUE:
        for column in ("email", "first_name", "phone", "mobile", "street", "note", "postcode"):
            assert before[i][column] not in log, (i, column)


def test_anonymised_row_is_not_selected_again(db: TestDatabase, tmp_path: Path) -> None:
    """A second run finds nothing to do (applied 0) and changes nothing: redact is the witness."""
    create_people(db.engine)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [people_policy()])
    first = run_cli(pf)
    assert first.exit_code == 0, first
    assert first.policy("people")["applied"] == len(DUE)
    after_first = snapshot(db.engine)

    preview = run_cli(pf, "--dry-run")
    assert preview.exit_code == 0, preview
    assert preview.policy("people")["due"] == 0
    second = run_cli(pf)
    assert second.exit_code == 0, second
    assert (second.policy("people")["due"], second.policy("people")["applied"]) == (0, 0)
    assert snapshot(db.engine) == after_first


def test_fake_only_fields_need_a_marker(db: TestDatabase, tmp_path: Path) -> None:
    """Only fake fields and no marker: refused (exit 2, nothing touched), since an anonymised row could
    not be told apart; with `marker: anonymised_at` it runs, sets the marker to the run's moment and
    does not select those rows again."""
    create_people(db.engine)
    fields = {"email": "fake.email", "first_name": "fake.first_name"}
    pf = write_policies(tmp_path / "policies.yaml", db.url, [people_policy(fields=fields)])
    before = unchanged_witness(db)

    refused = run_cli(pf)
    assert refused.exit_code == 2, refused
    assert "marker" in refused.stderr
    validated = invoke(["--policies", str(pf), "validate"])
    assert validated.exit_code == 2, validated
    assert unchanged_witness(db) == before

    pf = write_policies(tmp_path / "policies.yaml", db.url,
                        [people_policy(fields=fields, marker="anonymised_at")])
    assert invoke(["--policies", str(pf), "validate"]).exit_code == 0
    old = rows_by_id(db.engine, "people")
    result = run_cli(pf)
    assert result.exit_code == 0, result
    assert result.policy("people")["applied"] == len(DUE)
    new = rows_by_id(db.engine, "people")
    for i in DUE:
        assert new[i]["anonymised_at"] == dt.datetime.fromisoformat(AS_OF), i
        assert new[i]["email"] != old[i]["email"], i
        assert new[i]["street"] == old[i]["street"], i  # not a field of this policy
    for i in [*KEPT, NEVER]:
        assert new[i] == old[i], i

    after_first = snapshot(db.engine)
    again = run_cli(pf, as_of="2026-11-24T04:00:00")
    assert again.exit_code == 0, again
    assert (again.policy("people")["due"], again.policy("people")["applied"]) == (0, 0)
    assert snapshot(db.engine) == after_first


def test_fakes_on_a_unique_column_are_distinct(db: TestDatabase, tmp_path: Path) -> None:
    """fake.email on a UNIQUE column: 400 rows anonymised in one run get 400 different values (drawn
    with replacement from a pool, some would collide and the run would fail)."""
    md = sa.MetaData()
    users = sa.Table(
        "users", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(255), nullable=False, unique=True),
        sa.Column("street", sa.String(100), nullable=True),
        sa.Column("left_at", sa.DateTime, nullable=True),
    )
    md.create_all(db.engine)
    with db.engine.begin() as conn:
        conn.execute(users.insert(), [
            {"id": i, "email": f"user{i}@old.example", "street": f"Straat {i}", "left_at": dt.datetime(2020, 1, 1)}
            for i in range(1, 401)
        ])
    pf = write_policies(tmp_path / "policies.yaml", db.url, [people_policy(
        name="users", table="users", fields={"email": "fake.email", "street": "redact"}, batch_size=150,
    )])
    result = run_cli(pf, "--force")  # all 400 rows of the table: the 100 % guard would stop it
    assert result.exit_code == 0, result
    assert result.policy("users")["applied"] == 400
    emails = [row["email"] for row in rows_by_id(db.engine, "users").values()]
    assert len(set(emails)) == 400
    assert not any(e.endswith("@old.example") for e in emails)


def test_typed_fakes_and_a_text_key_are_written_in_one_bulk_update(db: TestDatabase, tmp_path: Path) -> None:
    """Per-row fakes of other types than text (a DATE from fake.date_of_birth, an INTEGER from
    fake.random_int) beside a constant, on a table keyed by text: every due row gets values of the
    column's type, the constant lands too, and rows inside their term keep theirs. Pins the bulk
    paths (PostgreSQL's JSON rows cast per column, MariaDB's temp table, SQLite's executemany)."""
    md = sa.MetaData()
    clients = sa.Table(
        "clients", md,
        sa.Column("code", sa.String(12), primary_key=True),
        sa.Column("left_at", sa.DateTime, nullable=True),
        sa.Column("born", sa.Date, nullable=True),
        sa.Column("house_number", sa.Integer, nullable=True),
        sa.Column("note", sa.String(100), nullable=True),
    )
    md.create_all(db.engine)
    born = dt.date(1901, 2, 3)
    with db.engine.begin() as conn:
        conn.execute(clients.insert(), [
            {"code": f"K-{i:04d}", "left_at": dt.datetime(2020 if i <= 30 else 2026, 1, 1), "born": born,
             "house_number": 100_000 + i, "note": f"secret {i}"}
            for i in range(1, 41)
        ])
    before = rows_by_id(db.engine, "clients", key="code")
    pf = write_policies(tmp_path / "policies.yaml", db.url, [people_policy(
        name="clients", table="clients", key="code", batch_size=7,
        fields={"born": "fake.date_of_birth", "house_number": "fake.random_int", "note": "redact"},
    )])
    result = run_cli(pf)
    assert result.exit_code == 0, result
    assert result.policy("clients")["applied"] == 30
    after = rows_by_id(db.engine, "clients", key="code")
    for code, row in after.items():
        if int(code[2:]) <= 30:
            assert isinstance(row["born"], dt.date) and row["born"] != born, row
            assert isinstance(row["house_number"], int) and row["house_number"] < 100_000, row
            assert row["note"] == "[verwijderd]", row
        else:
            assert row == before[code]


def test_mariadb_writes_a_batchs_fakes_in_chunks_of_rows(db_factory: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """MariaDB's per-row values go through JSON_TABLE in chunks (dialects.MYSQL_JSON_ROWS, 5,000:
    a whole batch's rows would spill to an on-disk temporary table). With chunks of 3, a batch of
    10 rows is four UPDATEs in one transaction, one audit entry of 10 keys, and every row is
    changed exactly once: the batch self-check would stop a chunk that missed or repeated rows."""
    db = db_factory("mariadb")
    monkeypatch.setattr(dialects, "MYSQL_JSON_ROWS", 3)
    md = sa.MetaData()
    users = sa.Table(
        "users", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("street", sa.String(100), nullable=True),
        sa.Column("left_at", sa.DateTime, nullable=True),
    )
    md.create_all(db.engine)
    with db.engine.begin() as conn:
        conn.execute(users.insert(), [
            {"id": i, "email": f"user{i}@old.example", "street": f"Straat {i}",
             "left_at": dt.datetime(2020 if i <= 10 else 2026, 1, 1)}
            for i in range(1, 13)
        ])
    pf = write_policies(tmp_path / "policies.yaml", db.url, [people_policy(
        name="users", table="users", fields={"email": "fake.email", "street": "redact"}, batch_size=10,
    )])
    with statements() as seen:
        result = run_cli(pf)
    assert result.exit_code == 0, result
    assert result.policy("users")["applied"] == 10
    assert sum(1 for s in seen if s.startswith("UPDATE users") and "JSON_TABLE" in s) == 4
    with db.engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT id, email FROM users")).all())
    assert [i for i, e in rows.items() if e.endswith("@old.example")] == [11, 12]
    entries = [json.loads(line) for line in audit_path(pf).read_text().splitlines()]
    batches = [e for e in entries if e["event"] == "batch"]
    assert [sorted(e["keys"]) for e in batches] == [list(range(1, 11))]

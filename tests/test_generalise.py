"""generalise.year/month/day on DATE and DATETIME, and generalise.band:N on integers, on every database.

Expected values are computed here in Python from the rows the test wrote, never by the package.
Bands floor (-1 in bands of 1000 is -1000); generalising twice changes nothing.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from helpers import invoke, rows_by_id, run_cli, write_policies

from retention.anonymisation import strategies

if TYPE_CHECKING:
    from conftest import TestDatabase

STAMPS = [dt.datetime(2024, 2, 29, 23, 59, 59), dt.datetime(2023, 12, 31, 0, 0, 1), dt.datetime(2020, 1, 1, 0, 0),
          dt.datetime(2019, 7, 15, 12, 30, 45)]
AMOUNTS = [0, 1, 999, 1000, 1001, -1, -999, -1000, -1001, 123_456]
GRAINS = ("year", "month", "day")


def truncate(value: dt.date, grain: str) -> dt.date:
    if grain == "year":
        value = value.replace(month=1, day=1)
    elif grain == "month":
        value = value.replace(day=1)
    if isinstance(value, dt.datetime):
        return value.replace(hour=0, minute=0, second=0, microsecond=0)
    return value


def create_facts(engine: sa.Engine) -> None:
    md = sa.MetaData()
    cols = [sa.Column(f"{g}_at", sa.DateTime, nullable=True) for g in GRAINS]
    cols += [sa.Column(f"{g}_on", sa.Date, nullable=True) for g in GRAINS]
    facts = sa.Table(
        "facts", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("left_at", sa.DateTime, nullable=True),
        *cols,
        sa.Column("amount", sa.Integer, nullable=True),
        sa.Column("small", sa.Integer, nullable=True),
        sa.Column("anonymised_at", sa.DateTime, nullable=True),
    )
    md.create_all(engine)
    rows = []
    for i, amount in enumerate(AMOUNTS, start=1):
        stamp = STAMPS[i % len(STAMPS)]
        row: dict[str, Any] = {"id": i, "left_at": dt.datetime(2020, 1, 1), "amount": amount, "small": i,
                               "anonymised_at": None}
        row |= {f"{g}_at": stamp for g in GRAINS} | {f"{g}_on": stamp.date() for g in GRAINS}
        rows.append(row)
    with engine.begin() as conn:
        conn.execute(facts.insert(), rows)


def facts_policy() -> dict[str, Any]:
    fields: dict[str, Any] = {f"{g}_at": f"generalise.{g}" for g in GRAINS}
    fields |= {f"{g}_on": f"generalise.{g}" for g in GRAINS}
    fields |= {"amount": "generalise.band:1000", "small": "generalise.band:5"}
    return {"name": "facts", "table": "facts", "after": "left_at", "retain": "1 year", "action": "anonymise",
            "fields": fields, "marker": "anonymised_at", "max_fraction": 1.0,
            # About the values: ten rows cannot be 5-anonymous on these columns.
            "reidentification": "warn"}


def floor_band(value: int, step: int) -> int:
    return (value // step) * step  # Python's // floors


def test_generalise_truncates_dates_and_floors_numbers_to_their_band(db: TestDatabase, tmp_path: Path) -> None:
    create_facts(db.engine)
    before = rows_by_id(db.engine, "facts")
    pf = write_policies(tmp_path / "policies.yaml", db.url, [facts_policy()])
    result = run_cli(pf, "--force")  # all ten rows are due: --force passes the 100 % guard
    assert result.exit_code == 0, result
    assert result.policy("facts")["applied"] == len(AMOUNTS)
    after = rows_by_id(db.engine, "facts")
    for key, old in before.items():
        new = after[key]
        for g in GRAINS:
            assert new[f"{g}_at"] == truncate(old[f"{g}_at"], g), (key, g, new[f"{g}_at"])
            assert new[f"{g}_on"] == truncate(old[f"{g}_on"], g), (key, g, new[f"{g}_on"])
        assert new["amount"] == floor_band(old["amount"], 1000), (key, old["amount"], new["amount"])
        assert new["small"] == floor_band(old["small"], 5), (key, old["small"], new["small"])
    assert {after[k]["amount"] for k in after} == {0, 1000, -1000, -2000, 123_000}


def test_generalising_twice_changes_nothing(db: TestDatabase, tmp_path: Path) -> None:
    """Idempotence, which the re-identification check relies on: run, clear the marker, run again."""
    create_facts(db.engine)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [facts_policy()])
    # Both runs change every row of the table: --force passes the 100 % guard.
    assert run_cli(pf, "--force").exit_code == 0
    once = rows_by_id(db.engine, "facts")
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE facts SET anonymised_at = NULL"))
    assert run_cli(pf, "--force", as_of="2026-11-24T04:00:00").exit_code == 0
    twice = rows_by_id(db.engine, "facts")
    for key in once:
        assert {k: v for k, v in twice[key].items() if k != "anonymised_at"} == \
            {k: v for k, v in once[key].items() if k != "anonymised_at"}


@pytest.mark.parametrize(("spec", "column", "message"), [
    ("generalise.band:1000", "year_at", "strategy 'generalise.band:1000' needs an integer column"),
    ("generalise.day", "amount", "strategy 'generalise.day' needs a date or datetime column"),
])
def test_generalise_refuses_a_column_of_the_wrong_type(db: TestDatabase, tmp_path: Path, spec: str, column: str,
                                                      message: str) -> None:
    create_facts(db.engine)
    policy = facts_policy()
    policy["fields"][column] = spec
    pf = write_policies(tmp_path / "policies.yaml", db.url, [policy])
    result = invoke(["--policies", str(pf), "validate"])
    assert result.exit_code == 2, result
    assert f"key 'fields.{column}': {message}" in result.stderr


@pytest.mark.parametrize(("spec", "message"), [
    ("generalise.week", "valid: null, redact, generalise.year, generalise.month, generalise.day, "
                        "generalise.postcode, generalise.band:N, fake.<provider>"),
    ("generalise.band:1", "generalise.band:N with N a whole number from 2"),
    ("generalise.band:ten", "generalise.band:N with N a whole number from 2"),
    ("generalise.band", "generalise.band:N with N a whole number from 2"),
    ("sha256", "unknown strategy 'sha256'"),
])
def test_unknown_or_malformed_strategies_list_the_valid_ones(spec: str, message: str) -> None:
    error = strategies.check_name(spec)
    assert error is not None and message in error


def test_no_strategy_is_a_hash_of_the_old_value() -> None:
    """The registry: constants, fresh fakes and coarser values; nothing named like a digest."""
    assert not [n for n in strategies.names() if any(h in n for h in ("hash", "sha", "md5", "hmac", "token"))]

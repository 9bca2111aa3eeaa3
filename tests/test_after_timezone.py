"""`after_timezone`: a naive `after` column holding another zone's wall clock (issue 11, item 5).

WooCommerce's ``*_gmt`` columns hold UTC without saying so. With ``after_timezone: UTC`` a
value is read as UTC, then aligned in the file's ``timezone``: an invoice at 2019-12-31 23:30
UTC is 2020-01-01 00:30 in Amsterdam, book year 2020, due on 2028-01-01 and not on 2027-01-01.
Previews for the issue's dates (a real run cannot look ahead), real runs for the same rule
shifted back two years; what is left is read with plain SQL.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pendulum
import pytest
import sqlalchemy as sa
from helpers import ids, invoke, run_cli, write_policies

from retention.policy.dates import cutoff, parse_period

if TYPE_CHECKING:
    from conftest import DatabaseFactory, TestDatabase

D = dt.datetime


def setup(db: TestDatabase, tmp_path: Path, rows: dict[int, dt.datetime], **overrides: Any) -> Path:
    md = sa.MetaData()
    invoices = sa.Table(
        "invoices", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("issued_at_gmt", sa.DateTime, nullable=True, index=True),
    )
    md.create_all(db.engine)
    with db.engine.begin() as conn:
        conn.execute(invoices.insert(), [{"id": k, "issued_at_gmt": v} for k, v in rows.items()])
    policy = {"name": "invoices", "table": "invoices", "after": "issued_at_gmt", "after_timezone": "UTC",
              "retain": "7 years", "align": "end_of_year", "action": "delete", "max_fraction": 1.0, **overrides}
    return write_policies(tmp_path / "policies.yaml", db.url, [policy])


def due_keys(pf: Path, as_of: str) -> int:
    # --force: three invoices all due is the boundary under test, not an emptied-table mistake.
    result = run_cli(pf, "--dry-run", "--force", as_of=as_of)
    assert result.exit_code == 0, result
    return int(result.policy("invoices")["due"])


# The invoices, UTC: the last one of book year 2019 in Amsterdam (22:59:59 UTC is
# 23:59:59 local), the first of 2020 (23:00 UTC is midnight local) and the 23:30.
BOOK_YEAR_EDGE = {1: D(2019, 12, 31, 22, 59, 59), 2: D(2019, 12, 31, 23, 0, 0), 3: D(2019, 12, 31, 23, 30)}


def test_utc_invoice_of_new_years_eve_is_book_year_2020_in_amsterdam(db: TestDatabase, tmp_path: Path) -> None:
    """2027-01-01 00:00 Amsterdam: only the 2019 invoice (22:59:59 UTC) is due; 23:00 and 23:30 UTC
    are book year 2020 and wait until 2028-01-01 00:00, not a microsecond less."""
    pf = setup(db, tmp_path, BOOK_YEAR_EDGE)
    assert due_keys(pf, "2026-12-31T23:59:59") == 0
    assert due_keys(pf, "2027-01-01T00:00:00") == 1
    assert due_keys(pf, "2027-12-31T23:59:59") == 1
    assert due_keys(pf, "2028-01-01T00:00:00") == 3


def test_without_after_timezone_the_values_are_the_files_wall_clock(db: TestDatabase, tmp_path: Path) -> None:
    """The default is unchanged: the same values read as Amsterdam time are all book year 2019."""
    pf = setup(db, tmp_path, BOOK_YEAR_EDGE, after_timezone=None)
    assert due_keys(pf, "2026-12-31T23:59:59") == 0
    assert due_keys(pf, "2027-01-01T00:00:00") == 3


def test_real_runs_delete_by_the_book_year_of_amsterdam(db: TestDatabase, tmp_path: Path) -> None:
    """The same boundary two years back, really run: on 2026-01-01 00:00 (Amsterdam) the UTC
    invoice of 2018-12-31 22:59:59 goes, those of 23:00 and 23:30 UTC (2019 locally) stay."""
    rows = {k: v.replace(year=2018) for k, v in BOOK_YEAR_EDGE.items()}
    pf = setup(db, tmp_path, rows)
    result = run_cli(pf, as_of="2025-12-31T23:59:59")
    assert result.exit_code == 0 and result.policy("invoices")["applied"] == 0, result
    result = run_cli(pf, as_of="2026-01-01T00:00:00")
    assert result.exit_code == 0 and result.policy("invoices")["applied"] == 1, result
    assert ids(db.engine, "SELECT id FROM invoices") == {2, 3}


def test_dst_edges_of_a_utc_column_in_an_amsterdam_file(db: TestDatabase, tmp_path: Path) -> None:
    """`retain: 1 day`, `align: none`. Spring: at 2026-03-30 02:30 (its cut-off, 2026-03-29 02:30,
    is in the gap) the last due event is 00:59:59 UTC (01:59:59 CET); 01:00 UTC (03:00 CEST) is
    due at 03:00. Autumn: 2026-10-25 02:00-03:00 local happens twice (00:00-01:00 UTC, then
    01:00-02:00 UTC). 00:30:00 UTC (02:30 CEST) is due at 2026-10-26 02:30, 00:30:01 UTC a second
    later; 01:15 UTC (02:15 CET, the second 02:15) waits until the repeated hour has passed, at
    03:00, as a column with a time zone does: never early, at most an hour late."""
    rows = {1: D(2026, 3, 29, 0, 59, 59), 2: D(2026, 3, 29, 1, 0, 0),
            3: D(2026, 10, 25, 0, 30, 0), 4: D(2026, 10, 25, 0, 30, 1), 5: D(2026, 10, 25, 1, 15, 0)}
    pf = setup(db, tmp_path, rows, retain="1 day", align="none")

    def run(as_of: str, gone: set[int]) -> None:
        before = ids(db.engine, "SELECT id FROM invoices")
        # --force: the last run takes the table's last row, which the 100 % guard would stop.
        result = run_cli(pf, "--force", as_of=as_of)
        assert result.exit_code == 0 and result.policy("invoices")["applied"] == len(gone), (as_of, result)
        assert ids(db.engine, "SELECT id FROM invoices") == before - gone, as_of

    run("2026-03-30T02:30:00", {1})
    run("2026-03-30T02:59:59", set())
    run("2026-03-30T03:00:00", {2})
    run("2026-10-26T02:30:00", {3})
    run("2026-10-26T02:30:01", {4})
    run("2026-10-26T02:59:59", set())
    run("2026-10-26T03:00:00", {5})


def test_a_column_with_a_time_zone_refuses_after_timezone(db_factory: DatabaseFactory, tmp_path: Path) -> None:
    postgresql_db = db_factory("postgresql")
    md = sa.MetaData()
    sa.Table("invoices", md, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("issued_at", sa.DateTime(timezone=True), index=True))
    md.create_all(postgresql_db.engine)
    pf = write_policies(tmp_path / "policies.yaml", postgresql_db.url, [{
        "name": "invoices", "table": "invoices", "after": "issued_at", "after_timezone": "UTC",
        "retain": "7 years", "action": "delete"}])
    result = invoke(["--policies", str(pf), "validate"])
    assert result.exit_code == 2, result
    assert ("policy 'invoices', key 'after_timezone': column 'issued_at' carries its own time zone"
            in result.stderr), result


# -- the pure part ------------------------------------------------------------------------------

AMS = "Europe/Amsterdam"


@pytest.mark.parametrize(
    ("as_of", "zone", "period", "align", "local"),
    [
        # UTC has no clock changes: the same instant, UTC's wall clock.
        ((2027, 1, 1), "UTC", "7 years", "end_of_year", D(2019, 12, 31, 22, 59, 59, 999999)),
        ((2027, 7, 1), "UTC", "7 years", "end_of_year", D(2019, 12, 31, 22, 59, 59, 999999)),
        # The repeated hour of the column's zone: only wall times whose both instants are due.
        ((2026, 10, 26, 0, 30), AMS, "1 day", "none", D(2026, 10, 25, 1, 59, 59, 999999)),
        ((2026, 10, 26, 1, 30), AMS, "1 day", "none", D(2026, 10, 25, 2, 30)),
        # The gap: wall times 02:00-03:00 do not occur; 01:30 UTC is 03:30 CEST.
        ((2026, 3, 30, 1, 30), AMS, "1 day", "none", D(2026, 3, 29, 3, 30)),
    ],
)
def test_in_zone_gives_the_last_wall_time_all_of_whose_instants_are_due(
    as_of: tuple[int, ...], zone: str, period: str, align: str, local: dt.datetime
) -> None:
    """File in UTC for the DST rows (so the instants are plain), Amsterdam for the book year."""
    file_zone = AMS if zone == "UTC" else "UTC"
    moment = pendulum.datetime(*as_of, tz=file_zone)
    assert cutoff(moment, parse_period(period), align, file_zone).in_zone(zone).local == local  # type: ignore[arg-type]


def test_in_zone_moves_month_end_windows_too() -> None:
    """2026-02-28 12:00 Amsterdam, 24 months: the window of 29 February 00:00-12:00 local is
    2024-02-28 23:00 to 2024-02-29 11:00 UTC, and the main range ends at 11:00 UTC."""
    cut = cutoff(pendulum.datetime(2026, 2, 28, 12, tz=AMS), parse_period("24 months"), "none", AMS).in_zone("UTC")
    assert cut.local == D(2024, 2, 28, 11)
    assert cut.windows == ((D(2024, 2, 28, 23), D(2024, 2, 29, 11)),)


def test_explain_gives_the_term_end_of_the_files_book_year_in_its_zone(db: TestDatabase, tmp_path: Path) -> None:
    """`explain` says when a UTC invoice's term ends as the run decides it: 2019-12-31 23:30 UTC is
    book year 2020 in Amsterdam, so the term ends at the end of 2027 Amsterdam time (not 2026), and
    the text names the zone; 22:59:59 UTC is still book year 2019."""
    pf = setup(db, tmp_path, BOOK_YEAR_EDGE)
    for key, end in ((3, "2027-12-31 23:59:59 Europe/Amsterdam"), (1, "2026-12-31 23:59:59 Europe/Amsterdam")):
        out = invoke(["--policies", str(pf), "--log-format", "json", "explain", "invoices", str(key),
                      "--as-of", "2026-06-01T00:00:00", "--format", "json"], parse_json=True)
        assert out.exit_code == 0, out
        assert out.data["term_end"] == end and out.data["fate"] == "kept", out.data

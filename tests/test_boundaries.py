"""Where a retention term ends, to the second, on SQLite, PostgreSQL and MariaDB.

Small hand-made tables (an ``events`` table and its ``event_notes``), policies in the
Europe/Amsterdam calendar, and both the preview's counts and real runs (which rows are
left). A real run only accepts moments in the past, so the real runs here go in
ascending order of ``--as-of`` over the same rows.

The rule (CONTRACT.md section 2): due when ``after`` is not NULL and ``after + retain``
(aligned, local wall clock, calendar months/years) is at or before the moment.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from helpers import ids, run_cli, write_policies

if TYPE_CHECKING:
    from conftest import DatabaseFactory, TestDatabase

D = dt.datetime


def create_events(engine: sa.Engine, *, aware: bool = False) -> None:
    md = sa.MetaData()
    sa.Table(
        "events", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("happened_at", sa.DateTime(timezone=aware), nullable=True),
        sa.Column("happened_on", sa.Date, nullable=True),
        sa.Column("legal_hold", sa.Boolean, nullable=True),
        sa.Column("kind", sa.String(20), nullable=True),
    )
    sa.Table(
        "event_notes", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.Integer, sa.ForeignKey("events.id"), nullable=False, index=True),
        sa.Column("note", sa.String(100), nullable=False),
    )
    md.create_all(engine)


def add_events(engine: sa.Engine, rows: dict[int, dict[str, Any]], notes: dict[int, int] | None = None) -> None:
    """``rows``: id -> column values; ``notes``: note id -> event id."""
    md = sa.MetaData()
    events = sa.Table("events", md, autoload_with=engine)
    event_notes = sa.Table("event_notes", md, autoload_with=engine)
    full = [{"id": k, "happened_at": None, "happened_on": None, "legal_hold": False, "kind": None, **v}
            for k, v in rows.items()]
    with engine.begin() as conn:
        conn.execute(events.insert(), full)
        if notes:
            conn.execute(event_notes.insert(),
                         [{"id": n, "event_id": e, "note": f"note {n}"} for n, e in notes.items()])


def policy(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "events", "table": "events", "after": "happened_at", "retain": "24 months",
        "action": "delete", "max_fraction": 1.0,
    }
    base.update(overrides)
    return base


def setup(db: TestDatabase, tmp_path: Path, rows: dict[int, dict[str, Any]], notes: dict[int, int] | None = None,
          **overrides: Any) -> Path:
    create_events(db.engine)
    add_events(db.engine, rows, notes)
    return write_policies(tmp_path / "policies.yaml", db.url, [policy(**overrides)])


def remaining(db: TestDatabase) -> set[int]:
    return ids(db.engine, "SELECT id FROM events")


def preview(policy_file: Path, as_of: str) -> dict[str, Any]:
    result = run_cli(policy_file, "--dry-run", "--force", as_of=as_of)
    assert result.exit_code == 0, result
    return result.policy("events")


def step(db: TestDatabase, policy_file: Path, as_of: str, newly_due: set[int]) -> dict[str, Any]:
    """Preview then really run at ``as_of``: exactly ``newly_due`` goes, the rest stays.

    When nothing is due, only the preview runs (it makes the same selection as a real run, which
    test_run pins), to keep these many small steps fast.
    """
    before = remaining(db)
    assert newly_due <= before
    p = preview(policy_file, as_of)
    assert p["due"] == len(newly_due), as_of
    if not newly_due:
        return p
    result = run_cli(policy_file, "--force", as_of=as_of)
    assert result.exit_code == 0, result
    p = result.policy("events")
    assert p["applied"] == len(newly_due), as_of
    assert remaining(db) == before - newly_due, as_of
    return p


# ------------------------------------------------------------------------------------------


def test_row_exactly_at_the_cutoff_and_one_second_before_are_due_one_second_after_is_not(
    db: TestDatabase, tmp_path: Path
) -> None:
    """24 months at 2026-11-24T03:00: 2024-11-24 03:00:00 and 02:59:59 go (with their notes), 03:00:01
    stays; a second later it goes too."""
    rows = {1: {"happened_at": D(2024, 11, 24, 3, 0, 0)}, 2: {"happened_at": D(2024, 11, 24, 2, 59, 59)},
            3: {"happened_at": D(2024, 11, 24, 3, 0, 1)}}
    notes = {10: 1, 11: 1, 12: 2, 13: 3}
    pf = setup(db, tmp_path, rows, notes, cascade=["event_notes"])
    assert preview(pf, "2026-11-24T03:00:00")["cascaded"] == {"event_notes": 3}

    p = step(db, pf, "2026-11-24T03:00:00", {1, 2})
    assert p["cutoff"] == "2024-11-24T03:00:00+01:00"
    assert p["cascaded"] == {"event_notes": 3}
    assert ids(db.engine, "SELECT id FROM event_notes") == {13}
    step(db, pf, "2026-11-24T03:00:01", {3})
    assert ids(db.engine, "SELECT id FROM event_notes") == set()


def test_date_column_counts_from_the_start_of_its_day(db: TestDatabase, tmp_path: Path) -> None:
    """A DATE is the start of that day: 2024-10-22 is due from 2026-10-22T00:00:00, not at 2026-10-21T23:59:59."""
    rows = {1: {"happened_on": dt.date(2024, 10, 21)}, 2: {"happened_on": dt.date(2024, 10, 22)},
            3: {"happened_on": dt.date(2024, 10, 23)}}
    pf = setup(db, tmp_path, rows, after="happened_on")
    step(db, pf, "2026-10-21T23:59:59", {1})
    step(db, pf, "2026-10-22T00:00:00", {2})
    step(db, pf, "2026-10-22T23:59:59", set())
    step(db, pf, "2026-10-23T00:00:00", {3})


def test_29_february_date_is_due_on_28_february(db: TestDatabase, tmp_path: Path) -> None:
    """DATE 2024-02-29 + 24 months = 2026-02-28: due from 2026-02-28T00:00 (with 2024-02-28), not on
    the 27th; 2024-03-01 only on 1 March."""
    rows = {1: {"happened_on": dt.date(2024, 2, 28)}, 2: {"happened_on": dt.date(2024, 2, 29)},
            3: {"happened_on": dt.date(2024, 3, 1)}}
    pf = setup(db, tmp_path, rows, after="happened_on")
    step(db, pf, "2026-02-27T23:59:59", set())
    step(db, pf, "2026-02-28T00:00:00", {1, 2})
    step(db, pf, "2026-02-28T23:59:59", set())
    step(db, pf, "2026-03-01T00:00:00", {3})


def test_29_february_datetime_rows_each_go_at_their_own_term(db: TestDatabase, tmp_path: Path) -> None:
    """DateTime rows around 29 February, 24 months: each goes exactly at its term and not before
    (2024-02-28 12:00 not at 11:59:59; 2024-02-29 10:00 at 10:00, before it); 2024-03-01 00:00
    only from 1 March."""
    rows = {1: {"happened_at": D(2024, 2, 28, 9, 0)}, 2: {"happened_at": D(2024, 2, 28, 12, 0)},
            3: {"happened_at": D(2024, 2, 29, 10, 0)}, 4: {"happened_at": D(2024, 3, 1, 0, 0)}}
    pf = setup(db, tmp_path, rows)
    step(db, pf, "2026-02-28T08:59:59", set())
    step(db, pf, "2026-02-28T09:00:00", {1})
    assert preview(pf, "2026-02-28T09:59:59")["due"] == 0
    assert preview(pf, "2026-02-28T11:59:59")["due"] == 1  # 29 Feb 10:00, not 28 Feb 12:00
    step(db, pf, "2026-02-28T10:00:00", {3})
    step(db, pf, "2026-02-28T11:59:59", set())
    step(db, pf, "2026-02-28T12:00:00", {2})
    step(db, pf, "2026-02-28T23:59:59.999999", set())
    step(db, pf, "2026-03-01T00:00:00", {4})


def test_29_february_datetime_is_due_at_its_time_of_day_on_28_february(db: TestDatabase, tmp_path: Path) -> None:
    """Contract-exact: 2024-02-29T10:00 + 24 months = 2026-02-28T10:00, so due at 2026-02-28T10:00 and
    not at 09:59:59, while 2024-02-28T12:00 stays until 12:00 (the due set is a range plus a window)."""
    rows = {2: {"happened_at": D(2024, 2, 28, 12, 0)}, 3: {"happened_at": D(2024, 2, 29, 10, 0)}}
    pf = setup(db, tmp_path, rows)
    step(db, pf, "2026-02-28T09:59:59", set())
    step(db, pf, "2026-02-28T10:00:00", {3})
    step(db, pf, "2026-02-28T12:00:00", {2})


# (event, due from): `1 days` around Europe/Amsterdam's DST switches, in ascending order.
DST_CASES = {
    # Spring forward (02:00 -> 03:00): the day has 23 hours; a day is still a calendar day.
    1: (D(2026, 3, 28, 12, 0), "2026-03-29T12:00:00"),
    2: (D(2026, 3, 29, 1, 30), "2026-03-30T01:30:00"),  # before the gap: 23 real hours
    # Fall back (03:00 -> 02:00): the day has 25 hours.
    3: (D(2026, 10, 24, 12, 0), "2026-10-25T12:00:00"),
    4: (D(2026, 10, 25, 1, 30), "2026-10-26T01:30:00"),  # before the repeated hour: 25 real hours
}


def test_days_across_a_dst_switch_count_wall_clock_days(db: TestDatabase, tmp_path: Path) -> None:
    """`1 days` across a DST switch is one wall-clock day, not 24 hours: each event is due at the same
    local time the next day and not a second before (an hour early or late would show)."""
    pf = setup(db, tmp_path, {i: {"happened_at": event} for i, (event, _) in DST_CASES.items()}, retain="1 days")
    for i, (_, due_from) in DST_CASES.items():
        moment = dt.datetime.fromisoformat(due_from)
        step(db, pf, (moment - dt.timedelta(seconds=1)).isoformat(), set())
        step(db, pf, due_from, {i})


def test_end_of_year_alignment_counts_from_the_end_of_the_book_year(db: TestDatabase, tmp_path: Path) -> None:
    """7 years from the end of the year: 2019-12-31T23:59:59 and 2019-01-01 are due at 2027-01-01T00:00,
    not at 2026-12-31T23:59:59; 2020-01-01T00:00 is not due at 2027-01-01 (preview: 2027 may be ahead).
    The same one year earlier with real runs, for DateTime and DATE columns."""
    rows = {
        1: {"happened_at": D(2019, 12, 31, 23, 59, 59), "happened_on": dt.date(2019, 12, 31)},
        2: {"happened_at": D(2019, 1, 1, 0, 0, 0), "happened_on": dt.date(2019, 1, 1)},
        3: {"happened_at": D(2020, 1, 1, 0, 0, 0), "happened_on": dt.date(2020, 1, 1)},
        # The same, one year earlier, for the real runs.
        4: {"happened_at": D(2018, 12, 31, 23, 59, 59), "happened_on": dt.date(2018, 12, 31)},
        5: {"happened_at": D(2018, 1, 1, 0, 0, 0), "happened_on": dt.date(2018, 1, 1)},
        6: {"happened_at": D(2019, 1, 1, 0, 0, 0), "happened_on": dt.date(2019, 1, 1), "kind": "x"},
    }
    create_events(db.engine)
    add_events(db.engine, rows)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [
        policy(name="at", retain="7 years", align="end_of_year"),
        policy(name="on", after="happened_on", retain="7 years", align="end_of_year"),
    ])

    def due(as_of: str) -> tuple[int, int]:
        result = run_cli(pf, "--dry-run", "--force", as_of=as_of)
        assert result.exit_code == 0, result
        return result.policy("at")["due"], result.policy("on")["due"]

    # Rows 4 and 5 (book year 2018) are due from 2026-01-01 on, so counts below include them.
    assert due("2026-12-31T23:59:59") == (2, 2)
    assert due("2027-01-01T00:00:00") == (2 + 3, 2 + 3)  # 1, 2 and 6 (also 2019-01-01) join 4, 5
    assert due("2027-12-31T23:59:59") == (5, 5)  # 2020-01-01 (row 3) still not due
    assert due("2028-01-01T00:00:00") == (6, 6)

    before = remaining(db)
    result = run_cli(pf, "--policy", "at", "--force", as_of="2025-12-31T23:59:59")
    assert result.exit_code == 0, result
    assert result.policy("at")["applied"] == 0
    assert result.policy("at")["cutoff"].startswith("2017-12-31T23:59:59")
    result = run_cli(pf, "--policy", "at", "--force", as_of="2026-01-01T00:00:00")
    assert result.exit_code == 0, result
    assert result.policy("at")["applied"] == 2
    assert remaining(db) == before - {4, 5}


def test_end_of_year_alignment_on_a_date_column_with_real_runs(db: TestDatabase, tmp_path: Path) -> None:
    """DATE with end_of_year, 7 years: 2018-12-31 and 2018-01-01 go at 2026-01-01T00:00, not at
    2025-12-31T23:59:59; 2019-01-01 stays."""
    rows = {4: {"happened_on": dt.date(2018, 12, 31)}, 5: {"happened_on": dt.date(2018, 1, 1)},
            6: {"happened_on": dt.date(2019, 1, 1)}}
    pf = setup(db, tmp_path, rows, after="happened_on", retain="7 years", align="end_of_year")
    step(db, pf, "2025-12-31T23:59:59", set())
    step(db, pf, "2026-01-01T00:00:00", {4, 5})
    assert remaining(db) == {6}


def test_null_after_is_never_due(db: TestDatabase, tmp_path: Path) -> None:
    """A NULL event column means the event has not happened: never due, never held, at any moment."""
    rows = {1: {"happened_at": None}, 2: {"happened_at": None, "legal_hold": True},
            3: {"happened_at": D(2010, 1, 1)}}
    pf = setup(db, tmp_path, rows, exclude={"legal_hold": True})
    p = preview(pf, "2099-01-01T00:00:00")
    assert (p["due"], p["held"]) == (1, 0)
    step(db, pf, "2026-11-24T03:00:00", {3})
    assert remaining(db) == {1, 2}


def test_exclude_with_a_null_hold_flag_is_no_hold(db: TestDatabase, tmp_path: Path) -> None:
    """exclude {legal_hold: true}: a row with legal_hold NULL is not held, so it is due like a false one."""
    old = D(2020, 1, 1, 12, 0)
    rows = {1: {"happened_at": old, "legal_hold": True}, 2: {"happened_at": old, "legal_hold": False},
            3: {"happened_at": old, "legal_hold": None}, 4: {"happened_at": D(2026, 1, 1), "legal_hold": None}}
    pf = setup(db, tmp_path, rows, exclude={"legal_hold": True})
    p = preview(pf, "2026-11-24T03:00:00")
    assert (p["due"], p["held"], p["deferred"]) == (2, 1, 0)
    p = step(db, pf, "2026-11-24T03:00:00", {2, 3})
    assert p["held"] == 1
    assert remaining(db) == {1, 4}


def test_where_limits_the_policy_to_matching_rows(db: TestDatabase, tmp_path: Path) -> None:
    """where {kind: closed}: only closed rows past their term are due; open and NULL-kind rows are
    neither due nor held, and stay."""
    old = D(2020, 1, 1, 12, 0)
    rows = {1: {"happened_at": old, "kind": "closed"}, 2: {"happened_at": old, "kind": "open"},
            3: {"happened_at": old, "kind": None}, 4: {"happened_at": D(2026, 1, 1), "kind": "closed"},
            5: {"happened_at": old, "kind": "closed", "legal_hold": True}}
    pf = setup(db, tmp_path, rows, where={"kind": "closed"}, exclude={"legal_hold": True})
    p = preview(pf, "2026-11-24T03:00:00")
    assert (p["due"], p["held"]) == (1, 1)
    step(db, pf, "2026-11-24T03:00:00", {1})
    assert remaining(db) == {2, 3, 4, 5}


def test_due_row_referenced_without_cascade_is_deferred(db: TestDatabase, tmp_path: Path) -> None:
    """Without `cascade`, a due event that a note still points at is deferred (reason event_notes),
    not deleted; an unreferenced one goes."""
    old = D(2020, 1, 1, 12, 0)
    pf = setup(db, tmp_path, {1: {"happened_at": old}, 2: {"happened_at": old}}, {10: 1})
    p = preview(pf, "2026-11-24T03:00:00")
    assert (p["due"], p["deferred"], p["deferred_reasons"]) == (2, 1, {"event_notes": 1})
    result = run_cli(pf, "--force")
    assert result.exit_code == 0, result
    p = result.policy("events")
    assert (p["due"], p["deferred"], p["applied"]) == (2, 1, 1)
    assert p["deferred_reasons"] == {"event_notes": 1}
    assert remaining(db) == {1}
    assert ids(db.engine, "SELECT id FROM event_notes") == {10}


def test_timezone_aware_column_is_compared_as_an_instant(db_factory: DatabaseFactory, tmp_path: Path) -> None:
    """PostgreSQL timestamptz: the cut-off 2024-11-24T03:00 Europe/Amsterdam is the instant 02:00 UTC;
    a row stored at 02:00:00Z is due, 02:00:01Z is not, whatever the session's time zone."""
    db = db_factory("postgresql")
    create_events(db.engine, aware=True)
    utc = dt.UTC
    add_events(db.engine, {1: {"happened_at": D(2024, 11, 24, 2, 0, 0, tzinfo=utc)},
                           2: {"happened_at": D(2024, 11, 24, 2, 0, 1, tzinfo=utc)},
                           3: {"happened_at": D(2024, 11, 24, 2, 59, 0, tzinfo=utc)}})
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{db.engine.url.database}" SET timezone TO \'America/New_York\'')
    pf = write_policies(tmp_path / "policies.yaml", db.url, [policy()])
    step(db, pf, "2026-11-24T03:00:00", {1})
    assert remaining(db) == {2, 3}

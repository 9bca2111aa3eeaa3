"""A first run's backlog: the same rows go whether the planner walks the index or scans.

When more than a fifth of a table is past its term, SQLite (which has no range statistics) is
steered to scan the table instead of fetching a third of it row by row through the ``after``
index (planning.Plan.choose_access, dialects.unindexed). That changes every statement's text,
so the boundary cases are checked again on a table large enough to take that path, and on
PostgreSQL and MariaDB (where the path is off) for the same answer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from helpers import ids, invoke, run_cli, write_policies

if TYPE_CHECKING:
    from conftest import TestDatabase

D = dt.datetime
OLD = 5_000  # ids 1..OLD happened in 2015: far past the term, most of the table
HELD = 7
EDGES = {
    6001: D(2024, 2, 28, 12, 0),  # due at 2026-02-28 12:00
    6002: D(2024, 2, 29, 10, 0),  # due at 2026-02-28 10:00 (the month-end window)
    6003: D(2024, 2, 29, 10, 0, 1),  # one second later
    6004: None,  # never due
    6005: D(2024, 3, 1, 0, 0),  # due on 1 March
}


def create(engine: sa.Engine, old: int) -> None:
    md = sa.MetaData()
    events = sa.Table(
        "events", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("happened_at", sa.DateTime, nullable=True, index=True),
        sa.Column("legal_hold", sa.Boolean, nullable=True),
    )
    notes = sa.Table(
        "event_notes", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.Integer, sa.ForeignKey("events.id"), nullable=False, index=True),
    )
    md.create_all(engine)
    rows: list[dict[str, Any]] = [
        {"id": i, "happened_at": D(2015, 6, 1, 12, 0), "legal_hold": i == HELD} for i in range(1, old + 1)
    ]
    rows += [{"id": i, "happened_at": at, "legal_hold": False} for i, at in EDGES.items()]
    with engine.begin() as conn:
        conn.execute(events.insert(), rows)
        conn.execute(notes.insert(), [{"id": 10_000 + i, "event_id": i} for i in (1, 2, HELD, 6002, 6003)])


@contextmanager
def statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def policy_file(db: TestDatabase, tmp_path: Path) -> Path:
    return write_policies(tmp_path / "policies.yaml", db.url, [{
        "name": "events", "table": "events", "after": "happened_at", "retain": "24 months",
        "action": "delete", "cascade": ["event_notes"], "exclude": {"legal_hold": True}, "max_fraction": 1.0,
    }])


def test_backlog_run_removes_exactly_the_due_rows_at_the_boundaries(db: TestDatabase, tmp_path: Path) -> None:
    """5,000 old rows and the month-end edge cases: at 2026-02-28 10:00 the preview and the run take
    the old rows (not the held one) and 2024-02-29 10:00 with their notes, and leave 10:00:01, 28 Feb
    12:00, NULL and 1 March; on SQLite by scanning (the statements carry the unary-plus hint)."""
    create(db.engine, OLD)
    pf = policy_file(db, tmp_path)
    due = set(range(1, OLD + 1)) - {HELD} | {6002}
    with statements() as seen:
        preview = run_cli(pf, "--dry-run", "--force", as_of="2026-02-28T10:00:00")
        assert preview.exit_code == 0, preview
        p = preview.policy("events")
        assert (p["due"], p["held"], p["cascaded"]) == (len(due), 1, {"event_notes": 3})
        result = run_cli(pf, "--force", as_of="2026-02-28T10:00:00")
    assert result.exit_code == 0, result
    assert result.policy("events")["applied"] == len(due)
    assert result.policy("events")["cascaded"] == {"event_notes": 3}
    assert ids(db.engine, "SELECT id FROM events") == {HELD, 6001, 6003, 6004, 6005}
    assert ids(db.engine, "SELECT event_id FROM event_notes") == {HELD, 6003}
    hinted = any("(+ " in s for s in seen)
    assert hinted == (db.name == "sqlite")

    again = run_cli(pf, as_of="2026-02-28T10:00:01")
    assert (again.exit_code, again.policy("events")["applied"]) == (0, 1)
    assert ids(db.engine, "SELECT id FROM events") == {HELD, 6001, 6004, 6005}


def test_a_due_share_below_a_fifth_keeps_the_index(db: TestDatabase, tmp_path: Path) -> None:
    """With 1,500 old rows among 10,005 (15%), nothing is hinted: the ``after`` index stays in use,
    as on a normal night."""
    create(db.engine, 1_500)
    md = sa.MetaData()
    events = sa.Table("events", md, autoload_with=db.engine)
    with db.engine.begin() as conn:  # 8,500 recent rows: inside their term
        conn.execute(events.insert(), [{"id": 20_000 + i, "happened_at": D(2026, 1, 1), "legal_hold": False}
                                       for i in range(8_500)])
    pf = policy_file(db, tmp_path)
    with statements() as seen:
        preview = run_cli(pf, "--dry-run", "--force", as_of="2026-02-28T10:00:00")
    assert preview.exit_code == 0, preview
    assert preview.policy("events")["due"] == 1_500 - 1 + 1  # the old rows but the held one, and 6002
    assert not any("(+ " in s for s in seen)


def test_the_reidentification_check_scans_the_backlog_too(db: TestDatabase, tmp_path: Path) -> None:
    """The check's statement reads the same third-of-the-table range as the counts before it: on
    SQLite it scans as they do (it walked the index, 3.5 s instead of 0.9 s at 1M accounts), with
    the numbers of plain SQL: 4,999 old rows not held share 2015, the one row of 2024 is alone."""
    create(db.engine, OLD)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE events ADD COLUMN anonymised_at TIMESTAMP NULL")
    pf = write_policies(tmp_path / "policies.yaml", db.url, [{
        "name": "events", "table": "events", "after": "happened_at", "retain": "24 months",
        "action": "anonymise", "fields": {"happened_at": "generalise.year"}, "marker": "anonymised_at",
        "keep": {"legal_hold": "the hold flag, the same on every anonymised row"},
        "exclude": {"legal_hold": True}, "reidentification": "warn", "max_fraction": 1.0,
    }])
    year = "strftime('%Y', happened_at)" if db.name == "sqlite" else "EXTRACT(YEAR FROM happened_at)"
    with db.engine.connect() as conn:
        sizes = sorted(n for (n,) in conn.execute(sa.text(
            # The due rows, as the boundary test above names them: the old ones but the held one,
            # and 2024-02-29 10:00 (the month-end window).
            f"SELECT COUNT(*) FROM events WHERE (id <= {OLD} AND legal_hold = false) OR id = 6002 "
            f"GROUP BY {year}")))
    assert sizes == [1, OLD - 1]
    with statements() as seen:
        preview = run_cli(pf, "--dry-run", "--force", as_of="2026-02-28T10:00:00")
    assert preview.exit_code == 0, preview
    reid = preview.policy("events")["reidentification"]
    assert (reid["rows"], reid["k"], reid["below_k"]) == (OLD, 1, 1)
    check = [s for s in seen if "min(rt_" in s]  # rt_groups, or rt_sized (MariaDB: a window)
    assert len(check) == 1 and ("(+ " in check[0]) == (db.name == "sqlite")
    # validate measures it too, without counting first: the same choice, the same numbers.
    with statements() as seen:
        checked = invoke(["--policies", str(pf), "--log-format", "json", "validate"])
    assert checked.exit_code == 0, checked
    check = [s for s in seen if "min(rt_" in s]  # rt_groups, or rt_sized (MariaDB: a window)
    assert len(check) == 1 and ("(+ " in check[0]) == (db.name == "sqlite")


def test_many_due_rows_for_their_batches_walk_the_key_in_the_batches(db: TestDatabase, tmp_path: Path) -> None:
    """1,500 rows due among 10,005 (below a fifth: the counts keep the index) in batches of 50:
    through the `after` index every batch would visit all remaining due rows and sort them (at 10M
    accounts, 780,000 invoices: 1.75 s a batch, the run never ended). Above sqrt(2 x batch x table)
    due rows the batches walk the key instead (SQLite: the unary-plus hint in the batch statements
    only), and take exactly the due rows: the old ones but the held one, and 2024-02-29 10:00."""
    create(db.engine, 1_500)
    md = sa.MetaData()
    events = sa.Table("events", md, autoload_with=db.engine)
    with db.engine.begin() as conn:
        conn.execute(events.insert(), [{"id": 20_000 + i, "happened_at": D(2026, 1, 1), "legal_hold": False}
                                       for i in range(8_500)])
    pf = write_policies(tmp_path / "policies.yaml", db.url, [{
        "name": "events", "table": "events", "after": "happened_at", "retain": "24 months",
        "action": "delete", "cascade": ["event_notes"], "exclude": {"legal_hold": True}, "max_fraction": 1.0,
        "batch_size": 50,
    }])
    with statements() as seen:
        result = run_cli(pf, "--force", as_of="2026-02-28T10:00:00")
    assert result.exit_code == 0, result
    assert result.policy("events")["applied"] == 1_500
    assert ids(db.engine, "SELECT id FROM events WHERE id < 20000") == {HELD, 6001, 6003, 6004, 6005}
    assert ids(db.engine, "SELECT event_id FROM event_notes") == {HELD, 6003}
    batches = [s for s in seen if "ORDER BY events.id" in s and "LIMIT" in s]
    counts = [s for s in seen if "count(" in s.lower() and "events.happened_at" in s]
    assert batches and counts
    assert all(("(+ " in s) == (db.name == "sqlite") for s in batches)
    assert not any("(+ " in s for s in counts)

"""Clock sanity and the guards on how much one night changes.

- A real run earlier than the last real run in the audit log is refused (exit 2, both times in
  the message, nothing touched); a dry run may look at any moment.
- A policy that would change every row of its table is blocked (exit 3) even with
  ``max_fraction: 1.0``, unless ``--force``.
- The rate guard: a first real run with more than 100 rows to change, or a night with more than
  10x the median of the policy's last real runs (and more than 100 rows), is blocked with both
  figures, unless ``--force``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from helpers import ids, run_cli, scalar, unchanged_witness, write_policies

from retention.engine import guards

if TYPE_CHECKING:
    from conftest import TestDatabase

D = dt.datetime
POLICY = {"name": "events", "table": "events", "after": "happened_at", "retain": "2 years", "action": "delete",
          "max_fraction": 1.0}


def create(engine: sa.Engine, old: int, recent: int = 10) -> sa.Table:
    md = sa.MetaData()
    events = sa.Table("events", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("happened_at", sa.DateTime))
    md.create_all(engine)
    add(engine, events, range(1, old + 1), D(2020, 1, 1))
    add(engine, events, range(100_000, 100_000 + recent), D(2026, 11, 1))
    return events


def add(engine: sa.Engine, table: sa.Table, keys: range, when: dt.datetime) -> None:
    if keys:
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"id": i, "happened_at": when} for i in keys])


def count(db: TestDatabase) -> int:
    return int(scalar(db.engine, "SELECT count(*) FROM events"))


def test_a_real_run_earlier_than_the_last_real_run_is_refused(db: TestDatabase, tmp_path: Path) -> None:
    events = create(db.engine, old=5)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [POLICY])
    assert run_cli(pf, as_of="2026-11-24T03:00:00").exit_code == 0
    add(db.engine, events, range(10, 13), D(2024, 11, 1))  # due on 2026-11-23 already
    before = unchanged_witness(db)

    back = run_cli(pf, as_of="2026-11-23T03:00:00")
    assert back.exit_code == 2, back
    assert "2026-11-23T03:00:00+01:00" in back.stderr and "2026-11-24T03:00:00+01:00" in back.stderr
    assert unchanged_witness(db) == before
    # A preview may look back; the same moment again is no step back.
    assert run_cli(pf, "--dry-run", as_of="2026-11-23T03:00:00").exit_code == 0
    same = run_cli(pf, as_of="2026-11-24T03:00:00")
    assert same.exit_code == 0, same
    assert ids(db.engine, "SELECT id FROM events WHERE id < 100") == set()


def test_a_night_that_empties_the_table_is_blocked_unless_forced(db: TestDatabase, tmp_path: Path) -> None:
    create(db.engine, old=5, recent=0)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [POLICY])
    blocked = run_cli(pf)
    assert blocked.exit_code == 3, blocked
    p = blocked.policy("events")
    assert p["status"] == "blocked" and "all 5 rows" in p["error"] and p["applied"] == 0
    assert count(db) == 5
    forced = run_cli(pf, "--force")
    assert forced.exit_code == 0, forced
    assert (forced.policy("events")["applied"], count(db)) == (5, 0)


def test_a_first_run_backlog_over_the_floor_needs_force(db: TestDatabase, tmp_path: Path) -> None:
    create(db.engine, old=guards.RATE_FLOOR + 1, recent=50)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [POLICY])
    blocked = run_cli(pf)
    assert blocked.exit_code == 3, blocked
    error = blocked.policy("events")["error"]
    assert "101 rows on its first real run" in error and "--force" in error and "approve a plan" in error
    assert count(db) == 151
    assert run_cli(pf, "--force").exit_code == 0
    assert count(db) == 50


def test_a_night_ten_times_the_median_is_blocked_with_both_figures(db: TestDatabase, tmp_path: Path) -> None:
    events = create(db.engine, old=3, recent=500)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [POLICY])
    nights = [f"2026-11-{day}T03:00:00" for day in range(20, 30)]
    # Four nights of 3, 3, 3 and 0 rows: median 3.
    for n, night in enumerate(nights[:4]):
        if n:
            add(db.engine, events, range(n * 10, n * 10 + (3 if n < 3 else 0)), D(2020, 1, 1))
        assert run_cli(pf, as_of=night).exit_code == 0
    add(db.engine, events, range(1000, 1000 + 40), D(2020, 1, 1))  # 40: under the floor of 100
    assert run_cli(pf, as_of=nights[4]).exit_code == 0
    assert count(db) == 500

    add(db.engine, events, range(2000, 2000 + 150), D(2020, 1, 1))
    blocked = run_cli(pf, as_of=nights[5])
    assert blocked.exit_code == 3, blocked
    assert "150 rows, more than 10x the median 3 of its last 5 real run(s)" in blocked.policy("events")["error"]
    assert count(db) == 650
    forced = run_cli(pf, "--force", as_of=nights[6])
    assert forced.exit_code == 0, forced
    assert (forced.policy("events")["applied"], count(db)) == (150, 500)

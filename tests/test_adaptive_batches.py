"""Adaptive batches: each batch is sized for `batch_target_ms` (default 500 ms), between 1,000
and 100,000 rows, never above an explicit `batch_size`; the sizes used are in the run's JSON and
the audit `policy.end`, and the rows changed are exactly the due ones."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from helpers import run_cli, write_policies

from retention.audit import log as audit
from retention.engine.execution import BatchSizer

if TYPE_CHECKING:
    from conftest import TestDatabase

DUE, KEPT = 24_000, 1_500  # every 17th key is kept: 1,500 of 25,500


def _build(db: TestDatabase) -> None:
    md = sa.MetaData()
    t = sa.Table("events", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("happened_at", sa.DateTime, nullable=False, index=True))
    md.create_all(db.engine)
    with db.engine.begin() as conn:
        # Due rows (2020) and kept rows (2026) interleaved by key.
        old, new = dt.datetime(2020, 3, 1, 10), dt.datetime(2026, 6, 1)
        conn.execute(t.insert(), [{"id": i, "happened_at": old if i % 17 else new} for i in range(1, DUE + KEPT + 1)])


def _policy(db: TestDatabase, tmp_path: Path, **extra: Any) -> Path:
    policy = {"name": "events", "table": "events", "after": "happened_at", "retain": "2 years",
              "action": "delete", "max_fraction": 1.0, **extra}
    return write_policies(tmp_path / "policies.yaml", db.url, [policy])


def _due_ids(db: TestDatabase) -> set[int]:
    with db.engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.text("SELECT id FROM events WHERE happened_at < '2024-01-01'"))}


def _run(db: TestDatabase, policy: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    due = _due_ids(db)
    # A first run of 24,000 rows: the rate guard wants a person's word, which is not under test.
    result = run_cli(policy, "--force")
    assert result.exit_code == 0, result
    out = result.policy("events")
    entries = list(audit.read_entries(policy.parent / "audit" / "retention.jsonl"))
    batches = [e for e in entries if e["event"] == "batch"]
    # Exactly the due rows went, each once, and they are the keys in the log.
    assert sorted(k for e in batches for k in e["keys"]) == sorted(due)
    with db.engine.connect() as conn:
        left = {r[0] for r in conn.execute(sa.text("SELECT id FROM events"))}
        assert not left & due
        assert len(left) == conn.execute(sa.text(
            "SELECT count(*) FROM events WHERE happened_at >= '2026-01-01'")).scalar_one()
    assert out["applied"] == len(due)
    end = next(e for e in entries if e["event"] == "policy.end")
    assert end["batch_sizes"] == out["batch_sizes"]
    return out, batches


def test_batches_grow_on_a_fast_table_within_bounds(db: TestDatabase, tmp_path: Path) -> None:
    _build(db)
    out, batches = _run(db, _policy(db, tmp_path))
    sizes = out["batch_sizes"]
    assert sizes["min"] == 5000  # the first batch: the default batch_size
    assert sizes["max"] > 5000  # a fast table: the next batches were larger
    assert sizes["max"] <= 100_000 and sizes["batches"] == len(batches)
    assert all(e["count"] <= sizes["max"] for e in batches)


def test_explicit_batch_size_caps_the_batches(db: TestDatabase, tmp_path: Path) -> None:
    _build(db)
    out, batches = _run(db, _policy(db, tmp_path, batch_size=3000))
    assert out["batch_sizes"]["max"] == 3000
    assert all(e["count"] <= 3000 for e in batches)


def test_short_target_shrinks_to_the_floor(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    _build(sqlite_db)
    out, batches = _run(sqlite_db, _policy(sqlite_db, tmp_path, batch_target_ms=1))
    assert out["batch_sizes"]["min"] == 1000 and out["batch_sizes"]["max"] == 5000
    assert all(e["count"] <= 5000 for e in batches)


def test_target_zero_keeps_batch_size(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    _build(sqlite_db)
    out, _batches = _run(sqlite_db, _policy(sqlite_db, tmp_path, batch_target_ms=0, batch_size=4000))
    assert out["batch_sizes"] == {"min": 4000, "max": 4000, "last": 4000, "batches": 6}


def test_sizer_bounds() -> None:
    """The arithmetic at its bounds: 4x per batch at most, 1,000 to 100,000, an explicit cap wins."""
    s = BatchSizer(5000, explicit=False, target_ms=500)
    s.done(5000, 0.001)
    assert s.size == 20_000
    for _ in range(5):
        s.done(s.size, 0.001)
    assert s.size == 100_000
    s.done(100_000, 100.0)
    assert s.size == 25_000
    slow = BatchSizer(1200, explicit=False, target_ms=500)
    slow.done(1200, 10.0)
    assert slow.size == 1000
    capped = BatchSizer(10, explicit=True, target_ms=500)
    capped.done(10, 0.0001)
    assert capped.size == 10
    partial = BatchSizer(5000, explicit=False, target_ms=500)
    partial.done(17, 0.001)  # the last, short batch says nothing about speed
    assert partial.size == 5000


def test_the_json_says_where_the_time_went(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    """`phases_s`: the survey, the walk and, of the walk, its commits and audit entries; the parts
    never add up to more than the whole, and a preview has no walk."""
    _build(sqlite_db)
    policy = _policy(sqlite_db, tmp_path, batch_size=2000)
    preview = run_cli(policy, "--dry-run", "--force").policy("events")
    assert set(preview["phases_s"]) == {"survey"}
    out, _entries = _run(sqlite_db, policy)
    phases = out["phases_s"]
    assert set(phases) == {"survey", "batches", "commit", "audit"}
    assert phases["survey"] + phases["batches"] <= out["duration_s"] + 0.002  # each rounded to 1 ms
    assert 0 < phases["commit"] + phases["audit"] <= phases["batches"] + 0.002
    # Twelve batches, each with two fsync'd audit entries: never free.
    assert phases["audit"] > 0 and phases["commit"] > 0

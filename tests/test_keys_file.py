"""`run --dry-run --keys FILE`: every past-term key with its policy and fate (CSV:
policy,table,key,fate,reason), checked against plain SQL; streamed in key-order chunks."""

from __future__ import annotations

import copy
import csv
import datetime as dt
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from helpers import AS_OF, SHOP_POLICIES, invoke, run_cli, unchanged_witness, write_policies
from test_preview import add_doubly_referenced_account
from test_run import build_shop, expected

from retention.engine import keys as keys_mod

if TYPE_CHECKING:
    from conftest import TestDatabase


def _keys(pf: Path, out: Path, *extra: str) -> list[dict[str, str]]:
    result = invoke(["--policies", str(pf), "--log-format", "json", "run", "--dry-run", "--as-of", AS_OF,
                     "--format", "json", "--keys", str(out), *extra])
    assert result.exit_code == 0, result
    with out.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _by_fate(rows: list[dict[str, str]], policy: str) -> dict[str, set[int]]:
    fates: dict[str, set[int]] = {}
    for r in rows:
        if r["policy"] == policy:
            fates.setdefault(r["fate"], set()).add(int(r["key"]))
    return fates


def test_keys_file_lists_every_fate_as_plain_sql_finds_it(db: TestDatabase, tmp_path: Path) -> None:
    """Shop policies: accounts deleted / anonymised (referenced) / held, invoices and tickets
    deleted, tickets held: each set equals plain SQL; one line per key; the account referenced
    from invoices and tickets names both; the database is unchanged. After the real run, the
    referenced accounts are `deferred`, "already anonymised"."""
    pf = build_shop(db, tmp_path)
    add_doubly_referenced_account(db.engine)
    exp = expected(db.engine)
    before = unchanged_witness(db)
    rows = _keys(pf, tmp_path / "keys.csv")
    assert unchanged_witness(db) == before
    assert list(rows[0]) == ["policy", "table", "key", "fate", "reason"]
    assert len({(r["policy"], r["key"]) for r in rows}) == len(rows), "a key listed twice"
    assert _by_fate(rows, "accounts") == {"delete": exp.accounts_deleted, "anonymise": exp.accounts_deferred,
                                          "held": exp.accounts_held}
    # Holds follow foreign keys (issue 17): an invoice of a held account is held too.
    assert _by_fate(rows, "invoices") == {"delete": exp.invoices_due, "held": exp.invoices_held}
    assert _by_fate(rows, "correspondence") == {"delete": exp.tickets_due, "held": exp.tickets_held}
    (double,) = [r for r in rows if r["policy"] == "accounts" and r["key"] == "90100"]
    assert double["reason"] == "referenced by invoices, tickets (on_referenced: anonymise)"
    held = [r for r in rows if r["fate"] == "held"]
    assert all(r["reason"].startswith("hold: legal_hold = true") for r in held if r["policy"] != "invoices")
    # The invoices policy has no hold of its own: its held rows name the account's column.
    assert exp.invoices_held and {int(r["key"]) for r in held if r["policy"] == "invoices"
                                  and r["reason"] == "hold: accounts.legal_hold = true"} == exp.invoices_held

    assert run_cli(pf).exit_code == 0
    after = _keys(pf, tmp_path / "after.csv")
    assert _by_fate(after, "accounts") == {"deferred": exp.accounts_deferred, "held": exp.accounts_held}
    assert all(r["reason"].endswith("already anonymised") for r in after if r["fate"] == "deferred")


def test_keys_file_of_a_deferring_policy(db: TestDatabase, tmp_path: Path) -> None:
    """on_referenced: defer (the default): the referenced accounts are `deferred`, not anonymised."""
    policies = copy.deepcopy(SHOP_POLICIES)
    del policies[0]["on_referenced"], policies[0]["fields"]
    # keep/reidentification are for anonymising policies only (exit 2 on a deferring one).
    del policies[0]["keep"], policies[0]["reidentification"]
    pf = build_shop(db, tmp_path, policies=policies)
    exp = expected(db.engine)
    rows = _keys(pf, tmp_path / "keys.csv")
    assert _by_fate(rows, "accounts") == {"delete": exp.accounts_deleted, "deferred": exp.accounts_deferred,
                                          "held": exp.accounts_held}


def test_keys_needs_dry_run(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    pf = build_shop(sqlite_db, tmp_path)
    out = tmp_path / "keys.csv"
    result = invoke(["--policies", str(pf), "run", "--as-of", AS_OF, "--keys", str(out)])
    assert result.exit_code == 2 and "--dry-run" in result.stderr and not out.exists()


def _sessions(engine: sa.Engine, n: int) -> None:
    md = sa.MetaData()
    t = sa.Table("sessions", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("ended_at", sa.DateTime, nullable=True))
    md.create_all(engine)
    old, new = dt.datetime(2025, 1, 1), dt.datetime(2026, 11, 20)
    with engine.begin() as conn:
        for start in range(0, n, 50_000):
            conn.execute(t.insert(), [{"id": i, "ended_at": old if i % 10 else new}
                                      for i in range(start + 1, min(n, start + 50_000) + 1)])


def _peak(db: Any, tmp_path: Path, n: int) -> tuple[int, int]:
    _sessions(db.engine, n)
    pf = write_policies(tmp_path / f"p{n}.yaml", db.url, [{
        "name": "sessions", "table": "sessions", "after": "ended_at", "retain": "30 days", "action": "delete",
        "max_fraction": 1.0}], audit=f"audit{n}/log.jsonl")
    out = tmp_path / f"keys{n}.csv"
    tracemalloc.start()
    try:
        # --force: thousands of rows on a first run would trip the rate guard, not what this is about.
        result = invoke(["--policies", str(pf), "--log-format", "json", "run", "--dry-run", "--as-of", AS_OF,
                         "--format", "json", "--keys", str(out), "--force"])
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result
    with out.open(encoding="utf-8") as f:
        lines = sum(1 for _ in f) - 1
    return lines, peak


def test_keys_file_streams_in_chunks(sqlite_db: TestDatabase, db_factory: Any, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 1,000 keys: the Python memory peak for 200,000 past-term keys is about that for
    20,000 (all keys in memory would take ten times as much), and every key is there once."""
    monkeypatch.setattr(keys_mod, "CHUNK", 1_000)
    small = db_factory("sqlite")
    n_small, peak_small = _peak(small, tmp_path / "small", 22_222)
    n_big, peak_big = _peak(sqlite_db, tmp_path / "big", 222_222)
    assert (n_small, n_big) == (20_000, 200_000)
    assert peak_big < peak_small * 1.5 + 2_000_000, (peak_small, peak_big)


def test_keys_file_of_an_anonymise_policy(db: TestDatabase, tmp_path: Path) -> None:
    """An anonymise policy: the due rows are `anonymise`, the held one `held`; after the run only
    the held one is left to list (anonymised rows are done with)."""
    from helpers import write_policies
    from test_batches import DUE, HELD, create_members, members_policy

    create_members(db.engine)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [members_policy(batch_size=100)])
    assert _by_fate(_keys(pf, tmp_path / "k1.csv"), "members") == {"anonymise": set(DUE), "held": {HELD}}
    assert run_cli(pf).exit_code == 0
    assert _by_fate(_keys(pf, tmp_path / "k2.csv"), "members") == {"held": {HELD}}

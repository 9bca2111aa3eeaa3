"""`retention replay`: after restoring a copy taken before an erasure, replaying the audit log's
erasures (keys only) gives the same end state as the original erasure, row by row, with the
same keep rules; the replay is recorded (`replay.start`/`replay.end` naming the erasure), a
preview changes nothing, and `--since` after the erasure replays nothing. On every database.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from helpers import ids, invoke, snapshot, sqlite_path
from test_erase import EMAIL, erase, events, policy_file, schema

if TYPE_CHECKING:
    from conftest import TestDatabase

SHOP = ["accounts", "orders", "invoices", "invoice_lines", "tickets", "ticket_messages"]  # parents first


def take_copy(db: TestDatabase, tmp_path: Path) -> Any:
    """A backup: the SQLite file, or every row of the shop tables on a server."""
    if db.name == "sqlite":
        db.engine.dispose()
        copy = tmp_path / "backup.db"
        shutil.copyfile(sqlite_path(db.url), copy)
        return copy
    md = sa.MetaData()
    md.reflect(db.engine, only=SHOP)
    with db.engine.connect() as conn:
        return {name: [dict(r) for r in conn.execute(sa.select(md.tables[name])).mappings()] for name in SHOP}


def restore(db: TestDatabase, backup: Any) -> None:
    if db.name == "sqlite":
        db.engine.dispose()
        shutil.copyfile(backup, sqlite_path(db.url))
        return
    md = sa.MetaData()
    md.reflect(db.engine, only=SHOP)
    with db.engine.begin() as conn:
        for name in reversed(SHOP):
            conn.execute(md.tables[name].delete())
        for name in SHOP:
            if backup[name]:
                conn.execute(md.tables[name].insert(), backup[name])


def replay(policy: Path, *args: str) -> Any:
    return invoke(["--policies", str(policy), "replay", "--format", "json", *args], parse_json=True)


def test_replay_after_a_restore_gives_the_erasure_end_state(db: TestDatabase, tmp_path: Path) -> None:
    schema(db.engine)
    policy = policy_file(tmp_path, db)
    backup = take_copy(db, tmp_path)
    original = snapshot(db.engine, SHOP)
    first = erase(policy, "1", "--match", "tickets.email", "--as-of", "2026-11-24T03:00")
    assert first.exit_code == 0, first
    erased = snapshot(db.engine, SHOP)
    assert erased != original

    restore(db, backup)
    assert snapshot(db.engine, SHOP) == original

    preview = replay(policy, "--dry-run", "--as-of", "2026-11-24T03:00")
    assert preview.exit_code == 0, preview
    assert snapshot(db.engine, SHOP) == original
    assert [e["request"] for e in preview.data["erasures"]] == ["AVG-2026-031"]

    again = replay(policy, "--as-of", "2026-11-24T03:00")
    assert again.exit_code == 0, again
    assert snapshot(db.engine, SHOP) == erased  # row by row, detached foreign keys included
    result = again.data["erasures"][0]["result"]
    assert {t["table"]: t["deleted"] for t in result["tables"]} == {
        t["table"]: t["deleted"] for t in first.data["tables"]}

    starts, ends = events(policy, "replay.start"), events(policy, "replay.end")
    assert len(starts) == len(ends) == 1
    assert starts[0]["of_run"] == first.data["run"] and starts[0]["request"] == "AVG-2026-031"
    assert starts[0]["keys"] == events(policy, "erase.start")[0]["keys"]
    assert EMAIL not in Path(policy.parent / "audit/retention.jsonl").read_text(encoding="utf-8")
    [summary] = events(policy, "replay")
    assert summary["erasures"] == [{"of_run": first.data["run"], "request": "AVG-2026-031",
                                    "replay_run": starts[0]["run"], "status": "ok"}]

    # Once more: nothing of the subject is left to remove.
    third = replay(policy, "--as-of", "2026-11-24T03:00")
    assert third.exit_code == 0, third
    assert snapshot(db.engine, SHOP) == erased


def test_replay_since_after_the_erasure_replays_nothing(db: TestDatabase, tmp_path: Path) -> None:
    schema(db.engine)
    policy = policy_file(tmp_path, db)
    backup = take_copy(db, tmp_path)
    assert erase(policy, "1", "--as-of", "2026-11-24T03:00").exit_code == 0
    restore(db, backup)
    original = snapshot(db.engine, SHOP)
    r = invoke(["--policies", str(policy), "replay", "--since", "2099-01-01"])
    assert r.exit_code == 0, r
    assert "nothing to replay" in r.stdout
    assert snapshot(db.engine, SHOP) == original
    assert events(policy, "replay.start") == []
    [summary] = events(policy, "replay")  # the replay itself is recorded, though it found nothing
    assert summary["erasures"] == [] and summary["since"].startswith("2099-01-01")


def test_replay_applies_tonights_keep_rules(db: TestDatabase, tmp_path: Path) -> None:
    """Invoice 13 was kept by its statutory minimum at the erasure (2025-12-31 23:59:59); replayed
    after its floor ended (2026-01-01 00:00:01) it goes; invoice 12, still inside, stays detached."""
    schema(db.engine)
    policy = policy_file(tmp_path, db)
    backup = take_copy(db, tmp_path)
    first = erase(policy, "1", "--as-of", "2025-12-31T23:59:59")
    assert first.exit_code == 0, first
    assert ids(db.engine, "SELECT id FROM invoices WHERE account_id IS NULL") == {12, 13}
    restore(db, backup)
    again = replay(policy, "--as-of", "2026-01-01T00:00:01")
    assert again.exit_code == 0, again
    assert ids(db.engine, "SELECT id FROM invoices WHERE id IN (11, 12, 13)") == {12}
    assert ids(db.engine, "SELECT id FROM invoices WHERE account_id IS NULL") == {12}
    assert ids(db.engine, "SELECT id FROM invoice_lines WHERE invoice_id IN (11, 12, 13)") == {121, 122}
    assert ids(db.engine, "SELECT id FROM accounts") == {2, 3}

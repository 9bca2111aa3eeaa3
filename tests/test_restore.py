"""After a restore from a backup taken before an erasure, the next run erases again, and the log shows it.

Retention rules are term-based, not a list of past deletions: whatever comes back from a
backup is past its term again and is selected again. The audit log records both runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner
from helpers import SHOP_POLICIES, write_policies

from retention.audit import log as audit
from retention.cli import main
from retention.demo import build_demo


def _run(policy: Path) -> dict:
    result = CliRunner().invoke(main, ["--policies", str(policy), "run", "--as-of", "2026-11-24T03:00:00",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["policies"][0]


def test_restored_backup_is_erased_again_by_the_next_run(tmp_path: Path) -> None:
    import datetime as dt

    db = tmp_path / "shop.db"
    build_demo(db, accounts=400, seed=5, today=dt.date(2026, 11, 24))
    backup = tmp_path / "backup.db"
    shutil.copyfile(db, backup)
    correspondence = next(p for p in SHOP_POLICIES if p["name"] == "correspondence")
    policy = write_policies(tmp_path / "policies.yaml", f"sqlite:///{db}", [correspondence],
                            purge=None, audit="audit.jsonl")

    first = _run(policy)
    assert first["applied"] > 0
    assert _run(policy)["applied"] == 0  # nothing left: the erasure held

    shutil.copyfile(backup, db)  # the restore brings the erased rows back
    again = _run(policy)
    assert again["applied"] == first["applied"]
    assert again["cascaded"] == first["cascaded"]

    ends = [e for e in audit.read_entries(tmp_path / "audit.jsonl")
            if e["event"] == "policy.end" and not e.get("dry_run")]
    assert [e["applied"] for e in ends] == [first["applied"], 0, first["applied"]]
    assert audit.verify(tmp_path / "audit.jsonl").ok

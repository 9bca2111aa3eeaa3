"""The audit path is refused when it is a symbolic link, dangling or not (issue 14, item 8).

Following a dangling link made the run create the link's target, wherever it pointed; a link
to an existing file made the run append the chain there. Either is refused with exit 2 before
any row is touched, and so is a directory anyone can write to without the sticky bit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import SESSIONS_POLICY, create_sessions, ids, run_cli, write_policies

from retention.audit.log import AuditLog, AuditPathRefused
from retention.errors import EXIT_INVALID, EXIT_OK

if TYPE_CHECKING:
    from conftest import TestDatabase


@pytest.fixture
def setup(sqlite_db: TestDatabase, tmp_path: Path) -> tuple[TestDatabase, Path, Path]:
    create_sessions(sqlite_db.engine)
    policies = write_policies(tmp_path / "policies.yaml", sqlite_db.url, [SESSIONS_POLICY],
                              audit="audit/retention.jsonl")
    (tmp_path / "audit").mkdir(mode=0o750)
    return sqlite_db, policies, tmp_path / "audit" / "retention.jsonl"


def test_a_dangling_symlink_is_refused_and_its_target_not_created(setup: tuple[TestDatabase, Path, Path],
                                                                  tmp_path: Path) -> None:
    db, policies, log = setup
    target = tmp_path / "elsewhere" / "planted.jsonl"
    target.parent.mkdir()
    log.symlink_to(target)
    result = run_cli(policies)
    assert result.exit_code == EXIT_INVALID, result
    assert f"audit log {log}: is a symbolic link (to {target}, which does not exist); refusing to follow it" \
        in result.stderr
    assert not target.exists()
    assert ids(db.engine, "SELECT id FROM sessions") == {1, 2}


def test_a_symlink_to_an_existing_file_is_refused_and_the_file_left_alone(setup: tuple[TestDatabase, Path, Path],
                                                                          tmp_path: Path) -> None:
    db, policies, log = setup
    target = tmp_path / "other.jsonl"
    target.write_text("someone else's file\n")
    log.symlink_to(target)
    result = run_cli(policies)
    assert result.exit_code == EXIT_INVALID, result
    assert f"audit log {log}: is a symbolic link (to {target}); refusing to follow it" in result.stderr
    assert target.read_text() == "someone else's file\n"
    assert ids(db.engine, "SELECT id FROM sessions") == {1, 2}


def test_a_world_writable_directory_without_sticky_bit_is_refused(setup: tuple[TestDatabase, Path, Path]) -> None:
    db, policies, log = setup
    os.chmod(log.parent, 0o777)
    result = run_cli(policies)
    assert result.exit_code == EXIT_INVALID, result
    assert "is writable by everyone (and not sticky)" in result.stderr
    assert ids(db.engine, "SELECT id FROM sessions") == {1, 2}
    os.chmod(log.parent, 0o1777)  # sticky, like /tmp: only the owner may replace the file
    assert run_cli(policies).exit_code == EXIT_OK


def test_a_real_file_is_written_as_before(setup: tuple[TestDatabase, Path, Path]) -> None:
    db, policies, log = setup
    assert run_cli(policies).exit_code == EXIT_OK
    assert not log.is_symlink() and log.read_text().count("\n") > 3
    assert ids(db.engine, "SELECT id FROM sessions") == {2}


def test_a_symlink_planted_after_the_check_is_still_not_followed(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """O_NOFOLLOW closes the gap between the check and the open."""
    from retention.audit import log as audit_log

    log = tmp_path / "retention.jsonl"
    target = tmp_path / "planted.jsonl"
    original = audit_log._refuse_unsafe_path

    def check_then_plant(path: Path) -> None:
        original(path)
        path.symlink_to(target)

    monkeypatch.setattr(audit_log, "_refuse_unsafe_path", check_then_plant)
    with pytest.raises(AuditPathRefused, match="is a symbolic link; refusing to follow it"):
        AuditLog(log).open()
    assert not target.exists()

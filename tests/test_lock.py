"""One run at a time: a run that finds the lock held exits 4 and touches nothing.

The lock is a ``flock`` on ``<audit path>.lock`` (same host) and, on server databases, an
advisory lock on the server (``pg_advisory_lock`` / ``GET_LOCK``, named per database by
``retention.engine.lock.server_lock_name``), for two hosts with different audit logs pointed at
the same database.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from helpers import SESSIONS_POLICY, audit_path, create_sessions, ids, run_cli, unchanged_witness, write_policies

from retention.databases import dialects
from retention.engine.lock import server_lock_name

if TYPE_CHECKING:
    from conftest import TestDatabase


# Three sessions: long over, over in June, recent (inside the 30 days).
SESSIONS_ENDED = (dt.datetime(2025, 1, 1), dt.datetime(2026, 6, 1), dt.datetime(2026, 11, 20))


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold ``path`` the way a running `retention run` holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def server_lock(db: TestDatabase) -> Iterator[None]:
    """Hold the server's advisory lock from another connection, as a run on another host would."""
    engine = sa.create_engine(db.url)
    name = server_lock_name(engine)  # per database: GET_LOCK is server-wide on MariaDB
    try:
        with engine.connect() as conn:
            if db.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": dialects.lock_id(name)})
            else:
                got = conn.execute(sa.text("SELECT GET_LOCK(:name, 0)"), {"name": name}).scalar()
                assert got == 1, "the server lock of this test's database is already taken"
            conn.commit()
            try:
                yield
            finally:
                if db.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": dialects.lock_id(name)})
                else:
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                conn.commit()
    finally:
        engine.dispose()


def test_held_file_lock_exits_4_and_touches_nothing(db: TestDatabase, tmp_path: Path) -> None:
    """While another process holds `<audit path>.lock`, a run exits 4 without touching the database
    or the audit log; once released, the same run does its work."""
    create_sessions(db.engine, SESSIONS_ENDED)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [SESSIONS_POLICY])
    log = audit_path(pf)
    before = unchanged_witness(db)

    with file_lock(log.with_name(log.name + ".lock")):
        blocked = run_cli(pf)
        assert blocked.exit_code == 4, blocked
        assert "lock" in blocked.stderr
        assert not log.exists() or log.stat().st_size == 0
        assert unchanged_witness(db) == before

    done = run_cli(pf)
    assert done.exit_code == 0, done
    assert done.policy("sessions")["applied"] == 2
    assert ids(db.engine, "SELECT id FROM sessions") == {3}


def test_held_server_lock_exits_4_even_with_another_audit_log(server_db: TestDatabase, tmp_path: Path) -> None:
    """PostgreSQL/MariaDB: the server advisory lock held by another connection (another host, with its
    own audit log) makes a run exit 4 and touch nothing; after release it runs."""
    db = server_db
    create_sessions(db.engine, SESSIONS_ENDED)
    pf = write_policies(tmp_path / "host-b" / "policies.yaml", db.url, [SESSIONS_POLICY],
                        audit="audit-b/retention.jsonl")
    before = unchanged_witness(db)

    with server_lock(db):
        blocked = run_cli(pf)
        assert blocked.exit_code == 4, blocked
        assert "server lock" in blocked.stderr
        assert unchanged_witness(db) == before
        log = audit_path(pf)
        assert not log.exists() or log.stat().st_size == 0

    done = run_cli(pf)
    assert done.exit_code == 0, done
    assert ids(db.engine, "SELECT id FROM sessions") == {3}

"""Session settings the job gives its own connections, beyond the timeouts
(tests/test_timeouts.py): on PostgreSQL, JIT compilation is off and read-only previews stay
read-only after a transaction ends (the settings are committed with the connection, not rolled
back with the first transaction); on SQLite, a page cache sized for batches."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from retention.databases import dialects


@pytest.mark.parametrize("readonly", [False, True])
def test_jit_is_off_in_every_session_of_the_job(db_factory: Any, readonly: bool) -> None:
    """A 1M-account preview spent ~2 s of 9 compiling its counting statements; off, it took 7."""
    db = db_factory("postgresql")
    engine = dialects.create_engine(db.url, readonly=readonly)
    try:
        for _ in range(2):  # a second transaction on the same pooled connection: still off
            with engine.connect() as conn:
                assert conn.execute(sa.text("SHOW jit")).scalar_one() == "off"
                assert conn.execute(sa.text("SHOW transaction_read_only")).scalar_one() == \
                    ("on" if readonly else "off")
                conn.rollback()
    finally:
        engine.dispose()


@pytest.mark.parametrize("readonly", [False, True])
def test_sqlite_writing_sessions_have_a_32_mib_page_cache(db_factory: Any, readonly: bool) -> None:
    """SQLite's own default (2 MB) made a 1M-account delete write dirty index pages out
    mid-batch (bench/HOTSPOTS.md round 9). Read-only sessions (previews) keep the default: they
    gained nothing from it. The cache is the connection's, not the file's: a plain connection
    to the same file has SQLite's default."""
    db = db_factory("sqlite")
    engine = dialects.create_engine(db.url, readonly=readonly)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar_one() == (-2000 if readonly else -32 * 1024)
        plain = sa.create_engine(db.url)
        with plain.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar_one() == -2000
        plain.dispose()
    finally:
        engine.dispose()

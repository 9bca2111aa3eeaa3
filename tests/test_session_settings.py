"""Session settings the job gives its own connections, beyond the timeouts
(tests/test_timeouts.py): on PostgreSQL, JIT compilation is off and read-only previews stay
read-only after a transaction ends (the settings are committed with the connection, not rolled
back with the first transaction); on SQLite, a page cache sized for batches; on MariaDB, a
batch's key list still reaches its rows by key."""

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


def test_mariadb_reaches_a_large_batchs_rows_by_key(db_factory: Any) -> None:
    """A batch's keys travel as a literal IN list (dialects.key_in). Past 32,000 keys (the
    default optimizer_max_sel_arg_weight) MariaDB gave up the list's ranges and scanned the
    whole table for every batch's UPDATE: 0.66 s against 0.12 s for 49,000 keys at 1M accounts
    (bench/HOTSPOTS.md round 10). The job's sessions raise that bound past the largest batch."""
    db = db_factory("mariadb")
    engine = dialects.create_engine(db.url)
    t = sa.Table("rt_wide", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("v", sa.Integer))
    try:
        with engine.begin() as conn:
            t.create(conn)
            conn.exec_driver_sql("INSERT INTO rt_wide (id, v) SELECT seq, 0 FROM seq_1_to_600000")
            conn.exec_driver_sql("ANALYZE TABLE rt_wide").fetchall()
        keys = list(range(1, 600_000, 16))  # 37,500 keys, more than MariaDB's default bound
        update = t.update().where(dialects.key_in(t.c.id, keys, "mysql")).values(v=1)
        with engine.connect() as conn:
            sql = str(update.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            plan = conn.exec_driver_sql("EXPLAIN " + sql).mappings().one()
            assert (plan["type"], plan["key"]) == ("range", "PRIMARY")
    finally:
        engine.dispose()

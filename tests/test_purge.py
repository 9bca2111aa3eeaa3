"""Purge: after a run, removed values must be gone from the database *files*.

The core test writes rows with unique marker e-mail addresses, deletes half of them the way
a run does, purges, and then searches the raw files (and PostgreSQL's statistics) for the
markers. Kept markers must be found, which proves the scan can see data at all; deleted
ones must not be, except where a level is documented to leave them (then the test pins
that they are still there, so that the documentation stays true).
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from retention.databases import dialects, purge
from retention.databases.purge import PurgeResult

if TYPE_CHECKING:
    from conftest import TestDatabase

ROWS = 2000
MARKER = re.compile(rb"mk-[0-9a-f]{32}@example\.invalid")


@pytest.fixture(autouse=True)
def _short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real waits give ordinary transactions time to finish; here they only cost time.
    monkeypatch.setattr(purge, "SQLITE_BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr(purge, "LOCK_TIMEOUT_S", 1)
    # Left long: another test run's CREATE DATABASE on the same server is a writing
    # transaction that VACUUM FULL has to wait out (see the cross-database test).
    monkeypatch.setattr(purge, "SNAPSHOT_GRACE_S", 20.0)


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests whose snapshot holder stays: the grace period would only cost time."""
    monkeypatch.setattr(purge, "SNAPSHOT_GRACE_S", 0.3)


@pytest.fixture
def job_engine(request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    """An engine made the way the job makes its engines (secure_delete on for SQLite)."""
    database: TestDatabase = request.getfixturevalue(request.param)
    engine = dialects.create_engine(database.url)
    yield engine
    engine.dispose()


# -- the marker table ----------------------------------------------------------------------
def _people(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "people", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(80), nullable=False, index=True),
        sa.Column("closed_at", sa.DateTime),
    )


def _fill(engine: sa.Engine) -> tuple[set[bytes], set[bytes]]:
    """Create ``people`` with unique markers; return (markers to delete, markers to keep)."""
    people = _people(sa.MetaData())
    people.metadata.create_all(engine)
    markers = [f"mk-{uuid.uuid4().hex}@example.invalid" for _ in range(ROWS)]
    with engine.begin() as conn:
        conn.execute(people.insert(), [{"id": i, "email": m} for i, m in enumerate(markers)])
    deleted = {m.encode() for i, m in enumerate(markers) if i % 2 == 0}
    kept = {m.encode() for i, m in enumerate(markers) if i % 2 == 1}
    return deleted, kept


def _delete_half(engine: sa.Engine) -> None:
    # What a run does: a plain DELETE of the due keys, committed.
    people = _people(sa.MetaData())
    with engine.begin() as conn:
        conn.execute(people.delete().where(people.c.id % 2 == 0))


def _scan(paths: list[Path]) -> set[bytes]:
    found: set[bytes] = set()
    for path in paths:
        if path.exists():
            found.update(MARKER.findall(path.read_bytes()))
    return found


def _assert_purged(found: set[bytes], deleted: set[bytes], kept: set[bytes]) -> None:
    assert len(found & kept) == len(kept), "the scan must see the rows that were kept"
    leaked = found & deleted
    assert not leaked, f"{len(leaked)} of {len(deleted)} deleted markers are still in the files"


# -- SQLite --------------------------------------------------------------------------------
def _sqlite_files(engine: sa.Engine) -> list[Path]:
    db = Path(str(engine.url.database))
    return [db, Path(f"{db}-wal"), Path(f"{db}-journal")]


def _set_journal_mode(engine: sa.Engine, mode: str) -> None:
    con = sqlite3.connect(str(engine.url.database))
    try:
        assert con.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
    finally:
        con.close()


def _delete_half_without_secure_delete(engine: sa.Engine) -> None:
    con = sqlite3.connect(str(engine.url.database))
    try:
        con.execute("PRAGMA secure_delete=OFF")
        assert con.execute("PRAGMA secure_delete").fetchone()[0] == 0
        with con:
            con.execute("DELETE FROM people WHERE id % 2 = 0")
    finally:
        con.close()


JOURNAL_MODES = ["delete", "wal"]


# secure_delete zeroes what a DELETE frees, but when b-tree balancing rebuilds an index
# page the unallocated gap of the new page can keep one old entry: in about 1.5 % of runs
# of this test one of the 1,000 deleted markers survived that way at level standard.
# VACUUM writes every page afresh; it never left one (150 runs per mode).
STANDARD_SQLITE_STRAYS = ROWS // 200


@pytest.mark.parametrize("job_engine", ["sqlite_db"], indirect=True)
@pytest.mark.parametrize("mode", JOURNAL_MODES)
@pytest.mark.parametrize("level", ["thorough", "standard"])
def test_sqlite_purge_removes_deleted_markers(job_engine: sa.Engine, mode: str, level: str) -> None:
    _set_journal_mode(job_engine, mode)
    deleted, kept = _fill(job_engine)
    _delete_half(job_engine)

    result = purge.purge(job_engine, "shop", ["people"], level)

    assert (result.result, result.level, result.tables) == ("done", level, ["people"]), result.detail
    # Read while the job's connection is still open: closing the last connection would
    # checkpoint the WAL itself and hide a purge that did not.
    found = _scan(_sqlite_files(job_engine))
    if level == "thorough":
        _assert_purged(found, deleted, kept)
    else:
        assert len(found & kept) == len(kept)
        assert len(found & deleted) <= STANDARD_SQLITE_STRAYS
        for name in ("-wal", "-journal"):
            assert not _scan([Path(f"{job_engine.url.database}{name}")]) & deleted
    if mode == "wal":
        assert Path(f"{job_engine.url.database}-wal").stat().st_size == 0


@pytest.mark.parametrize("job_engine", ["sqlite_db"], indirect=True)
@pytest.mark.parametrize("mode", JOURNAL_MODES)
def test_sqlite_thorough_removes_what_secure_delete_off_left(job_engine: sa.Engine, mode: str) -> None:
    # Rows deleted by a connection without secure_delete: only VACUUM gets them out.
    _set_journal_mode(job_engine, mode)
    deleted, kept = _fill(job_engine)
    _delete_half_without_secure_delete(job_engine)

    assert purge.purge(job_engine, "shop", ["people"], "thorough").result == "done"

    _assert_purged(_scan(_sqlite_files(job_engine)), deleted, kept)


@pytest.mark.parametrize("job_engine", ["sqlite_db"], indirect=True)
@pytest.mark.parametrize("mode", JOURNAL_MODES)
def test_sqlite_without_purge_the_markers_stay(job_engine: sa.Engine, mode: str) -> None:
    # The check can fail: without secure_delete and without a purge the bytes are there.
    _set_journal_mode(job_engine, mode)
    deleted, kept = _fill(job_engine)
    _delete_half_without_secure_delete(job_engine)

    result = purge.purge(job_engine, "shop", ["people"], "none")

    assert result.result == "skipped"
    found = _scan(_sqlite_files(job_engine))
    assert len(found & kept) == len(kept)
    assert len(found & deleted) > len(deleted) // 2


@pytest.mark.parametrize("job_engine", ["sqlite_db"], indirect=True)
def test_sqlite_persistent_journal_is_removed(job_engine: sa.Engine) -> None:
    deleted, kept = _fill(job_engine)
    con = sqlite3.connect(str(job_engine.url.database))
    try:
        con.execute("PRAGMA journal_mode=PERSIST")
        with con:
            con.execute("DELETE FROM people WHERE id % 2 = 0")
    finally:
        con.close()
    journal = Path(f"{job_engine.url.database}-journal")
    assert _scan([journal]) & deleted, "a PERSIST journal keeps the old pages after commit"

    assert purge.purge(job_engine, "shop", ["people"], "standard").result == "done"

    assert not journal.exists()
    found = _scan(_sqlite_files(job_engine))
    assert len(found & kept) == len(kept)
    assert len(found & deleted) <= STANDARD_SQLITE_STRAYS


@pytest.mark.parametrize("job_engine", ["sqlite_db"], indirect=True)
@pytest.mark.parametrize("mode", JOURNAL_MODES)
def test_sqlite_open_reader_makes_purge_pending(job_engine: sa.Engine, mode: str) -> None:
    _set_journal_mode(job_engine, mode)
    deleted, kept = _fill(job_engine)
    if mode != "wal":
        # In rollback-journal mode a reader's shared lock would block the delete's commit.
        _delete_half(job_engine)
    reader = sqlite3.connect(str(job_engine.url.database), isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT 1 FROM people LIMIT 1").fetchall()
        if mode == "wal":
            # The reader's snapshot is older than the delete, as with a long report.
            _delete_half(job_engine)

        result = purge.purge(job_engine, "shop", ["people"], "thorough")

        assert result.result == "pending", result.detail
        assert "another connection" in result.detail
    finally:
        reader.close()

    again = purge.purge(job_engine, "shop", ["people"], "thorough")

    assert again.result == "done", again.detail
    _assert_purged(_scan(_sqlite_files(job_engine)), deleted, kept)


def test_sqlite_secure_delete_check(sqlite_db: TestDatabase) -> None:
    job = dialects.create_engine(sqlite_db.url)
    off = sa.create_engine(sqlite_db.url)

    @sa.event.listens_for(off, "connect")
    def _off(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.execute("PRAGMA secure_delete=OFF")
        dbapi_conn.execute("PRAGMA journal_mode=PERSIST")

    try:
        assert purge.secure_delete_active(job)
        assert not purge.secure_delete_active(off)
        assert purge.storage_warnings(job, "shop", "thorough") == []
        warnings = purge.storage_warnings(off, "shop", "standard")
        assert any("secure_delete" in w for w in warnings)
        assert any("journal_mode=persist" in w for w in warnings)
        assert all(w.startswith("database 'shop': ") for w in warnings)
    finally:
        job.dispose()
        off.dispose()


# -- PostgreSQL ----------------------------------------------------------------------------
def _pg_files(conn: sa.Connection, relation: str) -> list[Path]:
    """The heap, index and TOAST files of a relation, every segment."""
    datadir = Path(conn.execute(sa.text("SHOW data_directory")).scalar_one())
    rel = sa.text(
        "WITH r AS (SELECT oid, reltoastrelid FROM pg_class WHERE oid = to_regclass(:r)) "
        "SELECT oid FROM r UNION ALL SELECT indexrelid FROM pg_index WHERE indrelid = (SELECT oid FROM r) "
        "UNION ALL SELECT reltoastrelid FROM r WHERE reltoastrelid <> 0 "
        "UNION ALL SELECT indexrelid FROM pg_index WHERE indrelid = (SELECT reltoastrelid FROM r)"
    )
    paths: list[Path] = []
    for (oid,) in conn.execute(rel, {"r": relation}).all():
        first = datadir / conn.execute(sa.text("SELECT pg_relation_filepath(:o)"), {"o": oid}).scalar_one()
        paths += [first, *sorted(first.parent.glob(f"{first.name}.*"))]
    return paths


def _pg_scan(engine: sa.Engine, earlier: list[Path]) -> dict[str, set[bytes]]:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("CHECKPOINT"))  # the files, not shared buffers, are what is read
        table = _pg_files(conn, "people")
        statistic = _pg_files(conn, "pg_catalog.pg_statistic")
        stats = conn.execute(sa.text(
            "SELECT coalesce(most_common_vals::text, '') || coalesce(histogram_bounds::text, '') "
            "FROM pg_stats WHERE tablename = 'people'"
        )).scalars().all()
    try:
        return {
            "table files": _scan(table + earlier),
            "pg_statistic files": _scan(statistic),
            "pg_stats": set(MARKER.findall("".join(stats).encode())),
        }
    except PermissionError:
        pytest.skip("the PostgreSQL data directory is not readable by this user (run as root)")


@pytest.fixture
def pg(db_factory: object) -> Iterator[tuple[TestDatabase, sa.Engine]]:
    database = db_factory("postgresql")  # type: ignore[operator]
    engine = dialects.create_engine(database.url)
    yield database, engine
    engine.dispose()


def _pg_prepare(engine: sa.Engine) -> tuple[set[bytes], set[bytes], list[Path]]:
    deleted, kept = _fill(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # A small statistics target keeps pg_statistic's sample arrays under the size at which
        # PostgreSQL compresses them, so that a raw scan of its file can see them.
        conn.execute(sa.text("ALTER TABLE people ALTER COLUMN email SET STATISTICS 10"))
        # As autovacuum would have by then: statistics with sample values of the rows.
        conn.execute(sa.text("ANALYZE people"))
        # Extended statistics live in a catalog of their own, which thorough rewrites too.
        conn.execute(sa.text("CREATE STATISTICS people_ext (ndistinct) ON email, closed_at FROM people"))
        earlier = _pg_files(conn, "people")
    return deleted, kept, earlier


@pytest.mark.parametrize("level", ["thorough", "standard", "none"])
def test_postgresql_purge_levels(pg: tuple[TestDatabase, sa.Engine], level: str) -> None:
    _, engine = pg
    deleted, kept, earlier = _pg_prepare(engine)
    _delete_half(engine)

    result = purge.purge(engine, "shop", ["people"], level)

    assert result.result == ("skipped" if level == "none" else "done"), result.detail
    found = _pg_scan(engine, earlier)
    assert len(found["table files"] & kept) == len(kept)
    leaked = {where: len(markers & deleted) for where, markers in found.items()}
    if level == "thorough":
        assert leaked == {"table files": 0, "pg_statistic files": 0, "pg_stats": 0}
    elif level == "standard":
        # VACUUM frees the space but leaves the bytes; ANALYZE replaces the statistics,
        # whose old row stays in pg_statistic's file. Pinned so that docs/erasure.md stays true.
        assert leaked["table files"] > 0
        assert leaked["pg_stats"] == 0
        assert leaked["pg_statistic files"] > 0
        assert "remain" in result.detail
    else:
        assert leaked["table files"] > len(deleted) // 2
        assert leaked["pg_stats"] > 0
        assert leaked["pg_statistic files"] > 0


@pytest.mark.usefixtures("no_grace")
def test_postgresql_old_snapshot_makes_purge_pending(pg: tuple[TestDatabase, sa.Engine]) -> None:
    database, engine = pg
    deleted, kept, earlier = _pg_prepare(engine)
    reader = sa.create_engine(database.url, connect_args={"application_name": "long-report"})
    try:
        with reader.connect() as conn:
            conn.exec_driver_sql("COMMIT")
            conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
            conn.exec_driver_sql("SELECT 1 FROM people LIMIT 1").all()
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            _delete_half(engine)

            result = purge.purge(engine, "shop", ["people"], "thorough")

            assert result.result == "pending", result.detail
            assert f"pid {pid}" in result.detail and "long-report" in result.detail
            conn.exec_driver_sql("ROLLBACK")
    finally:
        reader.dispose()

    again = purge.purge(engine, "shop", ["people"], "thorough")

    assert again.result == "done", again.detail
    found = _pg_scan(engine, earlier)
    assert not any(markers & deleted for markers in found.values())
    assert len(found["table files"] & kept) == len(kept)


def test_postgresql_table_lock_makes_purge_pending(pg: tuple[TestDatabase, sa.Engine]) -> None:
    # A transaction that began after the run's deletes holds no old snapshot but still
    # locks the table: VACUUM FULL must give up after lock_timeout, not wait for ever.
    database, engine = pg
    _pg_prepare(engine)
    _delete_half(engine)
    other = sa.create_engine(database.url, connect_args={"application_name": "app"})
    try:
        with other.connect() as conn:
            conn.exec_driver_sql("LOCK TABLE people IN ACCESS SHARE MODE")
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            result = purge.purge(engine, "shop", ["people"], "thorough")
            conn.exec_driver_sql("ROLLBACK")
    finally:
        other.dispose()
    assert result.result == "pending", result.detail
    assert f"pid {pid}" in result.detail


@pytest.mark.usefixtures("no_grace")
def test_postgresql_writer_in_another_database_holds_back_vacuum_full(
    pg: tuple[TestDatabase, sa.Engine], db_factory: object
) -> None:
    # VACUUM FULL's own snapshot has the oldest running xid of the whole server as its
    # xmin, so an older writing transaction in *another* database keeps the deleted rows
    # in the rewritten file. Plain VACUUM ignores other databases.
    _, engine = pg
    elsewhere = db_factory("postgresql")  # type: ignore[operator]
    _pg_prepare(engine)
    with elsewhere.engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_current_xact_id()").all()
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        _delete_half(engine)

        thorough = purge.purge(engine, "shop", ["people"], "thorough")
        standard = purge.purge(engine, "shop", ["people"], "standard")
        conn.exec_driver_sql("ROLLBACK")

    assert thorough.result == "pending", thorough.detail
    assert f"pid {pid}" in thorough.detail
    assert standard.result == "done", standard.detail


# -- MariaDB -------------------------------------------------------------------------------
@pytest.fixture
def maria(db_factory: object) -> Iterator[tuple[TestDatabase, sa.Engine]]:
    database = db_factory("mariadb")  # type: ignore[operator]
    engine = dialects.create_engine(database.url)
    yield database, engine
    engine.dispose()


def _maria_scan(engine: sa.Engine) -> set[bytes]:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        datadir = Path(conn.execute(sa.text("SELECT @@datadir")).scalar_one())
        schema = conn.execute(sa.text("SELECT DATABASE()")).scalar_one()
        # Writes the table's dirty pages to its .ibd, so the file shows what InnoDB holds.
        conn.execute(sa.text("FLUSH TABLES people FOR EXPORT"))
        conn.execute(sa.text("UNLOCK TABLES"))
    try:
        return _scan([datadir / schema / "people.ibd"])
    except PermissionError:
        pytest.skip("the MariaDB data directory is not readable by this user (run as root)")


@pytest.mark.parametrize("level", ["thorough", "standard", "none"])
def test_mariadb_purge_levels(maria: tuple[TestDatabase, sa.Engine], level: str) -> None:
    _, engine = maria
    deleted, kept = _fill(engine)
    with engine.connect() as conn:
        # Engine-independent statistics keep real values: the smallest and largest e-mail.
        conn.exec_driver_sql("ANALYZE TABLE people PERSISTENT FOR ALL").all()
    _delete_half(engine)

    result = purge.purge(engine, "shop", ["people"], level)

    assert result.result == ("skipped" if level == "none" else "done"), result.detail
    found = _maria_scan(engine)
    assert len(found & kept) == len(kept)
    with engine.connect() as conn:
        bounds = conn.execute(sa.text(
            "SELECT min_value, max_value FROM mysql.column_stats "
            "WHERE db_name = DATABASE() AND table_name = 'people' AND column_name = 'email'"
        )).one()
    bounds = tuple(b.decode() if isinstance(b, bytes) else b for b in bounds)
    if level == "thorough":
        assert not found & deleted
        assert bounds == (min(kept).decode(), max(kept).decode())
    else:
        assert bounds == (min(deleted | kept).decode(), max(deleted | kept).decode())
        # How many deleted values are still in the file is up to InnoDB: delete-marked and purged
        # records keep their bytes, but its purge thread may merge an underfull page at any moment
        # (seen: 3 of 1,000 left once in ~10 runs). Only `thorough` promises none.
        if level == "standard":
            assert ".ibd" in result.detail


def test_mariadb_table_in_use_makes_purge_pending(maria: tuple[TestDatabase, sa.Engine]) -> None:
    database, engine = maria
    _fill(engine)
    _delete_half(engine)
    other = sa.create_engine(database.url)
    try:
        with other.connect() as conn:
            # A transaction that has read the table holds its metadata lock until it ends.
            conn.exec_driver_sql("SELECT 1 FROM people LIMIT 1").all()
            result = purge.purge(engine, "shop", ["people"], "thorough")
            conn.exec_driver_sql("ROLLBACK")
    finally:
        other.dispose()
    assert result.result == "pending", result.detail
    assert "open transactions: connection" in result.detail

    assert purge.purge(engine, "shop", ["people"], "thorough").result == "done"


# -- results and warnings ------------------------------------------------------------------
def test_result_event_fields() -> None:
    result = PurgeResult("shop", ["people"], "thorough", "done", 0.25, "VACUUM rewrote the file.")
    assert result.as_event() == {
        "database": "shop", "tables": ["people"], "level": "thorough", "result": "done",
        "duration_ms": 250, "detail": "VACUUM rewrote the file.",
    }


def test_none_and_nothing_touched_are_skipped(sqlite_db: TestDatabase) -> None:
    assert purge.purge(sqlite_db.engine, "shop", ["people"], "none").result == "skipped"
    assert purge.purge(sqlite_db.engine, "shop", [], "thorough").result == "skipped"


def test_database_errors_become_failed(db: TestDatabase) -> None:
    engine = dialects.create_engine(db.url)
    try:
        result = purge.purge(engine, "shop", ["no_such_table"], "thorough")
    finally:
        engine.dispose()
    if db.name == "sqlite":
        # VACUUM works on the whole file; a missing table is no error there.
        assert result.result == "done"
    else:
        assert result.result == "failed"
        assert "no_such_table" in result.detail
        assert "\n" not in result.detail


def test_server_warnings(server_db: TestDatabase) -> None:
    engine = dialects.create_engine(server_db.url)
    try:
        warnings = purge.storage_warnings(engine, "shop", "none")
        with engine.connect() as conn:
            if server_db.name == "postgresql":
                archive = conn.execute(sa.text("SHOW archive_mode")).scalar_one()
                slots = conn.execute(sa.text("SELECT count(*) FROM pg_replication_slots")).scalar_one()
                expected = {"archive_mode": archive != "off", "replication slots": slots > 0}
            else:
                log_bin, image = conn.execute(sa.text("SELECT @@log_bin, @@binlog_row_image")).one()
                expected = {"binlog_row_image=FULL": bool(log_bin) and image == "FULL"}
    finally:
        engine.dispose()
    assert any("purge is 'none'" in w for w in warnings)
    for phrase, present in expected.items():
        assert any(phrase in w for w in warnings) == present, warnings

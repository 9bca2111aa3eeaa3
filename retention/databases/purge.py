"""Purge: make removed values leave the database *files*, not only the tables.

A DELETE or UPDATE does not erase the old bytes. SQLite leaves them on freed pages, in the
rollback journal or in the WAL; PostgreSQL in dead tuples, in index pages, in the free
space VACUUM leaves behind, in pg_statistic's sample values and in WAL segments;
MariaDB/InnoDB in the ``.ibd`` after purge, in undo and redo logs, and in the binary log.
After a real run the runner calls :func:`purge` once per database with the tables that
run touched, and writes the :class:`PurgeResult` as the audit ``purge`` event.

Levels (the ``purge`` setting of a database):

- ``none``: nothing; the result is ``skipped``.
- ``standard``: what the database can do without rewriting tables. SQLite: secure_delete
  (zeroes removed content as it is deleted) plus a truncating WAL checkpoint; PostgreSQL:
  ``VACUUM (ANALYZE)``; MariaDB: nothing (InnoDB frees pages lazily).
- ``thorough``: rewrite the files. SQLite: ``VACUUM``; PostgreSQL: ``VACUUM (FULL, ANALYZE)``,
  a rewrite of the statistics catalogs and a ``CHECKPOINT``; MariaDB: ``ALTER TABLE ... FORCE``
  and ``ANALYZE TABLE`` (``PERSISTENT FOR ALL`` where engine-independent statistics exist).

docs/erasure.md says what each level leaves behind, measured, and what it costs.

A purge that something else on the server prevents (a reader holding an old snapshot, a
lock it cannot get) is ``pending``, not ``failed``: nothing is wrong with the database and
the next purge finishes the job. Every per-database difference lives here, keyed by
``engine.dialect.name``. A detail text never contains a data value: only table, role,
application and file names, pids and counts.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

LEVELS: tuple[str, ...] = ("none", "standard", "thorough")
RESULTS: tuple[str, ...] = ("done", "pending", "skipped", "failed")

# How long a purge waits for other connections before calling the purge pending. Module
# level so that tests can shorten them; long enough for ordinary short transactions.
SQLITE_BUSY_TIMEOUT_MS = 5000
LOCK_TIMEOUT_S = 30
# pg_statistic is read by every query planner in the database: queueing for its exclusive
# lock would stall them all, so that wait is kept short.
CATALOG_LOCK_TIMEOUT_S = 2
SNAPSHOT_GRACE_S = 3.0
_POLL_S = 0.1

_XID_MOD = 2**32
_NAMED_AT_MOST = 3


@dataclass
class PurgeResult:
    database: str
    tables: list[str]
    level: str
    result: str  # one of RESULTS
    duration_s: float
    detail: str  # one or two sentences for people; never a data value

    def as_event(self) -> dict[str, Any]:
        """The fields of the audit ``purge`` event (the log holds integers only: milliseconds)."""
        return {
            "database": self.database,
            "tables": list(self.tables),
            "level": self.level,
            "result": self.result,
            "duration_ms": round(self.duration_s * 1000),
            "detail": self.detail,
        }


class _Pending(Exception):
    """Another connection keeps the purge from finishing now; a later purge will."""


class _Refused(Exception):
    """The purge cannot be done as configured (privileges, build, missing table)."""


class _Steps:
    """What the purge is doing, so that a database error says where it happened.

    ``on_step`` hears every step as it begins: the runner's crash tests kill the process
    there, half-way through a purge, without this module knowing about them.
    """

    def __init__(self, on_step: Callable[[str], None] | None = None) -> None:
        self._now = "connecting"
        self.notes: list[str] = []
        self._on_step = on_step

    @property
    def now(self) -> str:
        return self._now

    @now.setter
    def now(self, step: str) -> None:
        self._now = step
        if self._on_step is not None:
            self._on_step(step)


Purger = Callable[[sa.Engine, list[str], str, _Steps], str]
Quote = Callable[[str], str]


def purge(engine: sa.Engine, database: str, tables: list[str], level: str,
          on_step: Callable[[str], None] | None = None) -> PurgeResult:
    """Apply ``level`` to ``tables`` of one database; database errors become ``failed``."""
    started = time.monotonic()
    tables = list(dict.fromkeys(tables))

    def result(outcome: str, detail: str) -> PurgeResult:
        return PurgeResult(database, tables, level, outcome, round(time.monotonic() - started, 3), detail)

    if level not in LEVELS:
        return result("failed", f"unknown purge level {level!r}; valid: {', '.join(LEVELS)}.")
    if level == "none":
        return result("skipped", "purge is 'none': removed values stay in the database files "
                                 "until the database happens to reuse that space.")
    if not tables:
        return result("skipped", "this run removed or changed nothing in this database.")
    purger = _PURGERS.get(engine.dialect.name)
    if purger is None:
        return result("failed", f"no purge is known for {engine.dialect.name} databases.")
    steps = _Steps(on_step)
    try:
        detail = purger(engine, tables, level, steps)
    except _Pending as exc:
        return result("pending", str(exc))
    except _Refused as exc:
        return result("failed", str(exc))
    except (sa.exc.SQLAlchemyError, sqlite3.Error, OSError) as exc:
        return result("failed", f"{steps.now} failed: {_first_line(exc)}")
    return result("done", " ".join([detail, *steps.notes]))


def storage_warnings(engine: sa.Engine, database: str, level: str) -> list[str]:
    """Settings of this database that keep copies of removed values, as lines for ``validate``.

    Reads settings only; writes nothing. A setting that cannot be read is reported as such
    rather than passed over, because silence would read as "no copies".
    """
    name = engine.dialect.name
    lines: list[str] = []
    if level == "none":
        lines.append("purge is 'none': removed values stay in free space of the database files "
                     "until the database reuses it; set purge: thorough to remove them after each run")
    check = _WARNINGS.get(name)
    if check is not None:
        try:
            lines.extend(check(engine, level))
        except (sa.exc.SQLAlchemyError, sqlite3.Error, OSError) as exc:
            lines.append(f"could not read the storage settings: {_first_line(exc)}")
    return [f"database {database!r}: {line}" for line in lines]


def secure_delete_active(engine: sa.Engine) -> bool:
    """Whether connections of this engine zero deleted content (SQLite); True elsewhere."""
    if engine.dialect.name != "sqlite":
        return True
    with _sqlite_cursor(engine) as cur:
        return _secure_delete_value(cur) == 1


# -- helpers -------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    # The driver's message, not SQLAlchemy's wrapper with the statement and a link; later
    # lines (PostgreSQL's DETAIL) can quote row values, the first one does not.
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0].strip() if lines else type(cause).__name__


def _named(items: list[str]) -> str:
    shown = ", ".join(items[:_NAMED_AT_MOST])
    more = len(items) - _NAMED_AT_MOST
    return f"{shown} and {more} more" if more > 0 else shown


def _tables_text(tables: list[str]) -> str:
    return ", ".join(repr(t) for t in tables)


# -- SQLite --------------------------------------------------------------------------------
@contextmanager
def _sqlite_cursor(engine: sa.Engine) -> Iterator[sqlite3.Cursor]:
    """A raw cursor in autocommit mode on one of the engine's connections.

    SQLAlchemy's Connection would begin a transaction (the job's engine even issues
    ``BEGIN IMMEDIATE``), and VACUUM and a truncating checkpoint refuse to run inside one.
    """
    raw = engine.raw_connection()
    try:
        dbapi: sqlite3.Connection = raw.driver_connection  # type: ignore[assignment]
        saved_isolation = dbapi.isolation_level
        dbapi.isolation_level = None
        cur = dbapi.cursor()
        saved_timeout = cur.execute("PRAGMA busy_timeout").fetchone()[0]
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_MS)}")
        try:
            yield cur
        finally:
            cur.execute(f"PRAGMA busy_timeout={int(saved_timeout)}")
            cur.close()
            dbapi.isolation_level = saved_isolation
    finally:
        raw.close()


def _secure_delete_value(cur: sqlite3.Cursor) -> int:
    row = cur.execute("PRAGMA secure_delete").fetchone()
    # 2 is FAST, which leaves freelist pages unzeroed: not good enough here.
    return int(row[0]) if row else 0


def _sqlite_file(cur: sqlite3.Cursor) -> str:
    for _seq, name, path in cur.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return str(path or "")
    return ""


def _has_content(path: str) -> bool:
    """True when the file exists and holds any non-zero byte."""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                if chunk.count(0) != len(chunk):
                    return True
    except FileNotFoundError:
        return False
    return False


def _sqlite_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)


def _sqlite_purge(engine: sa.Engine, tables: list[str], level: str, steps: _Steps) -> str:
    done: list[str] = []
    with _sqlite_cursor(engine) as cur:
        path = _sqlite_file(cur)
        steps.now = "PRAGMA secure_delete"
        cur.execute("PRAGMA secure_delete=ON")
        secure = _secure_delete_value(cur) == 1
        if secure and level == "standard":
            # The job's connections come from this engine, whose connect hook sets it too.
            done.append("secure_delete is on for this engine's connections, so they zeroed removed rows as "
                        "they deleted them (an index entry can rarely survive in a page SQLite rebuilt; "
                        "purge: thorough's VACUUM rewrites every page)")
        elif not secure and level != "thorough":
            raise _Refused(
                "this SQLite build does not honour PRAGMA secure_delete, so removed rows stay "
                "readable in free pages; set purge: thorough to have VACUUM rewrite the file."
            )
        if not path:
            return "In-memory database: nothing of it is on disk."

        steps.now = "PRAGMA journal_mode"
        mode = str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if mode == "persist":
            # A persistent journal keeps old page images after commit; leaving PERSIST
            # makes SQLite delete the file (under a RESERVED lock, so never a live one).
            cur.execute("PRAGMA journal_mode=DELETE")
            mode = "delete"

        if level == "thorough":
            steps.now = "VACUUM"
            try:
                cur.execute("VACUUM")
            except sqlite3.OperationalError as exc:
                if _sqlite_busy(exc):
                    raise _Pending(
                        "another connection holds a lock on the database file, so VACUUM could not "
                        f"rewrite it within {SQLITE_BUSY_TIMEOUT_MS / 1000:g} s; removed values may "
                        "remain in free pages until the next purge."
                    ) from None
                raise
            done.append("VACUUM rewrote the whole file without free pages")

        if mode == "wal":
            steps.now = "PRAGMA wal_checkpoint(TRUNCATE)"
            busy = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy or _has_content(path + "-wal"):
                raise _Pending(
                    "another connection has a read or write transaction open, so the WAL could not "
                    "be checkpointed and truncated; old page images remain in the -wal file (and "
                    "the database file) until the next purge."
                )
            done.append("the WAL was checkpointed and truncated to zero bytes")
        else:
            journal = path + "-journal"
            if _has_content(journal):
                steps.now = "removing the rollback journal"
                # Another connection left a PERSIST journal: the PERSIST -> DELETE switch of
                # this connection removes it unless a writer is using it right now.
                cur.execute("PRAGMA journal_mode=PERSIST")
                cur.execute("PRAGMA journal_mode=DELETE")
                if _has_content(journal):
                    raise _Pending(
                        "the rollback journal still holds old page images: another connection is "
                        "writing or uses journal_mode=PERSIST; purge again when it is done."
                    )
            done.append("no rollback journal with old pages is left")
    text = "; ".join(done)
    return f"{text[:1].upper()}{text[1:]}."


def _sqlite_warnings(engine: sa.Engine, level: str) -> list[str]:
    lines: list[str] = []
    with _sqlite_cursor(engine) as cur:
        secure = _secure_delete_value(cur) == 1
        mode = str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        path = _sqlite_file(cur)
    if not secure:
        then = ("purge: thorough's VACUUM removes them after each real run"
                if level == "thorough" else "set purge: thorough to have VACUUM remove them")
        lines.append("PRAGMA secure_delete is not in effect on this connection or SQLite build, so "
                     f"deleted rows stay readable in free pages; {then}")
    if mode == "persist":
        lines.append("journal_mode=persist keeps old page images in the -journal file after every "
                     "commit; use delete or wal")
    elif mode != "wal" and path and _has_content(path + "-journal"):
        lines.append(f"a rollback journal with old page images sits next to {os.path.basename(path)} "
                     "(some connection uses journal_mode=persist, or is writing right now)")
    return lines


# -- PostgreSQL ----------------------------------------------------------------------------
def _xid_precedes(xid: int, horizon: int) -> bool:
    """True when a 32-bit xid is older than a full (epoch-extended) xid."""
    distance = (horizon - xid) % _XID_MOD
    return 0 < distance < _XID_MOD // 2


def _pg_snapshot_holders(conn: sa.Connection, horizon: int, full: bool) -> list[str]:
    """Who keeps VACUUM from removing rows deleted before ``horizon`` (the next xid at our start).

    Lazy VACUUM ignores its own snapshot and, since PostgreSQL 14, the snapshots of other
    databases' backends. VACUUM FULL (``full``) runs under an ordinary snapshot whose xmin is
    the oldest transaction id still running anywhere on the server, so there a writing
    transaction in any database holds the removed rows back too.
    """
    holders: list[str] = []
    rows = conn.execute(sa.text(
        "SELECT pid, datname, application_name, usename, state, xact_start, backend_type, "
        "backend_xmin::text AS xmin, backend_xid::text AS xid, "
        # walsenders carry a standby's hot_standby_feedback, which counts in every database
        "(coalesce(datname = current_database(), false) OR backend_type = 'walsender') AS here "
        "FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL) "
        "ORDER BY here DESC, xact_start NULLS LAST"
    )).mappings().all()
    for r in rows:
        xids: list[str | None] = []
        # A lazy VACUUM's own snapshot does not count (autovacuum's ANALYZE writes, so has an xid).
        if r["here"] and r["backend_type"] != "autovacuum worker":
            xids.append(r["xmin"])
        if r["here"] or full:
            xids.append(r["xid"])
        if not any(x is not None and _xid_precedes(int(x), horizon) for x in xids):
            continue
        parts = [f"application {r['application_name']!r}" if r["application_name"] else r["backend_type"]]
        if r["usename"]:
            parts.append(f"user {r['usename']!r}")
        if not r["here"] and r["datname"]:
            parts.append(f"database {r['datname']!r}")
        since = ""
        if isinstance(r["xact_start"], dt.datetime):
            since = f" since {r['xact_start'].astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
        parts.append(f"{r['state'] or 'active'}{since}")
        holders.append(f"pid {r['pid']} ({', '.join(parts)})")
    slots = conn.execute(sa.text(
        "SELECT slot_name, xmin::text AS xmin FROM pg_replication_slots "
        "WHERE xmin IS NOT NULL AND (database IS NULL OR database = current_database())"
    )).mappings().all()
    holders += [f"replication slot {s['slot_name']!r}" for s in slots if _xid_precedes(int(s["xmin"]), horizon)]
    prepared = conn.execute(sa.text(
        "SELECT gid, transaction::text AS xid, database = current_database() AS here FROM pg_prepared_xacts"
    )).mappings().all()
    holders += [f"prepared transaction {p['gid']!r}" for p in prepared
                if (p["here"] or full) and _xid_precedes(int(p["xid"]), horizon)]
    return holders


def _pg_wait_for_snapshots(conn: sa.Connection, full: bool, consequence: str) -> None:
    """Return once nothing older than now holds VACUUM back; else raise _Pending."""
    horizon = int(conn.execute(sa.text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")).scalar_one())
    # Ordinary short transactions that happened to be open when the purge began end within
    # the grace period; what is still there afterwards is a long-open reader.
    deadline = time.monotonic() + SNAPSHOT_GRACE_S
    while holders := _pg_snapshot_holders(conn, horizon, full):
        if time.monotonic() >= deadline:
            raise _Pending(f"{_named(holders)} holds a snapshot or transaction older than {consequence}; "
                           "purge again once it has ended.")
        time.sleep(_POLL_S)


def _pg_may_vacuum(conn: sa.Connection, relation: str) -> bool | None:
    """Whether the current role may VACUUM ``relation`` (None: there is no such relation).

    VACUUM without the privilege only warns and skips the table, which would pass for
    success, so this is asked first.
    """
    row = conn.execute(sa.text(
        "SELECT pg_has_role(c.relowner, 'USAGE') OR r.rolsuper "
        "OR (NOT c.relisshared AND pg_has_role(d.datdba, 'USAGE')) "
        "FROM pg_class c, pg_roles r, pg_database d "
        "WHERE c.oid = to_regclass(:rel) AND r.rolname = current_user AND d.datname = current_database()"
    ), {"rel": relation}).first()
    return None if row is None else bool(row[0])


def _pg_lock_holders(conn: sa.Connection, relation: str) -> list[str]:
    rows = conn.execute(sa.text(
        "SELECT DISTINCT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.relation = to_regclass(:rel) AND l.granted AND l.pid <> pg_backend_pid() ORDER BY l.pid"
    ), {"rel": relation}).all()
    return [f"pid {pid} (application {app!r})" if app else f"pid {pid}" for pid, app in rows]


def _ddl(conn: sa.Connection, sql: str) -> sa.CursorResult[Any]:
    """Run a statement that cannot take bound parameters (identifiers in VACUUM, ALTER TABLE)."""
    if conn.dialect.paramstyle in ("pyformat", "format"):
        # psycopg and PyMySQL would read a % in a table name as a placeholder.
        sql = sql.replace("%", "%%")
    return conn.exec_driver_sql(sql)


def _pg_sqlstate(exc: BaseException) -> str | None:
    return getattr(getattr(exc, "orig", None), "sqlstate", None)


def _pg_purge(engine: sa.Engine, tables: list[str], level: str, steps: _Steps) -> str:
    quote = engine.dialect.identifier_preparer.quote
    # VACUUM refuses to run inside a transaction block.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        steps.now = "checking pg_stat_activity for old snapshots"
        _pg_wait_for_snapshots(conn, level == "thorough",
                               "this run's changes, so VACUUM must keep the removed rows")
        for table in tables:
            steps.now = f"checking the privileges on table {table!r}"
            allowed = _pg_may_vacuum(conn, quote(table))
            if allowed is None:
                raise _Refused(f"table {table!r} does not exist any more; nothing was purged after it.")
            if not allowed:
                raise _Refused(f"role may not VACUUM table {table!r}: only its owner, the database owner "
                               "or a superuser may.")
        try:
            conn.execute(sa.text("SELECT set_config('lock_timeout', :v, false)"),
                         {"v": f"{int(LOCK_TIMEOUT_S * 1000)}ms"})
            for table in tables:
                if level == "thorough":
                    steps.now = f"VACUUM (FULL, ANALYZE) of table {table!r}"
                    sql = f"VACUUM (FULL, ANALYZE) {quote(table)}"
                else:
                    steps.now = f"VACUUM (ANALYZE) of table {table!r}"
                    # Index cleanup may otherwise be skipped when few pages changed, leaving
                    # the removed keys in the indexes.
                    sql = f"VACUUM (ANALYZE, INDEX_CLEANUP ON) {quote(table)}"
                try:
                    _ddl(conn, sql)
                except sa.exc.OperationalError as exc:
                    if _pg_sqlstate(exc) != "55P03":
                        raise
                    holders = _pg_lock_holders(conn, quote(table))
                    by = f" (held by {_named(holders)})" if holders else ""
                    raise _Pending(f"VACUUM could not get its lock on table {table!r} within "
                                   f"{LOCK_TIMEOUT_S:g} s{by}; purge again when the table is free.") from None
            if level == "standard":
                return (f"VACUUM (ANALYZE) of {_tables_text(tables)} marked the removed rows' space as free; "
                        "their values remain readable in the table and index files (earlier statistics in "
                        "pg_statistic's) until PostgreSQL reuses that space; purge: thorough rewrites them.")
            _pg_rewrite_statistics(conn, steps, tables, quote)
        finally:
            conn.exec_driver_sql("RESET lock_timeout")
        steps.now = "CHECKPOINT"
        try:
            conn.exec_driver_sql("CHECKPOINT")
        except sa.exc.DBAPIError as exc:
            if _pg_sqlstate(exc) != "42501":
                raise
            steps.notes.append("CHECKPOINT was skipped (it needs superuser or pg_checkpoint), so the old "
                               "files go and old WAL becomes recyclable only at the next regular checkpoint.")
    return (f"VACUUM (FULL, ANALYZE) rewrote {_tables_text(tables)} and their indexes into new files and "
            "refreshed their statistics.")


def _pg_rewrite_statistics(conn: sa.Connection, steps: _Steps, tables: list[str], quote: Quote) -> None:
    """Rewrite the statistics catalogs: ANALYZE left the previous sample values in dead rows."""
    catalogs = ["pg_statistic"]
    extended = conn.execute(sa.text(
        "SELECT count(*) FROM pg_statistic_ext WHERE stxrelid = ANY(CAST(:rels AS regclass[]))"
    ), {"rels": [quote(t) for t in tables]}).scalar_one()
    if extended:
        catalogs.append("pg_statistic_ext_data")
    # The statistics ANALYZE just replaced were deleted after the purge began, so a
    # transaction that started since then can still hold them.
    steps.now = "checking pg_stat_activity before rewriting pg_statistic"
    _pg_wait_for_snapshots(conn, True, "the statistics ANALYZE just replaced, so pg_statistic keeps their "
                                       "sample values; the tables themselves were rewritten")
    conn.execute(sa.text("SELECT set_config('lock_timeout', :v, false)"),
                 {"v": f"{int(CATALOG_LOCK_TIMEOUT_S * 1000)}ms"})
    for catalog in catalogs:
        steps.now = f"VACUUM FULL of {catalog}"
        if not _pg_may_vacuum(conn, f"pg_catalog.{catalog}"):
            steps.notes.append(f"{catalog} was not rewritten (that needs the database owner or a superuser): "
                               "earlier sample values remain in its free space until reused.")
            continue
        try:
            conn.exec_driver_sql(f"VACUUM FULL pg_catalog.{catalog}")
        except sa.exc.OperationalError as exc:
            if _pg_sqlstate(exc) != "55P03":
                raise
            raise _Pending(f"the tables were rewritten, but {catalog} was busy, so earlier sample values may "
                           "remain in its free space; purge again later.") from None


def _pg_warnings(engine: sa.Engine, level: str) -> list[str]:
    lines: list[str] = []
    with engine.connect() as conn:
        settings = dict(conn.execute(sa.text(
            "SELECT name, setting FROM pg_settings WHERE name IN ('archive_mode', 'wal_level')"
        )).all())
        slots = conn.execute(sa.text("SELECT slot_name, slot_type, active FROM pg_replication_slots "
                                     "ORDER BY slot_name")).all()
        statistics_writable = _pg_may_vacuum(conn, "pg_catalog.pg_statistic")
    if settings.get("archive_mode", "off") != "off":
        lines.append(f"archive_mode={settings['archive_mode']} copies every WAL segment, with the old values of "
                     "deleted and updated rows, to the WAL archive; they stay there as long as the archive's "
                     "own retention keeps them")
    if slots:
        names = _named([f"{name!r} ({kind}{'' if active else ', inactive'})" for name, kind, active in slots])
        lines.append(f"replication slots {names} keep WAL segments, with removed values, until their consumer "
                     "has read them; an inactive slot keeps them for ever, and every replica keeps its own "
                     "copy of the files")
    if settings.get("wal_level") == "logical":
        lines.append("wal_level=logical lets logical decoding rebuild deleted rows' keys (whole rows with "
                     "REPLICA IDENTITY FULL) from WAL")
    if level == "thorough" and not statistics_writable:
        lines.append("purge: thorough cannot rewrite pg_statistic with this role (that needs the database "
                     "owner or a superuser), so earlier statistics' sample values stay in its free space")
    if level == "standard":
        lines.append("purge is 'standard': VACUUM leaves removed values in free space of the table and index "
                     "files until reused; purge: thorough rewrites them")
    return lines


# -- MariaDB / InnoDB ----------------------------------------------------------------------
def _mysql_purge(engine: sa.Engine, tables: list[str], level: str, steps: _Steps) -> str:
    if level == "standard":
        return ("Nothing to do at level 'standard': InnoDB purge frees pages lazily; values remain in the "
                ".ibd until overwritten (purge: thorough rebuilds the tables).")
    quote = engine.dialect.identifier_preparer.quote
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {int(LOCK_TIMEOUT_S)}")
        try:
            for table in tables:
                steps.now = f"ALTER TABLE {table} FORCE"
                try:
                    _ddl(conn, f"ALTER TABLE {quote(table)} FORCE")
                except sa.exc.OperationalError as exc:
                    if getattr(getattr(exc, "orig", None), "args", [None])[0] != 1205:
                        raise
                    holders = _mysql_open_transactions(conn)
                    by = f" (open transactions: {_named(holders)})" if holders else ""
                    raise _Pending(f"ALTER TABLE could not get the metadata lock on table {table!r} within "
                                   f"{LOCK_TIMEOUT_S:g} s{by}; purge again when the table is free.") from None
                steps.now = f"ANALYZE TABLE {table}"
                # Engine-independent statistics hold real values (min, max, histogram bounds);
                # a plain ANALYZE TABLE leaves them as they were unless use_stat_tables says so.
                persistent = " PERSISTENT FOR ALL" if _mysql_has_column_stats(conn, table, steps) else ""
                for row in _ddl(conn, f"ANALYZE TABLE {quote(table)}{persistent}").all():
                    if str(row[2]).lower() == "error":
                        raise _Refused(f"ANALYZE TABLE {table!r} failed: {row[3]}")
        finally:
            conn.exec_driver_sql("SET SESSION lock_wait_timeout = DEFAULT")
    return (f"ALTER TABLE ... FORCE rebuilt {_tables_text(tables)} into new files without the removed rows "
            "and ANALYZE TABLE refreshed their statistics.")


def _mysql_has_column_stats(conn: sa.Connection, table: str, steps: _Steps) -> bool:
    try:
        return conn.execute(sa.text(
            "SELECT COUNT(*) FROM mysql.column_stats WHERE db_name = DATABASE() AND table_name = :t"
        ), {"t": table}).scalar_one() > 0
    except sa.exc.DBAPIError:
        note = ("mysql.column_stats is not readable by this user, so engine-independent statistics (if any) "
                "were not refreshed.")
        if note not in steps.notes:
            steps.notes.append(note)
        return False


def _mysql_open_transactions(conn: sa.Connection) -> list[str]:
    rows = conn.execute(sa.text(
        "SELECT t.trx_mysql_thread_id, p.user, p.host FROM information_schema.innodb_trx t "
        "LEFT JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
        "WHERE t.trx_mysql_thread_id <> CONNECTION_ID() ORDER BY t.trx_started"
    )).all()
    return [f"connection {tid} (user {user!r} from {host!r})" for tid, user, host in rows]


def _mysql_warnings(engine: sa.Engine, level: str) -> list[str]:
    lines: list[str] = []
    with engine.connect() as conn:
        log_bin, row_image, fmt, expire = conn.execute(sa.text(
            "SELECT @@log_bin, @@binlog_row_image, @@binlog_format, @@binlog_expire_logs_seconds"
        )).one()
    if int(log_bin or 0) and str(row_image).upper() == "FULL" and str(fmt).upper() != "STATEMENT":
        kept = (f"until the binary logs expire (binlog_expire_logs_seconds={expire})" if int(expire or 0)
                else "for ever (binlog_expire_logs_seconds=0: binary logs never expire)")
        lines.append(f"binlog_row_image=FULL writes every deleted or updated row's old values into the binary "
                     f"log, where they stay {kept} and in every replica and binlog backup; consider "
                     "binlog_row_image=MINIMAL")
    if level == "standard":
        lines.append("purge is 'standard': InnoDB leaves removed values in the .ibd files until their pages "
                     "are overwritten; purge: thorough rebuilds the tables")
    return lines


_PURGERS: dict[str, Purger] = {
    "sqlite": _sqlite_purge,
    "postgresql": _pg_purge,
    "mysql": _mysql_purge,
}

_WARNINGS: dict[str, Callable[[sa.Engine, str], list[str]]] = {
    "sqlite": _sqlite_warnings,
    "postgresql": _pg_warnings,
    "mysql": _mysql_warnings,
}

"""Every per-database difference, keyed by SQLAlchemy dialect name, in one place.

``sqlite``, ``postgresql`` and ``mysql`` (MariaDB reports itself as mysql) differ in how a
transaction is made read-only, how rows are locked for a batch, how a list of keys is best
bound, how a date is truncated, how many different values are written in one statement,
and how a run takes a server-wide lock. Callers ask this module, never ``if dialect ==``.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import re
import zlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.compiler import compiles

from retention.errors import DatabaseUnreachable
from retention.logs import redact_url


def _shown_url(url: str) -> str:
    """The URL for a message: without its password, also when it does not parse as a URL
    (``postgresql//job:secret@host``): then everything before the last ``@`` but the scheme goes."""
    try:
        sa.engine.make_url(url)
    except Exception:
        head, at, tail = url.rpartition("@")
        if at:
            scheme = head.split("//", 1)[0] if "//" in head else ""
            return f"{scheme}//***@{tail}" if scheme else f"***@{tail}"
    return redact_url(url)


def _without_url(text: str, url: str) -> str:
    """An error text with the URL, and any piece of its password, replaced.

    A driver's or parser's message may quote part of the URL rather than all of it:
    ``job:p@ss:Hunter2@host`` fails with "invalid literal for int(): 'Hunter2@host'".
    """
    text = text.replace(url, _shown_url(url))
    head, at, _ = url.rpartition("@")
    userinfo = head.split("//", 1)[-1] if at else ""
    password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
    for piece in sorted({password, *re.split(r"[:@/]", password)}, key=len, reverse=True):
        if len(piece) >= 3:
            text = text.replace(piece, "***")
    return text


# Defaults of the policy file's per-database keys (policy/model.py), for callers without one.
CONNECT_TIMEOUT_S, LOCK_TIMEOUT_S, STATEMENT_TIMEOUT_S = 10.0, 300.0, 4 * 3600.0
# A statement's answer may take as long as the server lets it run; the socket waits that plus this.
_READ_MARGIN_S = 60.0
# SQLite's page cache per writing connection. Its default (2 MB) is less than the index pages a
# batch deleting thousands of rows with their cascade dirties: SQLite spills them to the file
# before the commit and reads them back within the batch or in the next. (cache_spill=OFF avoids
# that too, but then the cache grows with the transaction, unbounded.) 32 MiB: the bench's
# correspondence delete 7.0-8.4 s -> 6.2-6.9 s at 1M accounts, 168 s -> 145 s at 10M
# (bench/HOTSPOTS.md round 9), for ~35 MB more peak memory; 64 MiB gained nothing more, and
# anonymising (rows updated in place) and previews (reads) gained nothing.
SQLITE_CACHE_KIB = 32 * 1024


# MariaDB's bound on the range optimizer's work for one statement: 10x the largest batch's
# key list (execution.BATCH_MAX, 100,000 keys), still a bound.
MARIADB_SEL_ARG_WEIGHT = 1_000_000
_MARIADB_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)-MariaDB", re.IGNORECASE)


def _mariadb_version(server_version: str) -> tuple[int, ...]:
    """MariaDB's own version from PyMySQL's ``server_version`` ('5.5.5-10.11.19-MariaDB-...');
    () for MySQL or an unknown text."""
    found = _MARIADB_VERSION.search(server_version)
    return tuple(int(n) for n in found.groups()) if found else ()


def _connect_args(backend: str, connect_timeout: float, statement_timeout: float,
                  lock_timeout: float) -> dict[str, Any]:
    """Driver-level limits: the connect timeout, and on PostgreSQL the session's default limits.

    PostgreSQL's are passed as startup options rather than SET: they become the session's reset
    values, so the purge's own ``RESET lock_timeout`` comes back to them, not to "wait forever".
    """
    if backend == "postgresql":
        # libpq counts whole seconds and treats anything under 2 as 2.
        # 0: not set here, so the server's (or the role's) own setting applies.
        limits = [f"-c {name}={int(value * 1000)}" for name, value in
                  (("lock_timeout", lock_timeout), ("statement_timeout", statement_timeout)) if value]
        args: dict[str, Any] = {"connect_timeout": max(2, math.ceil(connect_timeout))}
        if limits:
            args["options"] = " ".join(limits)
        return args
    if backend in ("mysql", "mariadb"):
        # PyMySQL's connect_timeout covers the TCP connect only; the handshake is read under
        # read_timeout (a server that accepts and never answers: ~40 s, or for ever). So the
        # connection starts with the connect timeout for both, and _mysql_long_reads lengthens
        # them once connected.
        return {"connect_timeout": connect_timeout, "read_timeout": connect_timeout,
                "write_timeout": connect_timeout}
    return {}


def _mysql_long_reads(dbapi_conn: Any, statement_timeout: float) -> None:
    """Socket timeouts for a connected PyMySQL connection: they must outlast the longest statement
    (waiting for its answer is a read), and they end a wait on a server that stopped answering."""
    read = None if statement_timeout == 0 else statement_timeout + _READ_MARGIN_S
    # PyMySQL reads these attributes before every socket operation; it has no setter for them.
    if hasattr(dbapi_conn, "_read_timeout") and hasattr(dbapi_conn, "_write_timeout"):
        dbapi_conn._read_timeout = read
        dbapi_conn._write_timeout = read


def create_engine(url: str, readonly: bool = False, secure_delete: bool = True, *,
                  connect_timeout: float = CONNECT_TIMEOUT_S, lock_timeout: float = LOCK_TIMEOUT_S,
                  statement_timeout: float = STATEMENT_TIMEOUT_S, name: str | None = None) -> sa.Engine:
    """An engine for the job: SQLite gets explicit write locks, dry runs get read-only sessions.

    ``secure_delete``: SQLite overwrites deleted content with zeros (``PRAGMA secure_delete``).
    Pass False for a database whose purge level is ``none``: it costs 5-20 % of a delete.

    Every wait is bounded (docs/safety.md, "Timeouts"): connecting, waiting for a row lock, and
    one statement; 0 for the lock or statement limit leaves the server's own setting.
    """
    try:
        parsed = sa.engine.make_url(url)
        backend = parsed.get_backend_name()
        connect_args = _connect_args(backend, connect_timeout, statement_timeout, lock_timeout)
        engine = sa.create_engine(parsed, pool_pre_ping=backend != "sqlite", connect_args=connect_args)
    except Exception as exc:
        reason = _without_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, url)
        raise DatabaseUnreachable(f"{_database(name)}cannot use database URL {_shown_url(url)}: {reason}") from None
    name = engine.dialect.name

    @event.listens_for(engine, "connect")
    def _setup(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            if name == "sqlite":
                # pysqlite's own transaction handling would begin lazily (DEFERRED): we issue
                # BEGIN ourselves so a batch's rows are write-locked from its first SELECT.
                dbapi_conn.isolation_level = None
                cur.execute("PRAGMA foreign_keys=ON")
                if not readonly:
                    cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")  # negative: KiB, not pages
                if secure_delete:
                    cur.execute("PRAGMA secure_delete=ON")
                if readonly:
                    cur.execute("PRAGMA query_only=ON")
            elif name == "postgresql":
                if readonly:
                    cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                if int(dbapi_conn.info.server_version) >= 110000:
                    # Compiling the counting statements (costed far above jit_above_cost on a
                    # backlog) took longer than it saved: a 1M-account preview 9.2 s with JIT,
                    # 7.1 s without. PostgreSQL 10 has no such setting.
                    cur.execute("SET jit = off")
            elif name == "mysql":
                # batch_keys' JSON_ARRAYAGG is capped by it (1 MB by default; 100,000 keys of
                # BIGINT take 2.1 MB); the server still caps it at max_allowed_packet.
                _mysql_long_reads(dbapi_conn, statement_timeout)
                cur.execute("SET SESSION group_concat_max_len = 67108864")
                if lock_timeout:
                    # InnoDB takes whole seconds, at least 1.
                    cur.execute(f"SET SESSION innodb_lock_wait_timeout = {max(1, math.ceil(lock_timeout))}")
                server = str(getattr(dbapi_conn, "server_version", ""))
                if statement_timeout and "mariadb" in server.lower():
                    cur.execute(f"SET SESSION max_statement_time = {float(statement_timeout)}")
                if _mariadb_version(server) >= (10, 5, 9):
                    # A batch's keys are a literal IN list (key_in). Past 32,000 of them (the
                    # default weight) MariaDB drops the list's ranges and scans the whole
                    # table or index for every UPDATE and DELETE of a batch: 0.66 s against
                    # 0.12 s for 49,000 accounts at 1M (bench/HOTSPOTS.md round 10).
                    cur.execute(f"SET SESSION optimizer_max_sel_arg_weight = {MARIADB_SEL_ARG_WEIGHT}")
                if readonly:
                    cur.execute("SET SESSION TRANSACTION READ ONLY")
        finally:
            cur.close()
        if name == "postgresql" and not dbapi_conn.autocommit:
            dbapi_conn.commit()

    if name == "sqlite":

        @event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


def _database(name: str | None) -> str:
    return f"database '{name}': " if name else ""


def check_reachable(engine: sa.Engine, url: str, name: str | None = None) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        raise unreachable(exc, url, name) from None


def unreachable(exc: BaseException, url: str, name: str | None = None) -> DatabaseUnreachable:
    """The error for a failed connect: the driver's first line, the URL's password hidden."""
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseUnreachable(f"{_database(name)}cannot connect to {redact_url(url)}: {_without_url(reason, url)}")


def lock_rows(select: sa.Select[Any], dialect: str) -> sa.Select[Any]:
    """Lock the batch's rows until commit (SQLite's BEGIN IMMEDIATE already locks the file)."""
    return select if dialect == "sqlite" else select.with_for_update()


def _is_mariadb(conn: sa.Connection, since: tuple[int, ...]) -> bool:
    return bool(getattr(conn.dialect, "is_mariadb", False)) and (conn.dialect.server_version_info or ()) >= since


def batch_keys(conn: sa.Connection, query: sa.Select[Any]) -> list[Any]:
    """The keys a batch's SELECT (one column, ordered, perhaps locking) returns, in its order.

    MariaDB sends integer keys back as one JSON array (``JSON_ARRAYAGG`` over the locking
    SELECT as a derived table, whose ``FOR UPDATE`` still locks the rows): PyMySQL reads
    every row of a result in Python, ~1 s per 350k keys. The count travels with it, so a list
    cut short by a server limit is an error, never a wrong key.
    """
    column = query.selected_columns[0]
    if conn.dialect.name == "mysql" and isinstance(column.type, sa.Integer) and _is_mariadb(conn, (10, 5)):
        batch = query.subquery("rt_batch")
        ref = f"rt_batch.{conn.dialect.identifier_preparer.quote(batch.c[0].name)}"
        agg = sa.select(sa.func.count(), sa.literal_column(f"JSON_ARRAYAGG({ref} ORDER BY {ref})")).select_from(batch)
        count, text = conn.execute(agg).one()
        try:
            keys = json.loads(text) if text else []
        except ValueError:  # cut off: MariaDB leaves '[1,2,3,]'
            keys = None
        if keys is None or len(keys) != count or not _all_int(keys):
            raise sa.exc.DBAPIError(str(agg), None, RuntimeError(
                f"the batch's key list came back cut short ({len(text or '')} characters for {count} keys; "
                "group_concat_max_len?)"))
        return keys
    return list(conn.execute(query).scalars().all())  # fetchall, not a fetch per row


def _json_scalar(value: Any) -> Any:
    """JSON for what json.dumps does not know (dates, decimals, UUIDs): the text the database parses."""
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _json_rows(keys: Sequence[Any], columns: list[list[Any]]) -> str:
    """A batch as one JSON text, ``[[key, value, ...], ...]``, made by json's C encoder."""
    return json.dumps(list(zip(keys, *columns, strict=True)), default=_json_scalar)


def _has_json_table(conn: sa.Connection) -> bool:
    if getattr(conn.dialect, "is_mariadb", False):
        return _is_mariadb(conn, (10, 6))
    return (conn.dialect.server_version_info or ()) >= (8, 0)


def _all_int(keys: Sequence[Any]) -> bool:
    return all(type(k) is int for k in keys)


class _IntList(sa.sql.expression.ColumnElement[Any]):
    """A list of Python ints rendered into the statement as ``(1,2,3)``.

    Only for values whose type is exactly ``int``: their text is digits and a sign, nothing a
    statement could be steered by. Statements holding one are never cached (the list differs
    in every batch, and 5,000 keys of text per cache entry would pile up).
    """

    inherit_cache = False

    def __init__(self, keys: list[int]) -> None:
        self.keys = keys
        self.type = sa.Integer()


@compiles(_IntList)
def _render_int_list(element: _IntList, compiler: Any, **kw: Any) -> str:
    return "(" + ",".join(map(str, element.keys)) + ")"


def key_in(col: sa.ColumnElement[Any], keys: Sequence[Any], dialect: str) -> sa.ColumnElement[bool]:
    """``col IN keys``, bound as one parameter where the database allows it.

    PostgreSQL plans ``= ANY(array)`` far better than 1,000 bound parameters. SQLite takes
    integer keys as one JSON text (``IN (SELECT value FROM json_each(:keys))``): one parameter
    and a constant statement text. MariaDB gets integer keys as a literal list: PyMySQL would
    interpolate every bound key into the text anyway, after SQLAlchemy named each of them
    (together ~1 s of Python per 350k keys); a JSON_TABLE join works only in a multi-table
    UPDATE, and as ``IN (SELECT ... JSON_TABLE)`` a single-table UPDATE scans the whole table.
    Otherwise an expanding parameter (no per-key coercion).
    """
    keys = list(keys)
    if dialect == "mysql" and keys and _all_int(keys) and isinstance(col.type, sa.Integer):
        return col.op("IN")(_IntList(keys))
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        if keys and _all_int(keys) and isinstance(col.type, sa.Integer):
            # Integer keys as one array literal text: psycopg dumps a Python list element by
            # element in Python, a noticeable share of a large run.
            text = "{" + ",".join(map(str, keys)) + "}"
            return col == sa.any_(sa.cast(sa.bindparam(None, text, type_=sa.Text), postgresql.ARRAY(col.type)))
        return col == sa.any_(sa.bindparam(None, keys, type_=postgresql.ARRAY(col.type)))
    if dialect == "sqlite" and keys and _all_int(keys) and isinstance(col.type, sa.Integer):
        values = sa.func.json_each(sa.bindparam(None, json.dumps(keys), type_=sa.String)).table_valued("value")
        return col.in_(sa.select(values.c.value))
    return col.in_(sa.bindparam(None, keys, expanding=True, type_=col.type))


def updates_next_batch(dialect: str) -> bool:
    """Whether a batch of constant changes is chosen and written by one statement
    (:func:`update_next_batch`) rather than a locking SELECT and an UPDATE by key."""
    return dialect == "postgresql"


def update_next_batch(conn: sa.Connection, table: sa.Table, key: sa.Column[Any], batch: sa.Select[Any],
                      where: sa.ColumnElement[bool], constants: dict[str, Any]) -> tuple[list[Any], Any]:
    """Choose the next batch (``batch``: the keys, ordered and limited) and set ``constants`` on
    those of its rows that still pass ``where``, in one statement.

    Returns the keys changed, in order, and the last key ``batch`` chose (None: nothing left).
    The two differ only when another transaction changed a chosen row in between: the UPDATE
    re-checks ``where`` on the row's newest version. PostgreSQL only (``UPDATE ... RETURNING``
    in a CTE). It saves the locking SELECT, whose row locks write every tuple once more before
    the UPDATE writes it (~0.3 s per 350k rows). ``= ANY(ARRAY(subquery))`` reaches the rows
    by key; ``IN (subquery)`` hashes a scan of the whole table for every batch.
    """
    from sqlalchemy.dialects import postgresql

    chosen = batch.cte("rt_batch")
    keys = sa.func.array(sa.select(chosen.c[0]).scalar_subquery(), type_=postgresql.ARRAY(key.type))
    changed = table.update().where(where, key == sa.any_(keys)).values(constants).returning(key).cte("rt_changed")
    done = changed.c[0]
    stmt = sa.select(
        # Not max(): some key types (uuid) have no max on some servers.
        sa.select(chosen.c[0]).order_by(chosen.c[0].desc()).limit(1).scalar_subquery(),
        sa.select(sa.func.array_agg(postgresql.aggregate_order_by(done, done))).scalar_subquery(),
    )
    last, changed_keys = conn.execute(stmt).one()
    return list(changed_keys or []), last


def holds_as_key_list(dialect: str) -> bool:
    """Whether a statement that reads a whole range once (a count, not a batch) tests a hold
    that follows a foreign key as ``col IN (keys of the held rows)`` rather than an EXISTS per
    row. MariaDB computes the uncorrelated list once per statement and probes it; the EXISTS
    is a lookup per row into the linked table (1M-account backlog, accounts tally 3.2-4.2 s
    as EXISTS, 1.7 s as IN)."""
    return dialect == "mysql"


def range_blind(dialect: str) -> bool:
    """Whether the planner walks an index for a range without knowing how much of the table it
    covers. SQLite (no range statistics) then reads a third of a table row by row through the
    index, 4-8x slower than scanning it; PostgreSQL and MariaDB estimate the range and choose."""
    return dialect == "sqlite"


def prefers_semi_join(dialect: str) -> bool:
    """Whether "policy rows referenced by a child" is best asked as ``EXISTS`` (a semi-join) when
    counting over all due rows. PostgreSQL then skips the DISTINCT over a join (1M-account
    backlog: 1.0 s instead of 1.6-1.8 s); SQLite drives a join from the child table, and
    MariaDB is no faster either way, so they keep the DISTINCT join."""
    return dialect == "postgresql"


def flags_rows_apart(dialect: str) -> bool:
    """Whether a count that sums per-row conditions holding subqueries (a hold over a foreign
    key: EXISTS per row) computes them in a subquery of its own (``OFFSET 0``) first.

    PostgreSQL chooses between probing the index per row and hashing the subquery's rows once
    by how often it expects to evaluate the EXISTS, and in an aggregate's arguments it expects
    once: the correspondence count at 1M probed the accounts' primary key 6 x 362k times
    (4.7 s); in a fenced subquery it is costed per row and hashed (1.2 s). SQLite and MariaDB
    evaluate the EXISTS per row either way."""
    return dialect == "postgresql"


def tallies_by_groups(dialect: str) -> bool:
    """Whether a count that sums per-row hold conditions (a hold over a foreign key among them)
    groups the rows by the conditions instead, and sums the few groups in Python.

    MariaDB evaluates a condition again in every sum that names it: the correspondence tally at
    1M accounts looked up each of 367k due tickets' accounts three times (1.6 s); grouped by
    the conditions, once (1.0 s); the accounts tally 0.92 -> 0.73 s, invoices' unchanged
    (bench/HOTSPOTS.md round 10). A fenced subquery, as on PostgreSQL, is written to a
    temporary table row by row (round 9); the groups are at most a few dozen rows."""
    return dialect == "mysql"


def computes_cte_once(dialect: str) -> bool:
    """Whether a CTE read twice in one statement is computed once. MariaDB treats a CTE like a
    derived table per reference: the preview's held-back keys (1M-account backlog, 4.3 s) were
    computed again for the cascade count's NOT IN (11.5 s in all)."""
    return dialect != "mysql"


def joins_links(dialect: str) -> bool:
    """Whether the re-identification check flags linked rows by outer-joining the distinct keys
    of the linking rows rather than by an EXISTS per row. PostgreSQL: hash joins; an EXISTS in
    a select list becomes a subplan that the flattened query evaluates twice (100k-account
    backlog, 35k anonymised rows, three linking tables: 0.6-1.0 s joined, 0.9-2.1 s with
    EXISTS). SQLite: the same either way (0.8-1.1 s); EXISTS walks the foreign key's index.
    MariaDB keeps EXISTS (not measured at this size)."""
    return dialect == "postgresql"


def groups_by_window(dialect: str) -> bool:
    """Whether the re-identification check sizes each row's group of equal quasi-identifiers
    with ``count(*) OVER (PARTITION BY ...)`` (a sort) rather than a GROUP BY. MariaDB groups
    through a temporary table keyed on every quasi-identifier, which outgrows its 16 MB in
    memory and moves to disk: 1M-account backlog, 346k anonymised rows each its own group,
    12.4-13.2 s grouped against 5.0-5.5 s partitioned (same rows, same collation). PostgreSQL
    (1.8-2.1 s either way) and SQLite (3.4-4.5 s either way) keep the GROUP BY."""
    return dialect == "mysql"


def joins_references(dialect: str) -> bool:
    """Whether the re-identification check finds a delete policy's still-referenced rows by
    outer-joining the distinct referenced keys rather than by an EXISTS per row and referencing
    table. PostgreSQL: under the check's OR the EXISTS stays a subplan, one index probe per row
    past its term (1M-account backlog: 345k + 147k probes, 2.7 s of a 23.8 s run); the join
    reads the referencing tables once into a hash (35-45 % less for the whole check). An
    uncorrelated ``IN`` is no alternative: a set larger than ``work_mem`` is scanned per row.
    SQLite and MariaDB keep EXISTS (within their 10 % already)."""
    return dialect == "postgresql"


def unindexed(col: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """The column as a term no index serves, so the planner scans (SQLite: unary ``+``, a no-op)."""
    if dialect != "sqlite":
        return col
    from sqlalchemy.sql import operators
    from sqlalchemy.sql.elements import UnaryExpression

    return UnaryExpression(col, operator=operators.custom_op("+"), type_=col.type)


def generalise(col: sa.ColumnElement[Any], grain: str, dialect: str, step: int = 0) -> sa.ColumnElement[Any]:
    """The column truncated to a year, month or day, a postcode cut to its four digits, or a whole
    number floored to a multiple of ``step`` (-1 in bands of 1000 is -1000). Idempotent."""
    if grain == "postcode":
        return sa.func.substr(col, 1, 4)
    if grain == "band":
        n = sa.literal_column(str(int(step)))
        # Integer division truncates toward zero on every database (MariaDB spells it DIV), so
        # negative numbers are floored by hand: a band is [k*N, (k+1)*N) everywhere.
        div = "DIV" if dialect == "mysql" else "/"
        group = sa.sql.expression.Grouping  # custom operators get no parentheses of their own

        def quotient(x: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
            return group(group(x).op(div)(n))

        up = sa.case((col >= 0, quotient(col) * n), else_=(sa.literal_column("0") - quotient(n - 1 - col)) * n)
        return sa.cast(up, col.type)
    is_datetime = isinstance(col.type, sa.DateTime)
    if dialect == "sqlite":
        modifier = f"start of {grain}"
        if is_datetime:
            return sa.func.strftime("%Y-%m-%d %H:%M:%S.000000", col, modifier)
        return sa.func.date(col, modifier)
    if dialect == "postgresql":
        return sa.cast(sa.func.date_trunc(grain, col), col.type)
    pattern = {"year": "%Y-01-01", "month": "%Y-%m-01", "day": "%Y-%m-%d"}[grain]
    return sa.cast(sa.func.date_format(col, pattern), sa.DateTime if is_datetime else sa.Date)


# Rows of per-row values per UPDATE on MariaDB: JSON_TABLE's rows go through a temporary table
# of fixed-width rows (~1.8 KB for three names and an e-mail address), which past the session's
# 16 MB `tmp_table_size` moves to disk. 45,000 accounts in one statement took 13 µs a row,
# 5,000 8 µs (bench/HOTSPOTS.md round 10); the batch stays one transaction and one audit entry.
MYSQL_JSON_ROWS = 5_000


def bulk_update(
    conn: sa.Connection,
    table: sa.Table,
    key: sa.Column[Any],
    keys: Sequence[Any],
    values: dict[str, list[Any]],
    constants: dict[str, Any] | None = None,
) -> int:
    """Write a different value per row for each column in ``values`` and the same SQL value or
    expression for each column in ``constants``, in bulk, never row by row. Returns the number
    of rows changed.

    PostgreSQL and MariaDB write both kinds in one UPDATE: a second UPDATE of the same rows
    would write every row version twice (PostgreSQL) or every row twice (InnoDB's undo log).
    """
    constants = constants or {}
    if not keys or not (values or constants):
        return 0
    dialect = conn.dialect.name
    names = list(values)
    if not values:
        return int(conn.execute(table.update().where(key_in(key, keys, dialect)).values(constants)).rowcount)
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        # One UPDATE ... FROM json_array_elements(:rows): a single round trip and a single text
        # parameter for the whole batch, made by json's C encoder from row lists (psycopg
        # quotes text arrays element by element in Python, which cost more than the UPDATE).
        payload = _json_rows(keys, [values[n] for n in names])
        rows = sa.cast(sa.bindparam("rt_rows", payload, type_=sa.Text), postgresql.JSON)
        src = sa.func.json_array_elements(rows).table_valued("value").render_derived(name="rt_src")
        item = src.c.value.op("->>", return_type=sa.Text)

        def field(i: int, type_: Any) -> sa.ColumnElement[Any]:
            return sa.cast(item(sa.literal_column(str(i))), type_)

        # The extra `key = ANY(keys)` lets the planner reach the rows by the primary key; with
        # the join alone it hashes a sequential scan of the whole table for every batch.
        stmt = (
            table.update()
            .where(key == field(0, key.type), key_in(key, keys, dialect))
            .values({**{n: field(i + 1, table.c[n].type) for i, n in enumerate(names)}, **constants})
        )
        return int(conn.execute(stmt).rowcount)
    if dialect == "mysql" and _has_json_table(conn):
        # As on PostgreSQL: the rows as one JSON text, joined through JSON_TABLE (MariaDB 10.6,
        # MySQL 8); PyMySQL escapes one string instead of every value of a multi-row INSERT.
        type_sql = [col.type.compile(dialect=conn.dialect) for col in (key, *[table.c[n] for n in names])]
        prep = conn.dialect.identifier_preparer
        columns = ", ".join(f"{prep.quote(n)} {t} PATH '$[{i}]'" for i, (n, t) in enumerate(zip(
            ["rt_key", *names], type_sql, strict=True)))
        src = (
            sa.text(f"SELECT * FROM JSON_TABLE(:rt_rows, '$[*]' COLUMNS ({columns})) AS rt_jt")
            .bindparams(sa.bindparam("rt_rows", type_=sa.Text))
            .columns(sa.column("rt_key", key.type), *[sa.column(n, table.c[n].type) for n in names])
            .subquery("rt_src")
        )
        joined = table.update().where(key == src.c.rt_key).values({**{n: src.c[n] for n in names}, **constants})
        changed = 0
        # MYSQL_JSON_ROWS rows per statement, all in the batch's transaction (see the constant).
        for start in range(0, len(keys), MYSQL_JSON_ROWS):
            payload = _json_rows(keys[start:start + MYSQL_JSON_ROWS],
                                 [values[n][start:start + MYSQL_JSON_ROWS] for n in names])
            changed += int(conn.execute(joined, {"rt_rows": payload}).rowcount)
        return changed
    if dialect == "mysql":
        # executemany of UPDATEs is ~40x slower on MariaDB than a temp table joined once.
        tmp = sa.Table(
            "rt_fake_values",
            sa.MetaData(),
            sa.Column("rt_key", key.type, primary_key=True),
            *[sa.Column(n, table.c[n].type) for n in names],
            prefixes=["TEMPORARY"],
        )
        tmp.create(conn, checkfirst=False)
        try:
            rows = [{"rt_key": k, **{n: values[n][i] for n in names}} for i, k in enumerate(keys)]
            conn.execute(tmp.insert(), rows)
            joined = table.update().where(key == tmp.c.rt_key).values({**{n: tmp.c[n] for n in names}, **constants})
            return int(conn.execute(joined).rowcount)
        finally:
            conn.exec_driver_sql(f"DROP TEMPORARY TABLE {conn.dialect.identifier_preparer.quote(tmp.name)}")
    # SQLite: one prepared UPDATE by key, per-row values and constants together, executemany'd
    # by the driver itself (SQLAlchemy's own executemany builds a parameter dict per row).
    # SQLAlchemy compiles the statement, so the constants' SQL and every value's bind
    # processing (dates stored exactly as SQLAlchemy stores them) are its own.
    slots = {n: f"rt_v{i}" for i, n in enumerate(names)}
    stmt = (
        table.update()
        .where(key == sa.bindparam("rt_key", type_=key.type))
        .values({**{n: sa.bindparam(slot, type_=table.c[n].type) for n, slot in slots.items()}, **constants})
    )
    compiled = stmt.compile(dialect=conn.dialect)
    order = compiled.positiontup or []
    fixed = compiled.construct_params({"rt_key": None, **dict.fromkeys(slots.values())})
    per_row = {slot: values[n] for n, slot in slots.items()} | {"rt_key": list(keys)}
    columns = []
    for name in order:
        proc = compiled.binds[name].type._cached_bind_processor(conn.dialect)
        if name in per_row:
            columns.append(per_row[name] if proc is None else [proc(v) for v in per_row[name]])
        else:  # a constant's parameter: the same in every row
            value = fixed[name] if proc is None else proc(fixed[name])
            columns.append(itertools.repeat(value, len(keys)))
    cursor = conn.exec_driver_sql(str(compiled), list(zip(*columns, strict=True)))
    return int(cursor.rowcount)


def lock_id(name: str) -> int:
    """A stable 31-bit number for a lock name (advisory locks take integers on PostgreSQL)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def try_server_lock(conn: sa.Connection, name: str) -> bool:
    """Take a lock that lives on the database server, so two hosts cannot run at once."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:id)"), {"id": lock_id(name)}).scalar())
    if dialect == "mysql":
        return conn.execute(sa.text("SELECT GET_LOCK(:name, 0)"), {"name": name[:64]}).scalar() == 1
    return True


def release_server_lock(conn: sa.Connection, name: str) -> None:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id(name)})
    elif dialect == "mysql":
        conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name[:64]})


# The dates a run can read and order: Python's (and pendulum's) years 1-9999.
_FIRST_DAY, _LAST_MOMENT = datetime.datetime(1, 1, 1), datetime.datetime(9999, 12, 31, 23, 59, 59, 999999)


def _date_bounds(column: sa.Column[Any]) -> tuple[Any, Any]:
    if isinstance(column.type, sa.DateTime):
        if getattr(column.type, "timezone", False):
            utc = datetime.UTC
            return _FIRST_DAY.replace(tzinfo=utc), _LAST_MOMENT.replace(tzinfo=utc)
        return _FIRST_DAY, _LAST_MOMENT
    return _FIRST_DAY.date(), _LAST_MOMENT.date()


def beyond_dates(value: sa.ColumnElement[Any], column: sa.Column[Any]) -> sa.ColumnElement[bool]:
    """Values that sort after every date (SQLite: text starting with a letter, BLOBs;
    PostgreSQL: ``infinity``, years after 9999): never readable, and a range on the index."""
    return value > sa.literal(_date_bounds(column)[1], column.type)


def readable_date(value: sa.ColumnElement[Any], column: sa.Column[Any], dialect: str,
                  upper: bool = True) -> sa.ColumnElement[bool]:
    """True where a non-NULL ``after`` value is a real date or timestamp; never NULL for one.

    A value that is not one is never due (a wrongly deleted row is the worst bug): compared as
    stored, it would sort before most cut-offs. What the column types let in differs:

    - SQLite stores anything in a DATETIME/DATE column: ``''``, numbers (they sort before all
      text), free text, impossible dates (``'2020-13-45 99:99:99'``, ``'2020-02-30'``), a time
      without a date (``'10:00'``). Readable: text from ``0001-01-01`` on (a range the
      ``after`` index serves) that ``julianday`` reads, whose day exists in its month.
      ``'2020-01-01 24:00:00'`` is read as the next midnight, and sorts there: readable.
    - MariaDB/MySQL keep zero dates (``'0000-00-00'``) and zero parts (``'2019-00-00'``,
      ``'2019-05-00'``) unless ``sql_mode`` has NO_ZERO_DATE/NO_ZERO_IN_DATE (MariaDB's
      default has neither), and impossible days with ALLOW_INVALID_DATES. Readable: from
      ``0001-01-01`` on, and ``DATE_ADD(value, INTERVAL 0 DAY)`` is not NULL.
    - PostgreSQL checks dates on input; what it holds beyond Python's years is ``-infinity``,
      ``infinity`` and years BC or after 9999. Readable: between 0001-01-01 and 9999-12-31.

    The bounds come first so that the planner keeps a range on the ``after`` index. ``upper``:
    also the upper bound, which a caller that already compares with a cut-off can leave out.

    On SQLite the function calls are paid per row of the due range: ~40 % more CPU time for
    the preview's counting statements on the demo shop (docs/how-it-works.md, section 5).
    Nothing cheaper is enough: the bounds alone let '2020-13-45' through, julianday alone
    '2020-02-30' and '10:00'.
    """
    lo, hi = _date_bounds(column)
    bounds = [value >= sa.literal(lo, column.type)]
    if upper:
        bounds.append(value <= sa.literal(hi, column.type))
    if dialect == "sqlite":
        day = sa.func.substr(value, 1, 10)
        return sa.and_(
            *bounds,
            sa.func.julianday(value).is_not(None),  # a date and time SQLite reads, nothing after it
            # Days 01-28 exist in every month; any other text there (days 29-31, or no YYYY-MM-DD
            # at all: julianday also reads '10:00') must survive normalising, which rolls 30
            # February over to 1 March. Only the date part: with the time, 23:59:59.999999 would
            # round up into the next day.
            sa.or_(sa.func.substr(value, 9, 2).between("01", "28"),
                   sa.func.coalesce(sa.func.date(day, "+0 days"), "") == day),
        )
    if dialect == "mysql":
        return sa.and_(*bounds, sa.func.date_add(value, sa.text("INTERVAL 0 DAY")).is_not(None))
    return sa.and_(*bounds)


# Errors after which the same transaction, started again on a new connection, can succeed: the
# connection went (killed, failover, restart), a deadlock or serialization victim, a lock wait
# that timed out. Never a constraint, a syntax or a permission error: those fail the same way
# every time.
_TRANSIENT_SQLSTATES = {
    "postgresql": {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57P01", "57P02", "57P03",  # admin_shutdown (pg_terminate_backend), crash_shutdown, cannot_connect_now
        "08000", "08001", "08003", "08004", "08006",  # connection exceptions
    },
}
_TRANSIENT_ERRNOS = {
    "mysql": {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1205,  # lock wait timeout exceeded
        1213,  # deadlock found
        1927,  # connection was killed (MariaDB KILL)
        2003,  # can't connect
        2006,  # server has gone away
        2013,  # lost connection during query
        2055,  # lost connection (extended)
    },
}
_TRANSIENT_TEXTS = {"sqlite": ("database is locked", "database table is locked")}


def is_transient(exc: BaseException, dialect: str) -> bool:
    """Whether a failed transaction may be retried as it was (see the tables above)."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", None) or exc
    if dialect in _TRANSIENT_SQLSTATES:
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if state is None:
            # psycopg raises OperationalError without a SQLSTATE when the server never answered
            # (refused, reset, timed out): a connection problem.
            # (psycopg raises subclasses, e.g. ConnectionTimeout for a connect timeout.)
            return any(cls.__name__ == "OperationalError" for cls in type(orig).__mro__)
        return state in _TRANSIENT_SQLSTATES[dialect]
    if dialect in _TRANSIENT_ERRNOS:
        args = getattr(orig, "args", ())
        return bool(args) and isinstance(args[0], int) and args[0] in _TRANSIENT_ERRNOS[dialect]
    text = str(orig).lower()
    return any(t in text for t in _TRANSIENT_TEXTS.get(dialect, ()))


def registry_table_options() -> dict[str, Any]:
    """Options of the hold registry table (engine/holds.py): on MariaDB a transactional engine,
    so a hold and the run that reads it see one consistent state, and full Unicode for the
    reason text a person writes. Other databases ignore ``mysql_`` options."""
    return {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def server_identity(conn: sa.Connection) -> dict[str, Any]:
    """Where the connection really ends up, as far as the server says so cheaply: a plan made on
    a staging copy must not be applied to production (or the other way round) by a URL edit.

    PostgreSQL: the cluster's system identifier (superuser or pg_monitor) and the database's
    OID; MariaDB: the server's host name and port. SQLite: nothing beyond the file name.
    """
    dialect = conn.dialect.name
    out: dict[str, Any] = {}
    try:
        if dialect == "postgresql":
            out["database_oid"] = int(conn.execute(sa.text(
                "SELECT oid FROM pg_database WHERE datname = current_database()")).scalar_one())
            with conn.begin_nested():
                out["system_identifier"] = str(conn.execute(sa.text(
                    "SELECT system_identifier FROM pg_control_system()")).scalar_one())
        elif dialect == "mysql":
            host, port = conn.execute(sa.text("SELECT @@hostname, @@port")).one()
            out["server"] = f"{host}:{port}"
    except sa.exc.DBAPIError:
        pass  # not allowed to ask: the URL's host and database name stay the identity
    return out


# -- range partitions (engine/partitions.py) -------------------------------------------------
class RangePartition:
    """One partition of a table range-partitioned on one column: its name and the exclusive
    upper bound of its range as a value of the column's type (None: MAXVALUE or DEFAULT, no end)."""

    def __init__(self, name: str, column: str, upper: Any) -> None:
        self.name, self.column, self.upper = name, column, upper

    def __repr__(self) -> str:
        return f"RangePartition({self.name!r}, {self.column!r}, {self.upper!r})"


_PG_PARTITIONS = """
SELECT c.relname, a.attname, pg_get_expr(c.relpartbound, c.oid), format_type(a.atttypid, a.atttypmod),
       pt.partnatts, pt.partstrat
FROM pg_partitioned_table pt
JOIN pg_class p ON p.oid = pt.partrelid
JOIN pg_attribute a ON a.attrelid = p.oid AND a.attnum = pt.partattrs[0]
JOIN pg_inherits i ON i.inhparent = p.oid
JOIN pg_class c ON c.oid = i.inhrelid
WHERE p.relname = :t AND p.relnamespace = to_regnamespace(coalesce(:s, current_schema()))::oid
ORDER BY c.relname
"""
_PG_UPPER = re.compile(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$")
_QUOTED = re.compile(r"^'((?:[^']|'')*)'$")


def partition_tables(engine: sa.Engine) -> set[str]:
    """Tables of the default schema that are partitions of another table. PostgreSQL lists them
    as tables, with a clone of the parent's foreign keys each; read as tables of their own they
    would count every referencing row twice (once as the parent's). MariaDB's partitions are
    not tables."""
    if engine.dialect.name != "postgresql":
        return set()
    with engine.connect() as conn:
        return set(conn.execute(sa.text(
            "SELECT c.relname FROM pg_class c WHERE c.relispartition "
            "AND c.relnamespace = to_regnamespace(current_schema())"
        )).scalars())


def range_partitions(conn: sa.Connection, table: sa.Table) -> list[RangePartition] | None:
    """The range partitions of ``table`` on one column, read from the catalog; None when the
    table is not range-partitioned on a single column (or the database has no partitions).

    PostgreSQL: ``pg_partitioned_table``/``pg_inherits`` and each partition's bound text,
    whose ``TO`` value the server casts back to the column's type. MariaDB:
    ``information_schema.PARTITIONS``, ``RANGE COLUMNS(col)`` or ``RANGE(YEAR(col))`` /
    ``RANGE(TO_DAYS(col))`` (other partitioning functions are not read: the table then
    qualifies for nothing). Subpartitions, list and hash partitioning: None.
    """
    name = conn.dialect.name
    if name == "postgresql":
        rows = conn.execute(sa.text(_PG_PARTITIONS), {"t": table.name, "s": table.schema}).all()
        if not rows or any(r[4] != 1 or r[5] != "r" for r in rows):
            return None
        out = []
        for relname, column, bound, type_name, _n, _s in rows:
            if bound == "DEFAULT":
                out.append(RangePartition(relname, column, None))
                continue
            found = _PG_UPPER.match(bound or "")
            quoted = _QUOTED.match(found.group(2)) if found else None
            if quoted is None:  # MAXVALUE (or a bound this reader does not know: no end)
                out.append(RangePartition(relname, column, None))
                continue
            literal = quoted.group(1).replace("''", "'")
            upper = conn.execute(sa.text(f"SELECT CAST(:v AS {type_name})"), {"v": literal}).scalar_one()
            out.append(RangePartition(relname, column, upper))
        return out
    if name == "mysql":
        rows = conn.execute(sa.text(
            "SELECT PARTITION_NAME, PARTITION_METHOD, PARTITION_EXPRESSION, PARTITION_DESCRIPTION, "
            "SUBPARTITION_METHOD FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = coalesce(:s, DATABASE()) "
            "AND TABLE_NAME = :t ORDER BY PARTITION_ORDINAL_POSITION"), {"t": table.name, "s": table.schema}).all()
        if not rows or rows[0][0] is None or any(r[4] is not None for r in rows):
            return None
        out = []
        for part, method, expression, description, _sub in rows:
            column, upper_sql = _mysql_upper(method, expression or "", description or "")
            if column is None:
                return None
            upper = None if upper_sql is None else conn.execute(sa.text(f"SELECT {upper_sql}")).scalar_one()
            out.append(RangePartition(part, column, upper))
        return out
    return None


_MY_COLUMN = re.compile(r"^`((?:[^`]|``)+)`$")
_MY_FUNCTION = re.compile(r"^(year|to_days)\(`((?:[^`]|``)+)`\)$", re.IGNORECASE)
_MY_LITERAL = re.compile(r"^'[0-9: .-]+'$")


def _mysql_upper(method: str, expression: str, description: str) -> tuple[str | None, str | None]:
    """(partition column, SQL of the partition's exclusive upper bound as a date/time) for the
    forms read; (None, None) for any other. Only digits and date punctuation reach the SQL."""
    if method == "RANGE COLUMNS":
        found = _MY_COLUMN.match(expression)
        if not found:
            return None, None
        if description == "MAXVALUE":
            return found.group(1), None
        return (found.group(1), f"CAST({description} AS DATETIME(6))") if _MY_LITERAL.match(description) \
            else (None, None)
    found = _MY_FUNCTION.match(expression)
    if method != "RANGE" or not found:
        return None, None
    if description == "MAXVALUE":
        return found.group(2), None
    if not re.fullmatch(r"-?[0-9]+", description):
        return None, None
    n = int(description)
    if found.group(1).lower() == "year":
        return found.group(2), f"CAST(MAKEDATE({n}, 1) AS DATETIME)" if n >= 1 else "NULL"
    return found.group(2), f"CAST(FROM_DAYS({n}) AS DATETIME)"


def partition_rows(table: sa.Table, partition: str, dialect: str) -> tuple[sa.Table, Any]:
    """A FROM for the rows of one partition, and a function that finishes a SELECT over it:
    PostgreSQL names the partition as a table (same columns); MariaDB reads
    ``table PARTITION (p)``."""
    if dialect == "postgresql":
        copy = sa.Table(partition, sa.MetaData(), *[sa.Column(c.name, c.type) for c in table.c],
                        schema=table.schema)
        return copy, lambda select: select
    quoted = f"PARTITION ({_quote_mysql(partition)})"
    return table, lambda select: select.with_hint(table, quoted, dialect_name="mysql")


def _quote_mysql(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _quote_pg(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lock_partition(conn: sa.Connection, table: sa.Table, partition: str) -> None:
    """Stop writers to the partition until :func:`drop_partition` (PostgreSQL: until commit).

    MariaDB: ``LOCK TABLES t WRITE`` (DDL commits, so no transaction can hold its row locks
    across the drop); the checks that follow may then read only that table."""
    if conn.dialect.name == "postgresql":
        target = ".".join(_quote_pg(n) for n in [*([table.schema] if table.schema else []), partition])
        conn.exec_driver_sql(f"LOCK TABLE {target} IN SHARE MODE")
    else:
        conn.exec_driver_sql(f"LOCK TABLES {_quote_mysql(table.name)} WRITE")


def drop_partition(conn: sa.Connection, table: sa.Table, partition: str) -> None:
    """Remove the partition and its rows in one statement (PostgreSQL: detach, then drop, in
    the caller's transaction; MariaDB: ``ALTER TABLE ... DROP PARTITION``, atomic on its own)."""
    if conn.dialect.name == "postgresql":
        schema = [_quote_pg(table.schema)] if table.schema else []
        parent = ".".join([*schema, _quote_pg(table.name)])
        part = ".".join([*schema, _quote_pg(partition)])
        conn.exec_driver_sql(f"ALTER TABLE {parent} DETACH PARTITION {part}")
        conn.exec_driver_sql(f"DROP TABLE {part}")
    else:
        conn.exec_driver_sql(f"ALTER TABLE {_quote_mysql(table.name)} DROP PARTITION {_quote_mysql(partition)}")


def unlock_partition(conn: sa.Connection) -> None:
    if conn.dialect.name == "mysql":
        conn.exec_driver_sql("UNLOCK TABLES")


def partitions_need_own_table(dialect: str) -> bool:
    """Whether the checks before a partition drop may read only the partitioned table
    (MariaDB's LOCK TABLES): holds through links and references from other tables then rule
    the fast path out. (InnoDB has no foreign keys on partitioned tables anyway.)"""
    return dialect == "mysql"


def stream_keys(conn: sa.Connection, query: sa.Select[Any], chunk: int) -> Any:
    """The one column of a parameterless SELECT, in lists of up to ``chunk`` values, read with a
    server-side cursor straight from the driver (PostgreSQL: a named cursor; MariaDB: PyMySQL's
    unbuffered cursor). SQLAlchemy's result rows cost ~6 us per key, most of reading a large
    partition's keys. The cursor is closed before this returns: a DDL on the table may follow."""
    if conn.dialect.name == "mysql" and isinstance(query.selected_columns[0].type, sa.Integer):
        yield from _mysql_key_pages(conn, query, chunk)
        return
    sql = str(query.compile(dialect=conn.dialect))
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        cur = dbapi.cursor(name="rt_keys")  # type: ignore[union-attr]
    elif conn.dialect.name == "mysql":
        import pymysql.cursors

        cur = dbapi.cursor(pymysql.cursors.SSCursor)  # type: ignore[union-attr]
    else:
        cur = dbapi.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(sql)
        while rows := cur.fetchmany(chunk):
            yield [r[0] for r in rows]
    finally:
        cur.close()


def _mysql_key_pages(conn: sa.Connection, query: sa.Select[Any], chunk: int) -> Any:
    """MariaDB, integer keys: each page of ``chunk`` keys as one JSON array, aggregated by the
    server over the next keys in key order and parsed by ``json.loads`` in C. PyMySQL decodes
    every row in Python: 333k keys of a partition took 0.80 s row by row, 0.35-0.39 s in pages.

    The pages walk the key (``key >= last``), skipping the repeats of ``last`` the page before
    already gave: every row is read once, a key repeated in the partition (unique only with
    its `after`) as often as it occurs, even across a page boundary. Numbering the rows with
    ``row_number()`` instead took 9.4 s for 3.3M keys (MariaDB's window sorts through a
    temporary table); 34 such pages took 3.4-4.8 s."""
    import bisect
    import json

    key = query.selected_columns[0]
    base = query.order_by(None)
    name = _quote_mysql(key.name)
    dbapi = conn.connection.dbapi_connection
    cur = dbapi.cursor()  # type: ignore[union-attr]  # one row per page: buffered
    # JSON_ARRAYAGG stops at group_concat_max_len (1 MB by default): a page of 100,000 keys of
    # up to 20 digits needs ~2.1 MB. Raised for these statements only; a cut page would not parse.
    cur.execute("SET @rt_gcml = @@SESSION.group_concat_max_len, SESSION group_concat_max_len = %s",
                (max(chunk * 22, 1 << 20),))
    try:
        last, repeats = None, 0
        while True:
            page = base if last is None else base.where(key >= last)
            page = page.order_by(key).limit(chunk).offset(repeats)
            inner = page.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
            cur.execute(f"SELECT JSON_ARRAYAGG(rt_k.{name} ORDER BY rt_k.{name}) FROM ({inner}) AS rt_k")
            (text,) = cur.fetchone()
            keys = json.loads(text) if text is not None else []
            if keys:
                yield keys
            if len(keys) < chunk:
                return
            tail = keys[-1]  # the page is in key order: its repeats of `tail` are at its end
            trailing = len(keys) - bisect.bisect_left(keys, tail)
            repeats = trailing + (repeats if tail == last else 0)
            last = tail
    finally:
        cur.close()
        restore = dbapi.cursor()  # type: ignore[union-attr]
        try:
            restore.execute("SET SESSION group_concat_max_len = @rt_gcml")
        finally:
            restore.close()

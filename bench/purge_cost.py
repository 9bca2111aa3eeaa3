"""What each purge level costs, in seconds, and what it leaves behind.

For every database, table size and level: build ``people(id, email, closed_at)`` with an
index on ``email``, delete 40 % of the rows the way a run does (one committed DELETE, through
an engine made by ``retention.databases.dialects.create_engine``), then time ``retention.databases.purge.purge``.
Deleted rows carry e-mail addresses starting ``del-``, kept ones ``kep-``, so a scan of the
raw files afterwards counts how many deleted values are still readable (needs read access
to the server's data directory, i.e. root; otherwise the column says n/a).

    .venv/bin/python bench/purge_cost.py                      # the figures in docs/erasure.md
    .venv/bin/python bench/purge_cost.py --rows 100000 --databases sqlite

Prints a Markdown table on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from retention.databases import dialects
from retention.databases.purge import purge

LEVELS = ("none", "standard", "thorough")
DELETED = re.compile(rb"del-[0-9a-f]{32}@example\.invalid")
POSTGRES_URL = os.environ.get("RETENTION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("RETENTION_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
# 40 % of the rows are due, as in the measurement that started this (39,590 of 100,000).
DELETE_SQL = "DELETE FROM people WHERE id % 5 < 2"


@dataclass
class Row:
    database: str
    mode: str
    rows: int
    level: str
    delete_s: float
    purge_s: float
    result: str
    size_mb: float
    left: str


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def count_deleted(paths: list[Path]) -> str:
    found: set[bytes] = set()
    try:
        for path in paths:
            if path.exists():
                found.update(DELETED.findall(path.read_bytes()))
    except PermissionError:
        return "n/a"
    return f"{len(found):,}"


def size_mb(paths: list[Path]) -> float:
    try:
        return sum(p.stat().st_size for p in paths if p.exists()) / 2**20
    except PermissionError:
        return float("nan")


# -- SQLite --------------------------------------------------------------------------------
def bench_sqlite(rows: int, level: str, mode: str, secure_delete: bool) -> Row:
    with tempfile.TemporaryDirectory(prefix="purge-bench-") as tmp:
        path = Path(tmp) / "shop.db"
        con = sqlite3.connect(path, isolation_level=None)
        con.execute(f"PRAGMA journal_mode={mode}")
        con.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, email VARCHAR(80) NOT NULL, closed_at DATETIME)")
        con.execute(
            "INSERT INTO people "
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) "
            "SELECT i, CASE WHEN i % 5 < 2 THEN 'del-' ELSE 'kep-' END || lower(hex(randomblob(16))) "
            "|| '@example.invalid', datetime('2020-01-01', '+' || (i % 1000) || ' days') FROM s",
            (rows,),
        )
        con.execute("CREATE INDEX ix_people_email ON people (email)")
        con.close()

        engine = dialects.create_engine(f"sqlite:///{path}")
        try:
            if secure_delete:
                delete_s = timed(lambda: _sa_delete(engine))
            else:
                delete_s = timed(lambda: _sqlite_delete_insecure(path))
            result = purge(engine, "bench", ["people"], level)
            files = [path, Path(f"{path}-wal"), Path(f"{path}-journal")]
            # Counted while the engine's connection is open: the last close would checkpoint.
            left = count_deleted(files)
            mb = size_mb(files)
        finally:
            engine.dispose()
    label = level if secure_delete else f"{level} (secure_delete off)"
    return Row("SQLite", mode, rows, label, delete_s, result.duration_s, result.result, mb, left)


def _sa_delete(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        pyformat = conn.dialect.paramstyle in ("pyformat", "format")
        conn.exec_driver_sql(DELETE_SQL.replace("%", "%%") if pyformat else DELETE_SQL)


def _sqlite_delete_insecure(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA secure_delete=OFF")
    with con:
        con.execute(DELETE_SQL)
    con.close()


# -- PostgreSQL ----------------------------------------------------------------------------
@contextmanager
def server_database(admin_url: str, kind: str) -> Iterator[str]:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"rt_purge_bench_{secrets.token_hex(4)}"
    quoted = f'"{name}"' if kind == "postgresql" else f"`{name}`"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if kind == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}{force}")
        admin.dispose()


def _pg_files(conn: sa.Connection) -> list[Path]:
    datadir = Path(conn.exec_driver_sql("SHOW data_directory").scalar_one())
    oids = conn.exec_driver_sql(
        "SELECT 'people'::regclass::oid UNION ALL "
        "SELECT indexrelid FROM pg_index WHERE indrelid = 'people'::regclass"
    ).scalars().all()
    paths: list[Path] = []
    for oid in oids:
        first = datadir / conn.execute(sa.text("SELECT pg_relation_filepath(:o)"), {"o": oid}).scalar_one()
        paths += [first, *sorted(first.parent.glob(f"{first.name}.*"))]
    return paths


def bench_postgresql(rows: int, level: str) -> Row:
    with server_database(POSTGRES_URL, "postgresql") as url:
        engine = dialects.create_engine(url)
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql(
                    "CREATE TABLE people (id integer PRIMARY KEY, email varchar(80) NOT NULL, closed_at timestamp)"
                )
                conn.exec_driver_sql(
                    "INSERT INTO people SELECT g, CASE WHEN g %% 5 < 2 THEN 'del-' ELSE 'kep-' END "
                    "|| md5(g::text) || '@example.invalid', timestamp '2020-01-01' + (g %% 1000) * interval '1 day' "
                    f"FROM generate_series(1, {int(rows)}) g"
                )
                conn.exec_driver_sql("CREATE INDEX ix_people_email ON people (email)")
                conn.exec_driver_sql("VACUUM ANALYZE people")
                earlier = _pg_files(conn)
                conn.exec_driver_sql("CHECKPOINT")
            delete_s = timed(lambda: _sa_delete(engine))
            result = purge(engine, "bench", ["people"], level)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("CHECKPOINT")  # the files, not shared buffers, are counted
                files = _pg_files(conn)
            left = count_deleted(files + [p for p in earlier if p not in files])
            mb = size_mb(files)
        finally:
            engine.dispose()
    return Row("PostgreSQL", "", rows, level, delete_s, result.duration_s, result.result, mb, left)


# -- MariaDB -------------------------------------------------------------------------------
def bench_mariadb(rows: int, level: str) -> Row:
    with server_database(MARIADB_URL, "mariadb") as url:
        engine = dialects.create_engine(url)
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql(
                    "CREATE TABLE people (id int PRIMARY KEY, email varchar(80) NOT NULL, closed_at datetime)"
                )
                conn.exec_driver_sql(
                    "INSERT INTO people SELECT seq, CONCAT(IF(seq %% 5 < 2, 'del-', 'kep-'), MD5(seq), "
                    "'@example.invalid'), '2020-01-01' + INTERVAL (seq %% 1000) DAY "
                    f"FROM seq_1_to_{int(rows)}"
                )
                conn.exec_driver_sql("CREATE INDEX ix_people_email ON people (email)")
            delete_s = timed(lambda: _sa_delete(engine))
            result = purge(engine, "bench", ["people"], level)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                datadir = Path(conn.exec_driver_sql("SELECT @@datadir").scalar_one())
                schema = conn.exec_driver_sql("SELECT DATABASE()").scalar_one()
                conn.exec_driver_sql("FLUSH TABLES people FOR EXPORT")
                conn.exec_driver_sql("UNLOCK TABLES")
            files = [datadir / schema / "people.ibd"]
            left = count_deleted(files)
            mb = size_mb(files)
        finally:
            engine.dispose()
    return Row("MariaDB", "", rows, level, delete_s, result.duration_s, result.result, mb, left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000", help="table sizes, comma-separated")
    parser.add_argument("--mariadb-rows", default="100000", help="table sizes for MariaDB (slower to build)")
    parser.add_argument("--databases", default="sqlite,postgresql,mariadb")
    args = parser.parse_args()
    sizes = [int(n) for n in args.rows.split(",")]
    maria_sizes = [int(n) for n in args.mariadb_rows.split(",")]
    wanted = set(args.databases.split(","))

    jobs: list[tuple[str, Callable[[], Row]]] = []
    for n in sizes:
        if "sqlite" in wanted:
            for mode in ("delete", "wal"):
                jobs.append((f"sqlite {mode} {n} none/off", lambda n=n, m=mode: bench_sqlite(n, "none", m, False)))
                for level in LEVELS:
                    jobs.append((f"sqlite {mode} {n} {level}",
                                 lambda n=n, m=mode, lv=level: bench_sqlite(n, lv, m, True)))
        if "postgresql" in wanted:
            for level in LEVELS:
                jobs.append((f"postgresql {n} {level}", lambda n=n, lv=level: bench_postgresql(n, lv)))
    if "mariadb" in wanted:
        for n in maria_sizes:
            for level in LEVELS:
                jobs.append((f"mariadb {n} {level}", lambda n=n, lv=level: bench_mariadb(n, lv)))

    results: list[Row] = []
    started = time.perf_counter()
    for name, job in jobs:
        log(f"{time.perf_counter() - started:7.1f}s  {name}")
        results.append(job())

    print("| database | journal | rows | level | DELETE of 40 % (s) | purge (s) | result | files after (MiB) "
          "| deleted values still in the files |")
    print("| --- | --- | ---: | --- | ---: | ---: | --- | ---: | ---: |")
    for r in results:
        print(f"| {r.database} | {r.mode or '-'} | {r.rows:,} | {r.level} | {r.delete_s:.2f} | {r.purge_s:.2f} "
              f"| {r.result} | {r.size_mb:.1f} | {r.left} |")
    log(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()

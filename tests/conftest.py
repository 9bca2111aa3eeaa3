"""Test databases: SQLite, PostgreSQL and MariaDB, one fresh database per test.

Fixtures:
- `db`: parametrised over sqlite, postgresql, mariadb.
- `server_db`: parametrised over postgresql, mariadb (for what SQLite cannot show).
- `sqlite_db`: SQLite only.
- `db_factory`: `db_factory("postgresql")` for a test that needs more than one database.

Each yields a `TestDatabase`. Server databases are whole databases, not schemas, because
the code under test reflects tables by name in the default schema and other code (the CLI
in a subprocess) connects by URL.

Servers come from RETENTION_TEST_POSTGRES_URL and RETENTION_TEST_MARIADB_URL; the database
named there is only used to create and drop the per-test ones. An unreachable server skips
its tests, except with CI=true, where it fails them: CI must not pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

POSTGRES_URL = os.environ.get("RETENTION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("RETENTION_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")

SERVER_URLS = {"postgresql": POSTGRES_URL, "mariadb": MARIADB_URL}
ALL_DIALECTS = ["sqlite", "postgresql", "mariadb"]
SERVER_DIALECTS = ["postgresql", "mariadb"]

# A dead server should cost seconds, not the driver's default minutes.
CONNECT_TIMEOUT_SECONDS = 5


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _shown(url: str | URL) -> str:
    return (url if isinstance(url, URL) else make_url(url)).render_as_string(hide_password=True)


@dataclass
class TestDatabase:
    """One isolated database for one test."""

    # Not a test class, despite the name pytest looks for.
    __test__ = False

    name: str  # "sqlite", "postgresql" or "mariadb"
    url: str  # with the password, for code that connects by URL
    engine: Engine
    _disposed: bool = field(default=False, repr=False)

    def dispose(self) -> None:
        """Close the engine's pooled connections (idempotent)."""
        if not self._disposed:
            self.engine.dispose()
            self._disposed = True

    def __str__(self) -> str:
        return f"{self.name} {_shown(self.url)}"


class _Servers:
    """Session-wide admin engines, one per server, and whether each server answered."""

    def __init__(self) -> None:
        self._engines: dict[str, Engine] = {}
        self._errors: dict[str, str] = {}

    def admin(self, name: str) -> Engine:
        if name in self._errors:
            self._unavailable(name)
        if name not in self._engines:
            url = make_url(SERVER_URLS[name])
            # CREATE DATABASE refuses to run inside a transaction on PostgreSQL.
            engine = sa.create_engine(
                url,
                isolation_level="AUTOCOMMIT",
                connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
                pool_pre_ping=True,
            )
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
            except Exception as exc:  # any driver error means "not usable"
                engine.dispose()
                # The driver's own message, without SQLAlchemy's wrapper and links.
                cause = getattr(exc, "orig", None) or exc
                first_line = (str(cause).strip().splitlines() or [""])[0]
                self._errors[name] = f"{type(cause).__name__}: {first_line}"
            # Outside the except block, so a CI failure shows one line, not a chained traceback.
            if name in self._errors:
                self._unavailable(name)
            self._engines[name] = engine
        return self._engines[name]

    def _unavailable(self, name: str) -> None:
        reason = f"{name} server not reachable at {_shown(SERVER_URLS[name])} ({self._errors[name]})"
        if _in_ci():
            pytest.fail(f"{reason}; CI=true requires every test database", pytrace=False)
        pytest.skip(reason)

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()


@pytest.fixture(scope="session")
def _servers() -> Iterator[_Servers]:
    servers = _Servers()
    yield servers
    servers.close()


def _sqlite_engine(url: str) -> Engine:
    engine = sa.create_engine(url)

    # SQLite leaves foreign keys off per connection unless asked; without this a cascade
    # or "still referenced" test would pass on SQLite for the wrong reason.
    @sa.event.listens_for(engine, "connect")
    def _foreign_keys_on(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _create_server_database(admin: Engine, kind: str, dbname: str) -> None:
    with admin.connect() as conn:
        if kind == "postgresql":
            # template0: nobody is ever connected to it, so concurrent test runs cannot make
            # CREATE DATABASE fail with "source database is being accessed by other users".
            # The C locale accepts UTF8 on any cluster.
            conn.execute(
                sa.text(f"CREATE DATABASE \"{dbname}\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'")
            )
        else:
            conn.execute(sa.text(f"CREATE DATABASE `{dbname}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))


def _drop_server_database(admin: Engine, kind: str, dbname: str) -> None:
    with admin.connect() as conn:
        if kind == "postgresql":
            # FORCE ends connections the code under test left open, which would otherwise
            # make DROP fail.
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        else:
            # MariaDB has no FORCE: a leftover connection holding a metadata lock would make
            # DROP wait forever, so end those connections first.
            others = sa.text("SELECT id FROM information_schema.processlist WHERE db = :db AND id <> CONNECTION_ID()")
            ids = conn.execute(others, {"db": dbname}).scalars().all()
            for thread_id in ids:
                # It may have gone away on its own in the meantime.
                with contextlib.suppress(sa.exc.DBAPIError):
                    conn.execute(sa.text(f"KILL CONNECTION {int(thread_id)}"))
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{dbname}`"))


class DatabaseFactory:
    """Makes fresh databases of a given kind; `close()` disposes and drops all of them."""

    def __init__(self, tmp_path: Path, servers: _Servers) -> None:
        self._tmp_path = tmp_path
        self._servers = servers
        self._cleanups: list[Callable[[], None]] = []
        self._sqlite_count = 0

    def __call__(self, kind: str) -> TestDatabase:
        if kind == "sqlite":
            return self._sqlite()
        if kind not in SERVER_URLS:
            raise ValueError(f"unknown test database kind {kind!r}; expected one of {ALL_DIALECTS}")

        admin = self._servers.admin(kind)
        dbname = f"rt_{secrets.token_hex(6)}"
        _create_server_database(admin, kind, dbname)
        url = admin.url.set(database=dbname)
        database = TestDatabase(name=kind, url=url.render_as_string(hide_password=False), engine=sa.create_engine(url))

        def cleanup() -> None:
            database.dispose()
            _drop_server_database(admin, kind, dbname)

        self._cleanups.append(cleanup)
        return database

    def _sqlite(self) -> TestDatabase:
        self._sqlite_count += 1
        filename = "shop.db" if self._sqlite_count == 1 else f"shop-{self._sqlite_count}.db"
        url = f"sqlite:///{self._tmp_path / filename}"
        database = TestDatabase(name="sqlite", url=url, engine=_sqlite_engine(url))
        # The file goes with tmp_path; only the pooled connections need closing.
        self._cleanups.append(database.dispose)
        return database

    def close(self) -> None:
        errors: list[Exception] = []
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                cleanup()
            except Exception as exc:  # drop every database even if one cleanup fails
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def db_factory(tmp_path: Path, _servers: _Servers) -> Iterator[DatabaseFactory]:
    """`db_factory("postgresql")` etc. for tests that need more than one database."""
    factory = DatabaseFactory(tmp_path, _servers)
    yield factory
    factory.close()


@pytest.fixture(params=ALL_DIALECTS, ids=ALL_DIALECTS)
def db(request: pytest.FixtureRequest, db_factory: DatabaseFactory) -> TestDatabase:
    return db_factory(request.param)


@pytest.fixture(params=SERVER_DIALECTS, ids=SERVER_DIALECTS)
def server_db(request: pytest.FixtureRequest, db_factory: DatabaseFactory) -> TestDatabase:
    return db_factory(request.param)


@pytest.fixture
def sqlite_db(db_factory: DatabaseFactory) -> TestDatabase:
    return db_factory("sqlite")


@pytest.fixture(autouse=True)
def _without_the_jobs_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without the job's own environment variables. The README's quick start
    exports RETENTION_AUDIT_KEY in the shell its test command then runs in: inherited, the key
    made unkeyed logs fail verification in five tests. A test that needs one sets it itself."""
    for name in ("RETENTION_AUDIT_KEY", "RETENTION_POLICIES"):
        monkeypatch.delenv(name, raising=False)

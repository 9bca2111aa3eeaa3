"""The database fixtures themselves: every other test relies on them being isolated and real."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

if TYPE_CHECKING:
    from conftest import DatabaseFactory, TestDatabase

EXPECTED_DIALECT = {"sqlite": "sqlite", "postgresql": "postgresql", "mariadb": "mysql"}


def _create_probe(database: TestDatabase) -> None:
    with database.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE probe (id INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO probe (id) VALUES (1)"))


def test_engine_is_the_named_dialect(db: TestDatabase) -> None:
    assert db.engine.dialect.name == EXPECTED_DIALECT[db.name]
    with db.engine.connect() as conn:
        if db.name == "mariadb":
            # The mysql dialect serves MySQL too; make sure this one really is MariaDB.
            assert conn.dialect._is_mariadb  # type: ignore[attr-defined]
            assert "mariadb" in conn.execute(sa.text("SELECT VERSION()")).scalar_one().lower()
        elif db.name == "postgresql":
            assert "PostgreSQL" in conn.execute(sa.text("SELECT version()")).scalar_one()
        else:
            assert conn.execute(sa.text("SELECT sqlite_version()")).scalar_one()


def test_url_reaches_the_same_database(db: TestDatabase) -> None:
    # Code under test connects by URL (the CLI, a second engine); it must see what the
    # fixture's engine wrote, not some other database.
    _create_probe(db)
    other = sa.create_engine(db.url)
    try:
        with other.connect() as conn:
            assert conn.execute(sa.text("SELECT id FROM probe")).scalar_one() == 1
    finally:
        other.dispose()


def test_a_fresh_database_is_empty(db: TestDatabase) -> None:
    assert sa.inspect(db.engine).get_table_names() == []


def test_databases_are_isolated(db: TestDatabase, db_factory: DatabaseFactory) -> None:
    _create_probe(db)
    second = db_factory(db.name)
    assert second.url != db.url
    assert sa.inspect(db.engine).has_table("probe")
    assert not sa.inspect(second.engine).has_table("probe")
    # The same name is free in the other database: nothing is shared.
    _create_probe(second)


def _server_has_database(db_factory: DatabaseFactory, kind: str, dbname: str) -> bool:
    query = (
        "SELECT count(*) FROM pg_database WHERE datname = :n"
        if kind == "postgresql"
        else "SELECT count(*) FROM information_schema.schemata WHERE schema_name = :n"
    )
    with db_factory._servers.admin(kind).connect() as conn:
        return conn.execute(sa.text(query), {"n": dbname}).scalar_one() == 1


def test_server_databases_are_dropped_even_with_open_connections(
    server_db: TestDatabase, db_factory: DatabaseFactory
) -> None:
    dbname = sa.engine.make_url(server_db.url).database
    assert dbname and dbname.startswith("rt_")
    assert _server_has_database(db_factory, server_db.name, dbname)

    # Code under test may leave a connection open, even mid-transaction; teardown must not
    # hang or fail on it.
    leftover = sa.create_engine(server_db.url).connect()
    # Autobegin leaves a transaction open after this, as careless code would.
    leftover.execute(sa.text("SELECT 1"))
    try:
        db_factory.close()
        assert not _server_has_database(db_factory, server_db.name, dbname)
    finally:
        leftover.invalidate()
        leftover.engine.dispose()


def test_sqlite_foreign_keys_are_on(sqlite_db: TestDatabase) -> None:
    assert sqlite_db.name == "sqlite"
    assert sqlite_db.url.endswith("/shop.db")
    with sqlite_db.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA foreign_keys")).scalar_one() == 1


def test_sqlite_enforces_foreign_keys(sqlite_db: TestDatabase) -> None:
    with sqlite_db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id))"))
    with pytest.raises(sa.exc.IntegrityError), sqlite_db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO child (id, parent_id) VALUES (1, 42)"))


@pytest.mark.parametrize("kind", ["oracle", "postgres"])
def test_unknown_kind_is_rejected(kind: str, db_factory: DatabaseFactory) -> None:
    with pytest.raises(ValueError, match=kind):
        db_factory(kind)

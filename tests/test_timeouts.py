"""Bounded waits (issue 14, item 3): a server that accepts TCP and never answers costs the
connect timeout, not the night.

Before: `validate` and `run` hung for good on PostgreSQL (libpq has no default connect
timeout) and ~40 s on MariaDB. Now each connection attempt ends after ``connect_timeout``
(default 10 s, per database in the policy file); a database unreachable at start is retried after
each of ``RETRY_DELAYS`` (docs/safety.md, "Bounded retries"), so the run exits 2 within
(1 + retries) x ``connect_timeout`` + the waits + a margin, naming the database and never the password.
The lock and statement limits are checked as session settings on the real servers.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
import yaml
from helpers import invoke

from retention.databases import dialects
from retention.engine.execution import RETRY_DELAYS
from retention.errors import EXIT_INVALID, PolicyFileError
from retention.policy import loader as config
from retention.policy.model import CONNECT_TIMEOUT_S, LOCK_TIMEOUT_S, STATEMENT_TIMEOUT_S

if TYPE_CHECKING:
    from conftest import TestDatabase

PASSWORD = "s3cret-Pa55word"
# libpq counts whole seconds with a minimum of 2; the margin covers the CLI and the process.
TIMEOUT_S = 2
MARGIN_S = 3.0
# At most one attempt plus one per retry delay, each bounded by the connect timeout: with the
# shipped delays (0.5, 1, 2 s) 4 x 2 s + 3.5 s + the margin = 14.5 s, not the night.
ATTEMPTS = 1 + len(RETRY_DELAYS)
BOUND_S = ATTEMPTS * TIMEOUT_S + sum(RETRY_DELAYS) + MARGIN_S


@pytest.fixture
def stalled_port() -> Iterator[int]:
    """A local server that accepts every connection and never sends or reads a byte."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    for conn in accepted:
        conn.close()
    listener.close()


def _policy_file(tmp_path: Path, url: str, connect_timeout: float | None = TIMEOUT_S) -> Path:
    database: dict[str, object] = {"url": url, "purge": "none"}
    if connect_timeout is not None:
        database["connect_timeout"] = connect_timeout
    doc = {"version": 1, "databases": {"shop": database}, "audit": {"path": "audit/retention.jsonl"},
           "policies": [{"name": "sessions", "table": "sessions", "after": "ended_at", "retain": "30 days",
                         "action": "delete"}]}
    path = tmp_path / "policies.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


URLS = {
    "postgresql": "postgresql+psycopg://job:{pw}@127.0.0.1:{port}/shop",
    "mariadb": "mysql+pymysql://job:{pw}@127.0.0.1:{port}/shop",
}


@pytest.mark.parametrize("command", [["validate"], ["run", "--dry-run"], ["run"]])
@pytest.mark.parametrize("driver", sorted(URLS))
def test_a_stalled_server_costs_the_connect_timeout_and_exits_2(driver: str, command: list[str], tmp_path: Path,
                                                                 stalled_port: int) -> None:
    """Each attempt waits ``connect_timeout``, the start's retries are bounded, then exit 2."""
    policies = _policy_file(tmp_path, URLS[driver].format(pw=PASSWORD, port=stalled_port))
    t0 = time.monotonic()
    result = invoke(["--policies", str(policies), "--log-format", "json", *command])
    elapsed = time.monotonic() - t0
    assert result.exit_code == EXIT_INVALID, result
    assert elapsed < BOUND_S, f"{driver} {command}: {elapsed:.1f} s"
    assert result.stderr.count('"event": "database.retry"') <= len(RETRY_DELAYS), result.stderr
    assert elapsed >= TIMEOUT_S * 0.9, f"{driver}: gave up after {elapsed:.1f} s, before its timeout"
    assert f"database 'shop': cannot connect to {URLS[driver].format(pw='***', port=stalled_port)}: " \
        in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    assert not (tmp_path / "audit" / "retention.jsonl").exists()


def test_connect_timeout_defaults_to_10_s_and_is_read_per_database(tmp_path: Path) -> None:
    path = _policy_file(tmp_path, "sqlite:///shop.db", connect_timeout=None)
    model = config.load(path, env={})
    assert model.databases["shop"].connect_timeout == CONNECT_TIMEOUT_S == 10
    assert model.databases["shop"].timeouts() == {"connect_timeout": 10, "lock_timeout": LOCK_TIMEOUT_S,
                                                  "statement_timeout": STATEMENT_TIMEOUT_S}
    model = config.load(_policy_file(tmp_path, "sqlite:///shop.db", connect_timeout=2.5), env={})
    assert model.databases["shop"].connect_timeout == 2.5


@pytest.mark.parametrize(("value", "fragment"), [
    (0, "greater than 0"), (-1, "greater than 0"), (".nan", "finite number"), ("ten", "valid number"),
])
def test_a_connect_timeout_that_is_no_duration_is_refused(value: object, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"version: 1\ndatabases:\n  shop:\n    url: sqlite:///x.db\n    connect_timeout: {value}\n"
                    "policies:\n  - {name: a, table: t, after: c, retain: 1 year, action: delete}\n")
    with pytest.raises(PolicyFileError) as caught:
        config.load(path, env={})
    assert str(caught.value).startswith(f"{path}:5: key 'databases.shop.connect_timeout': ")
    assert fragment in str(caught.value)


def _session_limits(engine: sa.Engine) -> tuple[float, float]:
    """(lock wait, statement limit) in seconds as the server reports them for a new session."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            lock = conn.execute(sa.text("SELECT setting::float / 1000 FROM pg_settings "
                                        "WHERE name = 'lock_timeout'")).scalar()
            statement = conn.execute(sa.text("SELECT setting::float / 1000 FROM pg_settings "
                                             "WHERE name = 'statement_timeout'")).scalar()
            return float(lock), float(statement)
        lock, statement = conn.execute(sa.text("SELECT @@innodb_lock_wait_timeout, @@max_statement_time")).one()
        return float(lock), float(statement)


def test_lock_and_statement_limits_are_session_settings(server_db: TestDatabase) -> None:
    engine = dialects.create_engine(server_db.url)
    try:
        assert _session_limits(engine) == (LOCK_TIMEOUT_S, STATEMENT_TIMEOUT_S)
        if engine.dialect.name == "mysql":
            # The handshake ran under the connect timeout; a statement's answer may take longer.
            raw = engine.raw_connection()
            try:
                assert raw.driver_connection._read_timeout == STATEMENT_TIMEOUT_S + 60  # type: ignore[union-attr]
            finally:
                raw.close()
    finally:
        engine.dispose()
    engine = dialects.create_engine(server_db.url, lock_timeout=7.5, statement_timeout=90)
    try:
        lock, statement = _session_limits(engine)
        assert statement == 90
        assert lock == (7.5 if engine.dialect.name == "postgresql" else math.ceil(7.5))
    finally:
        engine.dispose()
    # 0: not set, the server's own setting stays (on these test servers: no limit).
    engine = dialects.create_engine(server_db.url, lock_timeout=0, statement_timeout=0)
    try:
        lock, statement = _session_limits(engine)
        assert statement == 0
        assert lock == (0 if engine.dialect.name == "postgresql" else 50)  # InnoDB's default
    finally:
        engine.dispose()


def test_a_row_lock_held_elsewhere_ends_the_wait_after_lock_timeout(server_db: TestDatabase) -> None:
    """A forgotten transaction holding a row no longer blocks a batch for good."""
    with server_db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE sessions (id INTEGER PRIMARY KEY, ended_at DATE)"))
        conn.execute(sa.text("INSERT INTO sessions VALUES (1, NULL)"))
    engine = dialects.create_engine(server_db.url, lock_timeout=1)
    holder = server_db.engine.connect()
    try:
        holder.begin()
        holder.execute(sa.text("SELECT id FROM sessions WHERE id = 1 FOR UPDATE")).all()
        t0 = time.monotonic()
        with pytest.raises(sa.exc.OperationalError), engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM sessions WHERE id = 1"))
        assert time.monotonic() - t0 < 1 + MARGIN_S
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()

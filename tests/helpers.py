"""Shared test helpers: policy files for a database URL, CLI invocation, table snapshots.

Deliberately independent of retention's planning code: tests compute what they expect
with their own SQL and compare it with what the tool reports and does.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from retention.cli import main

AS_OF = "2026-11-24T03:00:00"
SHOP_TODAY = dt.date(2026, 11, 24)

# The contract's keys (CONTRACT.md section 3): scripts read these, so they must all be there.
RUN_KEYS = {"as_of", "dry_run", "run", "policies"}
POLICY_KEYS = {"name", "database", "table", "action", "cutoff", "due", "held", "deferred", "applied",
               "cascaded", "status"}

# The demo shop's terms as an engine workout: a cascade, on_referenced: anonymise, a `where`.
# (The shipped policies.yaml detaches instead and has an orders policy; tests/test_promises.py
# runs that file itself.)
SHOP_POLICIES: list[dict[str, Any]] = [
    {
        "name": "accounts",
        "basis": "Privacyverklaring",
        "table": "accounts",
        "after": "deregistered_at",
        "retain": "24 months",
        "action": "delete",
        "cascade": ["orders"],
        "on_referenced": "anonymise",
        "exclude": {"legal_hold": True},
        "keep": {"created_at": "shop statistics", "legal_hold": "false on every anonymised row"},
        # Deregistration to the second singles accounts out: these tests are about other rules
        # (test_reidentification.py is about this one).
        "reidentification": "warn",
        "fields": {
            "first_name": "fake.first_name",
            "last_name": "fake.last_name",
            "email": "fake.email",
            "phone": None,
            "street": "redact",
            "postcode": "generalise.postcode",
            "city": None,
            "birth_date": "generalise.year",
        },
    },
    {
        "name": "invoices",
        "basis": "Art. 52 AWR, fiscal retention",
        "table": "invoices",
        "after": "issued_at",
        "retain": "7 years",
        "minimum": "7 years",
        "align": "end_of_year",
        "action": "delete",
        "cascade": ["invoice_lines"],
    },
    {
        "name": "correspondence",
        "basis": "Privacyverklaring, klantenservice",
        "table": "tickets",
        "after": "closed_at",
        "retain": "2 years",
        "where": {"status": "closed"},
        "exclude": {"legal_hold": True},
        "action": "delete",
        "cascade": ["ticket_messages"],
    },
]


def write_policies(
    path: Path,
    url: str,
    policies: list[dict[str, Any]],
    *,
    purge: str | None = "none",
    audit: str = "audit/retention.jsonl",
    timezone: str = "Europe/Amsterdam",
) -> Path:
    """Write a policy file for one database named ``shop``; ``purge=None`` leaves the default level."""
    database: dict[str, Any] = {"url": url}
    if purge is not None:
        database["purge"] = purge
    doc = {
        "version": 1,
        "timezone": timezone,
        "locale": "nl_NL",
        "databases": {"shop": database},
        "audit": {"path": audit},
        "policies": policies,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def audit_path(policy_file: Path) -> Path:
    doc = yaml.safe_load(policy_file.read_text(encoding="utf-8"))
    p = Path(doc["audit"]["path"])
    return p if p.is_absolute() else policy_file.parent / p


@dataclass(repr=False)
class CliRun:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def policy(self, name: str) -> dict[str, Any]:
        for p in self.data["policies"]:
            if p["name"] == name:
                return p
        raise KeyError(f"no policy {name!r} in {[p['name'] for p in self.data['policies']]}")

    def __repr__(self) -> str:  # shown by pytest when an assertion on it fails: the gist first
        lines = [f"exit {self.exit_code}"]
        if self.data:
            for p in self.data.get("policies", []):
                lines.append(f"  {p.get('name')}: {p.get('status')} due={p.get('due')} held={p.get('held')} "
                             f"deferred={p.get('deferred')} applied={p.get('applied')} error={p.get('error')}")
            for p in self.data.get("purge", []):
                lines.append(f"  purge {p.get('level')}: {p.get('result')}: {p.get('detail')}")
        else:
            lines.append(f"stdout: {self.stdout[-2000:]}")
        errors = [line for line in self.stderr.splitlines() if '"level": "info"' not in line]
        lines.append("stderr: " + "\n".join(errors)[-2000:])
        return "\n".join(lines)


def run_cli(policy_file: Path, *args: str, as_of: str | None = AS_OF, fmt: str = "json") -> CliRun:
    """``retention --policies FILE run [--as-of AS_OF] --format FMT ARGS...``, in process."""
    argv = ["--policies", str(policy_file), "--log-format", "json", "run"]
    if as_of is not None:
        argv += ["--as-of", as_of]
    argv += ["--format", fmt, *args]
    return invoke(argv, parse_json=fmt == "json")


def invoke(argv: list[str], parse_json: bool = False) -> CliRun:
    result = CliRunner().invoke(main, argv, catch_exceptions=True)
    out = CliRun(result.exit_code, result.stdout, result.stderr,
                 result.exception if not isinstance(result.exception, SystemExit) else None)
    if out.exception is not None:
        raise AssertionError(f"the CLI raised {out.exception!r}\n{out}") from out.exception
    if parse_json and out.stdout.strip():
        out.data = json.loads(out.stdout)
    return out


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# -- looking at the database --------------------------------------------------------------

Snapshot = dict[str, dict[Any, tuple[Any, ...]]]


def _normal(value: Any) -> Any:
    # SQLite hands back booleans as ints, MariaDB too: compare them as what they mean.
    if isinstance(value, bool):
        return int(value)
    return value


def snapshot(engine: sa.Engine, tables: list[str] | None = None) -> Snapshot:
    """Every row of every table (or the given ones), keyed by primary key."""
    md = sa.MetaData()
    md.reflect(bind=engine, only=tables)
    snap: Snapshot = {}
    with engine.connect() as conn:
        for name, table in md.tables.items():
            if tables is not None and name not in tables:
                continue  # reflected only because a foreign key points at it
            pk = list(table.primary_key.columns)
            rows = conn.execute(sa.select(table).order_by(*pk)).all()
            key_index = [list(table.c).index(c) for c in pk]
            snap[name] = {
                (row[key_index[0]] if len(key_index) == 1 else tuple(row[i] for i in key_index)):
                    tuple(_normal(v) for v in row)
                for row in rows
            }
    return snap


def columns(engine: sa.Engine, table: str) -> list[str]:
    return [c["name"] for c in sa.inspect(engine).get_columns(table)]


def ids(engine: sa.Engine, sql: str, **params: Any) -> set[Any]:
    """The first column of a plain SQL query, as a set."""
    with engine.connect() as conn:
        return {row[0] for row in conn.execute(sa.text(sql), params)}


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def rows_by_id(engine: sa.Engine, table: str, key: str = "id") -> dict[Any, dict[str, Any]]:
    """Rows of a table by ``key``, typed by the reflected columns (dates as dates on SQLite too)."""
    t = sa.Table(table, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return {r[key]: dict(r) for r in conn.execute(sa.select(t).order_by(t.c[key])).mappings()}


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sqlite_path(url: str) -> Path:
    return Path(sa.engine.make_url(url).database or "")


def unchanged_witness(db: Any) -> Any:
    """Something that changes whenever the database's data changes: the SQLite file's bytes,
    or a full snapshot on a server."""
    if db.name == "sqlite":
        db.engine.dispose()
        return file_sha256(sqlite_path(db.url))
    return snapshot(db.engine)


#: A minimal delete policy on the table :func:`create_sessions` makes, for tests of what surrounds a
#: run (audit path, lock, monitor) rather than of what it deletes.
SESSIONS_POLICY = {"name": "sessions", "table": "sessions", "after": "ended_at", "retain": "30 days",
                   "action": "delete", "max_fraction": 1.0}


def create_sessions(engine: sa.Engine, ended: tuple[dt.datetime, ...] = (
        dt.datetime(2025, 1, 1), dt.datetime(2026, 11, 20))) -> None:
    """Table ``sessions`` (id, ended_at) with one row per ``ended`` value, ids from 1."""
    md = sa.MetaData()
    table = sa.Table("sessions", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("ended_at", sa.DateTime, nullable=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "ended_at": at} for i, at in enumerate(ended, start=1)])


def waiting_for_a_row_lock(db: Any) -> int:
    """Sessions of ``db``'s database (PostgreSQL or MariaDB) waiting for a row lock."""
    sql = {
        "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                      " AND datname = current_database()",
        # INNODB_TRX may not list a transaction waiting in its first statement; the processlist
        # does, and a batch's locking SELECT cannot finish while the row is held.
        "mariadb": "SELECT count(*) FROM information_schema.PROCESSLIST WHERE db = DATABASE()"
                   " AND info LIKE '%%FOR UPDATE%%' AND info NOT LIKE '%%PROCESSLIST%%'",
    }[db.name]
    with db.engine.connect() as conn:
        return int(conn.exec_driver_sql(sql).scalar_one())


def hold_tables(md: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The accounts and tickets of the hold tests: a `legal_hold` flag on each (NULL allowed),
    tickets pointing at accounts (NULL allowed), indexed as a shop would be."""
    accounts = sa.Table("accounts", md, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("left_at", sa.DateTime, index=True), sa.Column("legal_hold", sa.Boolean))
    tickets = sa.Table("tickets", md, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=True, index=True),
                       sa.Column("closed_at", sa.DateTime, index=True), sa.Column("legal_hold", sa.Boolean))
    return accounts, tickets


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every SQL statement any engine runs inside the block, whitespace collapsed."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()))

    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", record)

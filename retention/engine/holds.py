"""The hold registry: restriction of processing and legal holds on single rows, by key.

A registry hold names a policy and one key of its table, a reason, an end date and who
placed it. It lives in a table the tool creates on first use in the policy's own database
(``retention_holds``), so that every run on that database sees it whoever starts the run and
from wherever, a database backup carries it along with the rows it protects, and the SQL
that selects due rows can use it (docs/rights.md, "Where holds live").

A hold until D holds while the run's moment is before D 00:00 at the file's time zone; from
then on it has expired, and the next real run records ``hold.expired`` and says so. The reason
text is kept in the database only: it is free text written by a person and may name people
(the claimant, a lawyer), so the audit log gets the hold's id, policy, table, key, end date
and who placed it, never the reason.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pendulum
import sqlalchemy as sa

from retention.databases import dialects
from retention.errors import UsageError

TABLE = "retention_holds"
# The reason used in `held_reasons` for rows kept by the registry (directly or through a link).
REASON = "registry"


def table(metadata: sa.MetaData | None = None) -> sa.Table:
    md = metadata or sa.MetaData()
    return sa.Table(
        TABLE, md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("policy", sa.String(200), nullable=False),
        sa.Column("table_name", sa.String(200), nullable=False),
        sa.Column("key_text", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("held_by", sa.String(200), nullable=True),
        sa.Column("until", sa.Date, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("lifted_at", sa.DateTime, nullable=True),
        # When a real run recorded the expiry (hold.expired): each expiry is reported once.
        sa.Column("expired_at", sa.DateTime, nullable=True),
        sa.Index("ix_retention_holds_policy", "policy", "key_text"),
        **dialects.registry_table_options(),
    )


def exists(conn: sa.Connection) -> bool:
    return sa.inspect(conn).has_table(TABLE)


def ensure(engine: sa.Engine) -> sa.Table:
    """The registry table, created on first use (a hold add)."""
    t = table()
    t.metadata.create_all(engine, checkfirst=True)
    return t


def local_day(moment: pendulum.DateTime, timezone: str) -> dt.date:
    """The day of ``moment`` at the file's time zone: a hold until D holds while this is before D."""
    return moment.in_timezone(timezone).date()


@dataclass
class Hold:
    id: int
    policy: str
    table_name: str
    key: str
    reason: str
    by: str | None
    until: dt.date
    created_at: dt.datetime
    lifted_at: dt.datetime | None
    expired_at: dt.datetime | None

    def state(self, today: dt.date) -> str:
        if self.lifted_at is not None:
            return "lifted"
        return "active" if today < self.until else "expired"

    def audit_fields(self, database: str) -> dict[str, Any]:
        # No reason: free text that may name people (module docstring).
        return {"hold": self.id, "policy": self.policy, "database": database, "table": self.table_name,
                "key": self.key, "until": self.until.isoformat(), "by": self.by}

    def as_json(self, database: str, today: dt.date) -> dict[str, Any]:
        return {"id": self.id, "database": database, "policy": self.policy, "table": self.table_name,
                "key": self.key, "reason": self.reason, "by": self.by, "until": self.until.isoformat(),
                "created_at": self.created_at.isoformat(), "state": self.state(today),
                "lifted_at": self.lifted_at.isoformat() if self.lifted_at else None}


def _rows(conn: sa.Connection, where: Any = None) -> Iterator[Hold]:
    t = table()
    query = sa.select(t).order_by(t.c.id)
    if where is not None:
        query = query.where(where(t))
    for r in conn.execute(query).mappings():
        until = r["until"]
        if isinstance(until, str):  # SQLite hands back text for a reflected DATE in raw queries
            until = dt.date.fromisoformat(until)
        yield Hold(r["id"], r["policy"], r["table_name"], r["key_text"], r["reason"], r["held_by"], until,
                   r["created_at"], r["lifted_at"], r["expired_at"])


def all_holds(engine: sa.Engine) -> list[Hold]:
    with engine.connect() as conn:
        if not exists(conn):
            return []
        return list(_rows(conn))


def active_keys(engine: sa.Engine, today: dt.date) -> dict[str, list[str]]:
    """Per policy name, the keys (as text) its active registry holds keep on ``today``."""
    with engine.connect() as conn:
        if not exists(conn):
            return {}
        out: dict[str, list[str]] = {}
        for h in _rows(conn, lambda t: sa.and_(t.c.lifted_at.is_(None), t.c.until > today)):
            out.setdefault(h.policy, []).append(h.key)
        conn.rollback()
    return out


def key_values(col: sa.ColumnElement[Any], texts: list[str]) -> sa.ColumnElement[bool]:
    """``col`` equals one of the keys given as text: integer keys (the common case) as integers,
    so the primary-key index is used; any other type compared as text."""
    if isinstance(col.type, sa.Integer):
        return col.in_(sorted({int(k) for k in texts}))
    return sa.cast(col, sa.String(200)).in_(sorted(set(texts)))


def normal_key(col: sa.Column[Any], text: str, where: str) -> str:
    """The key as the registry stores it; an integer key must be an integer (exit 2 otherwise)."""
    text = text.strip()
    if isinstance(col.type, sa.Integer):
        try:
            return str(int(text))
        except ValueError:
            raise UsageError(f"{where}: key {text!r} is not an integer, and {col.table.name}.{col.name} is") from None  # type: ignore[attr-defined]
    return text


def add(engine: sa.Engine, policy: str, table_name: str, key: str, reason: str, until: dt.date,
        by: str | None) -> Hold:
    t = ensure(engine)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    with engine.begin() as conn:
        new_id = conn.execute(t.insert().values(policy=policy, table_name=table_name, key_text=key, reason=reason,
                                                held_by=by, until=until, created_at=now)).inserted_primary_key[0]
        return next(_rows(conn, lambda tt: tt.c.id == new_id))


def lift(engine: sa.Engine, hold_id: int) -> Hold | None:
    """Lift an active or expired hold; None when there is no such hold (or it was lifted already)."""
    with engine.begin() as conn:
        if not exists(conn):
            return None
        t = table()
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
        done = conn.execute(t.update().where(t.c.id == hold_id, t.c.lifted_at.is_(None)).values(lifted_at=now))
        if not done.rowcount:
            return None
        return next(_rows(conn, lambda tt: tt.c.id == hold_id))


def newly_expired(engine: sa.Engine, today: dt.date) -> list[Hold]:
    """Holds whose end date has come and whose expiry no run has recorded yet."""
    with engine.connect() as conn:
        if not exists(conn):
            return []
        found = list(_rows(conn, lambda t: sa.and_(t.c.lifted_at.is_(None), t.c.expired_at.is_(None),
                                                    t.c.until <= today)))
        conn.rollback()
    return found


def mark_expired(engine: sa.Engine, ids: list[int]) -> None:
    if not ids:
        return
    t = table()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    with engine.begin() as conn:
        conn.execute(t.update().where(t.c.id.in_(ids)).values(expired_at=now))


def record_expiries(model: Any, engines: dict[str, sa.Engine], audit: Any, run_id: str,
                    moment: pendulum.DateTime, dry_run: bool) -> dict[str, list[str]]:
    """Per policy name, the "hold N expired" lines for this run. A real run appends
    ``hold.expired`` (before marking it, so a crash in between reports it twice rather than
    never); a dry run only reports."""
    today = local_day(moment, model.timezone)
    out: dict[str, list[str]] = {}
    for database, engine in engines.items():
        found = newly_expired(engine, today)
        for h in found:
            out.setdefault(h.policy, []).append(
                f"hold {h.id} expired (key {h.key} of {h.table_name}, until {h.until.isoformat()}): rows due again")
            if not dry_run:
                audit.append("hold.expired", run_id, **h.audit_fields(database))
        if not dry_run:
            mark_expired(engine, [h.id for h in found])
    return out


def new_id() -> str:
    """An id for the audit entries of one hold command, shaped like a run id."""
    return f"{pendulum.now('UTC').format('YYYYMMDD[T]HHmmss[Z]')}-{uuid.uuid4().hex[:8]}"


# -- the commands (retention hold add / list / lift) -------------------------------------------

def _engine(model: Any, database: str) -> sa.Engine:
    from retention.engine.validation import _refuse_missing_sqlite_file

    url = model.databases[database].url
    _refuse_missing_sqlite_file(database, url)
    engine = dialects.create_engine(url, secure_delete=False)
    dialects.check_reachable(engine, url)
    return engine


def _policy(model: Any, name: str) -> Any:
    for p in model.policies:
        if p.name == name:
            return p
    raise UsageError(f"--policy: unknown policy {name!r}; defined: {', '.join(sorted(q.name for q in model.policies))}")


def parse_until(text: str, today: dt.date) -> dt.date:
    try:
        until = dt.date.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--until: expected a date (YYYY-MM-DD), got {text!r}") from None
    if until <= today:
        raise UsageError(f"--until {until.isoformat()}: not after today ({today.isoformat()}); a hold must end "
                         "in the future")
    return until


def place(model: Any, audit_log: Any, policy_name: str, key: str, reason: str, until_text: str,
          by: str | None) -> tuple[str, Hold]:
    """``retention hold add``: check the policy, key and date, store the hold, audit it."""
    from retention.databases.schema import key_column

    policy = _policy(model, policy_name)
    database = model.database_of(policy)
    if not reason.strip():
        raise UsageError("--reason: empty; say why the rows are held (a claim, a restriction request)")
    until = parse_until(until_text, local_day(pendulum.now(model.timezone), model.timezone))
    engine = _engine(model, database)
    try:
        md = sa.MetaData()
        try:
            t = sa.Table(policy.table, md, autoload_with=engine)
        except sa.exc.NoSuchTableError:
            raise UsageError(f"policy {policy.name!r}: database {database!r} has no table {policy.table!r}") from None
        col = key_column(t, policy)
        if isinstance(col, str):
            raise UsageError(f"policy {policy.name!r}: {col}")
        where = f"policy {policy.name!r}, --key"
        text = normal_key(col, key, where)
        with engine.connect() as conn:
            found = conn.execute(sa.select(sa.func.count()).select_from(t).where(key_values(col, [text]))).scalar_one()
        if not found:
            raise UsageError(f"{where} {text}: no row of {policy.table} has {col.name} = {text}; nothing held")
        with audit_log.open():
            hold = add(engine, policy.name, policy.table, text, reason.strip(), until, by)
            audit_log.append("hold.added", new_id(), **hold.audit_fields(database))
        return database, hold
    finally:
        engine.dispose()


def _databases(model: Any, database: str | None) -> list[str]:
    return [database] if database else list(model.databases)


def listing(model: Any, database: str | None, include_ended: bool) -> list[dict[str, Any]]:
    today = local_day(pendulum.now(model.timezone), model.timezone)
    out = []
    for name in _databases(model, database):
        engine = _engine(model, name)
        try:
            for h in all_holds(engine):
                if include_ended or h.state(today) == "active":
                    out.append(h.as_json(name, today))
        finally:
            engine.dispose()
    return out


def lift_hold(model: Any, audit_log: Any, hold_id: int, database: str | None) -> tuple[str, Hold]:
    """``retention hold lift``: one database's hold by id (``--database`` when the file has several)."""
    names = _databases(model, database)
    if len(names) > 1:
        raise UsageError(f"hold lift: the file has {len(names)} databases ({', '.join(names)}): name the hold's "
                         "with --database NAME (ids are per database)")
    engine = _engine(model, names[0])
    try:
        with audit_log.open():
            hold = lift(engine, hold_id)
            if hold is None:
                raise UsageError(f"hold {hold_id}: no such hold in database {names[0]!r}, or it was lifted already")
            audit_log.append("hold.lifted", new_id(), **hold.audit_fields(names[0]))
        return names[0], hold
    finally:
        engine.dispose()

"""Connect to every database a run needs, reflect, and check the policies against the schema.

Shared by ``retention validate`` and ``retention run``, so a run refuses exactly what
validate reports, before anything is touched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from retention.databases import dialects, purge
from retention.databases.schema import (
    Schema,
    check_personal,
    check_policy,
    key_column,
    locate,
    locate_personal,
    reflect,
)
from retention.errors import DatabaseUnreachable, SchemaError
from retention.logs import get_logger, redact_url
from retention.policy.model import Policy, PolicyFile

log = get_logger("retention.validation")


@dataclass
class Connected:
    engines: dict[str, sa.Engine]
    schemas: dict[str, Schema]
    warnings: list[str] = field(default_factory=list)
    # With independent=True: databases that could not be reached, and why (no engine, no schema).
    unreachable: dict[str, str] = field(default_factory=dict)

    def dispose(self) -> None:
        for engine in self.engines.values():
            engine.dispose()


def connect_and_check(model: PolicyFile, policies: Sequence[Policy] | None = None,
                      readonly: bool = True, survey: bool = False, independent: bool = False) -> Connected:
    """Engines and reflected schemas for the policies' databases; raise SchemaError on any problem.

    ``survey`` (``retention validate``) also reads the data: rows whose ``after`` is not a date
    become warnings. It scans each policy's table, which a nightly run does not need to do.

    ``independent`` (a run): a database that cannot be reached (after retries) is left out and
    named in ``Connected.unreachable``, so the others' policies still run; only when none can be
    reached is it an error. Problems in the file or the schema stay errors for the whole run.
    """
    unreachable: dict[str, str] = {}
    policies = list(model.policies if policies is None else policies)
    needed = list(dict.fromkeys(model.database_of(p) for p in policies))
    engines: dict[str, sa.Engine] = {}
    try:
        for name in needed:
            url = model.databases[name].url
            _refuse_missing_sqlite_file(name, url)
            # purge: none is a choice to leave removed bytes in the files; zeroing them costs time.
            engine = dialects.create_engine(url, readonly=readonly,
                                            secure_delete=model.databases[name].purge != "none",
                                            name=name, **model.databases[name].timeouts())
            try:
                _reach(engine, name, url)
            except DatabaseUnreachable as exc:
                engine.dispose()
                if not independent:
                    raise
                unreachable[name] = str(exc)
                continue
            engines[name] = engine
        if unreachable and not engines:
            raise DatabaseUnreachable("\n".join(unreachable.values()))
        schemas: dict[str, Schema] = {}
        problems: list[str] = []
        warnings: list[str] = []
        unknown_personal = set(model.personal)
        for name in [n for n in needed if n not in unreachable]:
            mine = [p for p in policies if model.database_of(p) == name]
            # Every policy of the file on this database, selected or not: a cascade into another
            # policy's table is refused, and holds follow links into the other policies' tables.
            everyone = [p for p in model.policies if model.database_of(p) == name]
            tables = {t for p in mine for t in (p.table, *p.cascade)} | {p.table for p in everyone}
            schema, missing = reflect(engines[name], tables | set(model.personal))
            schemas[name] = schema
            for p in mine:
                errs, warns = check_policy(schema, p, missing - set(model.personal) | (missing & tables), everyone)
                problems += [f"{locate(model, p, key)}: policy '{p.name}', key '{key}': {msg}" for key, msg in errs]
                warnings += warns
            for table, _col, msg in check_personal(schema, model, name, missing):
                problems.append(f"{locate_personal(model, table)}: key 'personal.{table}': {msg}")
            unknown_personal &= missing
            warnings += purge.storage_warnings(engines[name], name, model.databases[name].purge)
        # A table of an unreachable database cannot be checked tonight; that is no mistake in the file.
        for table in sorted(unknown_personal) if not unreachable else []:
            problems.append(f"{locate_personal(model, table)}: key 'personal.{table}': no database of the file "
                            f"has a table '{table}'")
        if problems:
            raise SchemaError(problems)
        if survey:
            for p in policies:
                name = model.database_of(p)
                warning = unreadable_warning(engines[name], schemas[name], p)
                if warning:
                    warnings.append(warning)
    except BaseException:
        for engine in engines.values():
            engine.dispose()
        raise
    return Connected(engines, schemas, warnings, unreachable)


def _reach(engine: sa.Engine, name: str, url: str) -> None:
    """Connect, retrying a transient failure (a server restarting, a failover, a timeout) as a
    batch is retried; then the last attempt's error, with the URL's password hidden, ends the run
    (exit 2). At most 1 + len(RETRY_DELAYS) connects: a stalled server costs that many connect
    timeouts plus the waits, a refused password one connect."""
    from retention.engine.execution import RETRY_DELAYS

    delays = list(RETRY_DELAYS)
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return
        except Exception as exc:
            transient = isinstance(exc, sa.exc.DBAPIError) and dialects.is_transient(exc, engine.dialect.name)
            if not transient or not delays:
                raise dialects.unreachable(exc, url, name) from None
            wait = delays.pop(0)
            reason = (str(getattr(exc, "orig", exc)).strip().splitlines() or [""])[0]
            log.warning("database.retry", database=name, wait_s=wait, error=reason.replace(url, redact_url(url)))
            time.sleep(wait)


def unreadable_warning(engine: sa.Engine, schema: Schema, policy: Policy, first: int = 5) -> str | None:
    """A warning for the policy's rows whose ``after`` is not a date (never due), with the first keys."""
    table = schema.tables[policy.table]
    after = table.c[policy.after]
    key = key_column(table, policy)
    assert not isinstance(key, str), key
    cond = sa.and_(
        after.is_not(None), sa.not_(dialects.readable_date(after, after, schema.dialect)),
        *[table.c[c].is_(None) if v is None else table.c[c] == v for c, v in policy.where.items()],
    )
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(table).where(cond)).scalar_one()
        if not count:
            return None
        keys = conn.execute(sa.select(key).where(cond).order_by(key).limit(first)).scalars().all()
    shown = ", ".join(map(str, keys)) + (", ..." if count > len(keys) else "")
    return (f"policy '{policy.name}': {count} row(s) of {table.name} whose {after.name} is not a date "
            f"are never due (keys {shown}); correct them, or set them to NULL if the event never happened")


def lifetime_warnings(model: PolicyFile, connected: Connected) -> list[str]:
    """"No personal data without an end" (docs/policy-file.md): per policy table, the rows no
    policy of the file will ever remove (outside every policy's `where`), and the tables
    pointing at a policy table that no policy or cascade covers. Counts one query per table."""
    from retention.engine.planning import never_in_scope, uncovered_links

    out: list[str] = []
    for name, schema in connected.schemas.items():
        mine = [p for p in model.policies if model.database_of(p) == name]
        for table in dict.fromkeys(p.table for p in mine):
            if table not in schema.tables:
                continue
            on_table = [p for p in mine if p.table == table]
            cond = never_in_scope(schema.tables[table], on_table)
            if cond is None:
                continue
            with connected.engines[name].connect() as conn:
                n = conn.execute(sa.select(sa.func.count()).select_from(schema.tables[table]).where(cond)).scalar_one()
                conn.rollback()
            if n:
                wheres = "; ".join(f"'{p.name}' where {dict(p.where)}" for p in on_table)
                out.append(f"{name}.{table}: {n} row(s) outside every policy's `where` ({wheres}): "
                           "no policy will ever remove them as the file stands")
        for table, edges in uncovered_links(schema, mine).items():
            for e in edges:
                out.append(f"{name}.{e.child} ({', '.join(e.child_cols)} -> {e.parent}) is covered by no policy or "
                           f"cascade: its rows, linked to {table}, have no end in the file; give it a policy")
    return out


def _refuse_missing_sqlite_file(name: str, url: str) -> None:
    """SQLite creates a missing file on connect; a typo in a path must be an error, not a new database."""
    try:
        parsed = sa.engine.make_url(url)
    except Exception:
        return  # create_engine reports an unparsable URL
    path = parsed.database
    if parsed.get_backend_name() == "sqlite" and path and path != ":memory:" and not path.startswith("file:"):
        if not Path(path).exists():
            raise DatabaseUnreachable(
                f"database '{name}': SQLite file {path} does not exist (build the demo with `retention demo`?)"
            )

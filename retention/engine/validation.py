"""Connect to every database a run needs, reflect, and check the policies against the schema.

Shared by ``retention validate`` and ``retention run``, so a run refuses exactly what
validate reports, before anything is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from retention.databases import dialects, purge
from retention.databases.schema import Schema, check_policy, locate, reflect
from retention.errors import DatabaseUnreachable, SchemaError
from retention.policy.model import Policy, PolicyFile


@dataclass
class Connected:
    engines: dict[str, sa.Engine]
    schemas: dict[str, Schema]
    warnings: list[str] = field(default_factory=list)

    def dispose(self) -> None:
        for engine in self.engines.values():
            engine.dispose()


def connect_and_check(model: PolicyFile, policies: Sequence[Policy] | None = None,
                      readonly: bool = True) -> Connected:
    """Engines and reflected schemas for the policies' databases; raise SchemaError on any problem."""
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
            engines[name] = engine
            dialects.check_reachable(engine, url, name)
        schemas: dict[str, Schema] = {}
        problems: list[str] = []
        warnings: list[str] = []
        for name in needed:
            mine = [p for p in policies if model.database_of(p) == name]
            tables = {t for p in mine for t in (p.table, *p.cascade)}
            schema, missing = reflect(engines[name], tables)
            schemas[name] = schema
            for p in mine:
                errs, warns = check_policy(schema, p, missing)
                problems += [f"{locate(model, p, key)}: policy '{p.name}', key '{key}': {msg}" for key, msg in errs]
                warnings += warns
            warnings += purge.storage_warnings(engines[name], name, model.databases[name].purge)
        if problems:
            raise SchemaError(problems)
    except BaseException:
        for engine in engines.values():
            engine.dispose()
        raise
    return Connected(engines, schemas, warnings)


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

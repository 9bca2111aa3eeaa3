"""Schema reflection and the database-side checks of ``retention validate``.

Only the tables the policies name, and the tables whose foreign keys point at them, are
reflected: a shop database may have hundreds of tables the job never needs to see.
Foreign keys are read from the schema, not trusted to the database's enforcement, so a
referenced row is protected on SQLite without ``PRAGMA foreign_keys`` too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from retention.anonymisation import strategies
from retention.databases import dialects
from retention.policy.model import Policy, PolicyFile


@dataclass(frozen=True)
class Edge:
    """A foreign key: rows of ``child`` (``child_cols``) point at ``parent`` (``parent_cols``)."""

    child: str
    child_cols: tuple[str, ...]
    parent: str
    parent_cols: tuple[str, ...]


@dataclass
class Schema:
    tables: dict[str, sa.Table]
    edges: list[Edge]
    indexes: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    # SQLAlchemy's dialect name (sqlite, postgresql, mysql): what a stored date may be differs.
    dialect: str = ""

    def referencing(self, table: str) -> list[Edge]:
        return [e for e in self.edges if e.parent == table]

    def has_index(self, table: str, cols: tuple[str, ...]) -> bool:
        """Whether some index (or the primary key) starts with these columns."""
        return any(ix[: len(cols)] == cols for ix in self.indexes.get(table, []))


def reflect(engine: sa.Engine, names: Iterable[str]) -> tuple[Schema, set[str]]:
    """Reflect the named tables and every table that references them. Returns (schema, missing)."""
    wanted = set(names)
    insp = sa.inspect(engine)
    # A partition a policy names itself stays a table; the others are their parent's rows.
    partitions = dialects.partition_tables(engine) - wanted
    existing = set(insp.get_table_names()) - partitions
    missing = wanted - existing
    edges: list[Edge] = []
    for (_, child), fks in insp.get_multi_foreign_keys().items():
        if child in partitions:
            continue  # its parent's foreign keys cover its rows
        for fk in fks:
            if fk.get("referred_schema") not in (None, insp.default_schema_name):
                continue
            edges.append(
                Edge(child, tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]))
            )
    # Parents too: the re-identification check follows an anonymised row's own foreign keys.
    needed = (wanted & existing) | {e.child for e in edges if e.parent in wanted} \
        | {e.parent for e in edges if e.child in wanted and e.parent in existing}
    metadata = sa.MetaData()
    metadata.reflect(bind=engine, only=sorted(needed), resolve_fks=False)
    indexes: dict[str, list[tuple[str, ...]]] = {}
    for name in needed:
        table = metadata.tables[name]
        found = [tuple(c.name for c in table.primary_key.columns)]
        found += [tuple(c.name for c in ix.columns) for ix in table.indexes]
        # MariaDB indexes every foreign key itself; the reflected FK columns are then indexed.
        indexes[name] = found
    return Schema(dict(metadata.tables), edges, indexes, engine.dialect.name), missing


def key_column(table: sa.Table, policy: Policy) -> sa.Column[Any] | str:
    """The policy's key column, or why there is none usable."""
    if policy.key is None:
        pk = list(table.primary_key.columns)
        if len(pk) != 1:
            return f"table '{table.name}' has no single-column primary key; name a unique column as `key`"
        return pk[0]
    if policy.key not in table.c:
        return f"table '{table.name}' has no column '{policy.key}'"
    col = table.c[policy.key]
    unique = [tuple(c.name for c in table.primary_key.columns)]
    unique += [tuple(c.name for c in ix.columns) for ix in table.indexes if ix.unique]
    unique += [
        tuple(c.name for c in con.columns) for con in table.constraints if isinstance(con, sa.UniqueConstraint)
    ]
    if (col.name,) in unique:
        return col
    # A partitioned table's keys are unique only together with the partition column (both
    # databases insist); with `after` that is enough for a delete policy: its batches also
    # test the due condition when they delete by key (see Plan.key_unique). Not with
    # on_referenced anonymise/detach: those change rows by key (or rows pointing at a key).
    if policy.action == "delete" and policy.on_referenced == "defer" \
            and any(set(u) == {col.name, policy.after} for u in unique):
        return col
    return f"column '{col.name}' of table '{table.name}' is not unique (no primary key or unique constraint)"


def detach_key(table: sa.Table, policies: Iterable[Policy]) -> sa.Column[Any] | None:
    """The column that names a detached row of ``table`` (audit log, erase report): its
    single-column primary key; on a partitioned table, whose keys are unique only together with
    the partition column, the `key` that the table's own delete policy names (as
    :func:`key_column` accepts it). Such a key may repeat across partitions, so the detaching
    UPDATE also tests the foreign key (Executor._detach): it never detaches a row that does not
    point at the removed rows."""
    pk = single_key(table)
    if pk is not None:
        return pk
    for policy in policies:
        if policy.table == table.name and policy.key is not None and policy.action == "delete":
            col = key_column(table, policy)
            if not isinstance(col, str):
                return col
    return None


def key_unique_alone(table: sa.Table, key: sa.Column[Any]) -> bool:
    """Whether ``key`` is unique by itself (not only together with another column)."""
    unique = [tuple(c.name for c in table.primary_key.columns)]
    unique += [tuple(c.name for c in ix.columns) for ix in table.indexes if ix.unique]
    unique += [tuple(c.name for c in con.columns) for con in table.constraints if isinstance(con, sa.UniqueConstraint)]
    return (key.name,) in unique


def cascade_tree(schema: Schema, policy: Policy) -> dict[str, Edge] | str:
    """For each cascade table, the foreign key by which it hangs under the policy's table.

    A cascade table must reach the policy's table through foreign keys, directly or through
    other cascade tables (invoice_lines -> invoices). Returns an error text otherwise.
    """
    tree: dict[str, Edge] = {}
    members = {policy.table}
    remaining = list(policy.cascade)
    while remaining:
        progressed = False
        for name in list(remaining):
            edge = next((e for e in schema.edges if e.child == name and e.parent in members), None)
            if edge is not None:
                tree[name] = edge
                members.add(name)
                remaining.remove(name)
                progressed = True
        if not progressed:
            name = remaining[0]
            return f"table '{name}' has no foreign key to '{policy.table}' (directly or through other cascade tables)"
    return tree


def blocking_edges(schema: Schema, policy: Policy, tree: dict[str, Edge]) -> list[Edge]:
    """Foreign keys into the rows a deletion removes (the policy's table and its cascade
    tables) from rows that are not removed with it: what defers, anonymises or detaches."""
    members = [policy.table, *tree]
    tree_edges = set(tree.values())
    return [e for m in members for e in schema.referencing(m) if e not in tree_edges and e.child not in tree]


def single_key(table: sa.Table) -> sa.Column[Any] | None:
    pk = list(table.primary_key.columns)
    return pk[0] if len(pk) == 1 else None


def _is_temporal(col: sa.Column[Any]) -> bool:
    return isinstance(col.type, (sa.Date, sa.DateTime))


def check_policy(schema: Schema, policy: Policy, missing: set[str],
                 others: Iterable[Policy] = ()) -> tuple[list[tuple[str, str]], list[str]]:
    """Problems as (key, message) and warnings (text) of one policy against a reflected schema.

    ``others``: the other policies of the file on the same database. A cascade into a table
    that has a policy of its own is refused: the cascade would delete that table's rows on the
    parent's term, cutting the child's own term short (docs/policy-file.md, "One policy never
    cuts another's term short"). Without the cascade, the child's rows block their parent like
    any other kept referencing row until their own policy removes them.
    """
    problems: list[tuple[str, str]] = []
    warnings: list[str] = []
    if policy.table in missing:
        return [("table", f"table '{policy.table}' does not exist in the database")], warnings
    table = schema.tables[policy.table]

    key = key_column(table, policy)
    if isinstance(key, str):
        problems.append(("key", key))

    def column(name: str, key_name: str) -> sa.Column[Any] | None:
        if name not in table.c:
            problems.append((key_name, f"table '{table.name}' has no column '{name}'"))
            return None
        return table.c[name]

    after = column(policy.after, "after")
    if after is not None:
        if not _is_temporal(after):
            problems.append(("after", f"column '{after.name}' is {after.type}, not a date or datetime"))
        elif policy.after_timezone and isinstance(after.type, sa.DateTime) and after.type.timezone:
            problems.append(("after_timezone", f"column '{after.name}' carries its own time zone; "
                                               "after_timezone is for a column without one"))
        elif not schema.has_index(table.name, (after.name,)):
            warnings.append(
                f"policy '{policy.name}': no index on {table.name}.{after.name}; a nightly run scans the table. "
                f"Fix: CREATE INDEX ix_{table.name}_{after.name} ON {table.name} ({after.name})"
            )
    for key_name in ("exclude", "where"):
        for name in getattr(policy, key_name):
            column(name, f"{key_name}.{name}")
    for name, spec in (policy.fields or {}).items():
        col = column(name, f"fields.{name}")
        if col is None:
            continue
        if isinstance(key, sa.Column) and col.name == key.name:
            problems.append((f"fields.{name}", "the key column cannot be anonymised"))
            continue
        error = strategies.resolve(spec).check(col)
        if error:
            problems.append((f"fields.{name}", error))
    if policy.marker is not None:
        marker = column(policy.marker, "marker")
        if marker is not None and not (isinstance(marker.type, sa.DateTime) and marker.nullable):
            problems.append(("marker", f"column '{marker.name}' must be a nullable datetime column"))
    if policy.anonymises and policy.fields:
        problems += _accounted_for(table, policy, key)
    if policy.anonymises and policy.fields and policy.marker is None \
            and strategies.witnesses(policy.fields) is None:
        problems.append((
            "fields",
            "cannot tell an anonymised row from one still to do: add a `redact` field, "
            "or name a nullable datetime `marker` column",
        ))

    for name in policy.cascade:
        if name in missing:
            problems.append(("cascade", f"table '{name}' does not exist in the database"))
    owned = {o.table: o.name for o in others if o.name != policy.name}
    conflicts = [(
        "cascade",
        f"table '{name}' has a policy of its own ('{owned[name]}'): a cascade would delete its rows "
        f"before their own term; drop '{name}' from cascade (its rows then keep their parent "
        f"until their own policy removes them), or use on_referenced: detach",
    ) for name in policy.cascade if name in owned]
    if not any(k == "cascade" for k, _ in problems):
        tree = cascade_tree(schema, policy)
        if isinstance(tree, str):
            problems.append(("cascade", tree))
        else:
            if policy.on_referenced == "detach" and not conflicts:
                problems += _detach_problems(schema, policy, tree, others)
            for child, edge in tree.items():
                if not schema.has_index(child, edge.child_cols):
                    cols = ", ".join(edge.child_cols)
                    warnings.append(
                        f"policy '{policy.name}': no index on {child}({cols}); each deleted row makes the "
                        f"database scan {child}. Fix: CREATE INDEX ix_{child}_{'_'.join(edge.child_cols)} "
                        f"ON {child} ({cols})"
                    )
    problems += conflicts
    return problems, warnings


def _detach_problems(schema: Schema, policy: Policy, tree: dict[str, Edge],
                     others: Iterable[Policy]) -> list[tuple[str, str]]:
    """``on_referenced: detach`` sets the referencing foreign key to NULL: every such key must be
    nullable, and its table must have a key that names its rows in the audit log
    (:func:`detach_key`)."""
    out: list[tuple[str, str]] = []
    for edge in blocking_edges(schema, policy, tree):
        child = schema.tables.get(edge.child)
        if child is None:
            continue
        fixed = [c for c in edge.child_cols if not child.c[c].nullable]
        if fixed:
            out.append(("on_referenced", (
                f"detach sets {edge.child}.{', '.join(fixed)} to NULL, but the column is NOT NULL: "
                f"{edge.child} rows could not be detached from {edge.parent}; use defer or anonymise, "
                f"or make the column nullable"
            )))
        elif detach_key(child, others) is None:
            out.append(("on_referenced", (
                f"detach names the detached rows of {edge.child} by their key, but {edge.child} has no "
                f"single-column primary key, nor a delete policy of its own naming a `key`"
            )))
    return out


def _accounted_for(table: sa.Table, policy: Policy, key: sa.Column[Any] | str) -> list[tuple[str, str]]:
    """Every column of an anonymised row is anonymised (``fields``), or the key, the ``after``
    column, the ``marker``, or kept with a reason (``keep``).

    An ``exclude`` or ``where`` column is not accounted for by being named there: it stays in
    the anonymised row like any other, so it is listed under ``keep`` too (and then counts in
    the re-identification check; it is the same for every anonymised row in scope).
    """
    problems: list[tuple[str, str]] = []
    fields = policy.fields or {}
    for name in policy.keep:
        if name not in table.c:
            problems.append((f"keep.{name}", f"table '{table.name}' has no column '{name}'"))
    accounted = {*fields, *policy.keep, policy.after, *([policy.marker] if policy.marker else [])}
    if isinstance(key, sa.Column):
        accounted.add(key.name)
    left = [col.name for col in table.c if col.name not in accounted]
    if left:
        also = (" (naming a column in `exclude` or `where` does not take it out of the anonymised row)"
                if set(left) & {*policy.exclude, *policy.where} else "")
        names = ", ".join(f"'{n}'" for n in left)
        problems.append(("keep" if policy.keep else "fields",
                         f"{'column' if len(left) == 1 else 'columns'} {names} of table '{table.name}' "
                         f"not accounted for{also}: anonymise each in `fields`, or list it under `keep` with "
                         f"the reason it may stay (keep: {{{left[0]}: \"...\"}})"))
    after = table.c.get(policy.after)
    if after is not None and _is_temporal(after) and policy.after in fields \
            and not str(fields[policy.after] or "").startswith("generalise."):
        problems.append((f"fields.{policy.after}",
                         "the `after` column can only be generalised: without its event an anonymised row "
                         "cannot be told apart from one whose term never began"))
    return problems


def check_personal(schema: Schema, model: PolicyFile, database: str,
                   missing: set[str]) -> list[tuple[str, str, str]]:
    """The top-level ``personal`` lists against one database: (table, column or '', message)."""
    problems: list[tuple[str, str, str]] = []
    for name, cols in model.personal.items():
        if name in missing or name not in schema.tables:
            continue  # reported once for all databases by the caller
        table = schema.tables[name]
        for col in cols:
            if col not in table.c:
                problems.append((name, col, f"table '{name}' has no column '{col}'"))
    return problems


def locate(model: PolicyFile, policy: Policy, key: str) -> str:
    """``file:line`` of a policy's key (falling back to the policy, then the file)."""
    parts = key.split(".")
    line = None
    while parts and line is None:
        line = model.locations.get(".".join([policy.name, *parts]))
        parts = parts[:-1]
    line = line or model.locations.get(policy.name)
    return f"{model.source}:{line}" if line else model.source


def locate_personal(model: PolicyFile, table: str) -> str:
    """``file:line`` of a table's ``personal`` list."""
    line = model.locations.get(f"#personal.{table}")
    return f"{model.source}:{line}" if line else model.source

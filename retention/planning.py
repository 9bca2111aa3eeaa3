"""Planning: turn a policy and a cut-off into SQL predicates, and count what is due.

Every selection the run makes, real or dry, goes through :class:`Plan`, so the preview and
the real run cannot disagree about which rows are due.

Foreign keys decide what may go: a due row referenced by a row that stays is *deferred*.
"Stays" is evaluated in SQL against the policies that run earlier in the same run (children
before parents), so a preview that removes nothing still predicts the real run exactly: an
account whose last invoice expires tonight is removable tonight, in both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from retention import strategies
from retention.dates import Cutoff
from retention.policy import Policy
from retention.schema import Edge, Schema, cascade_tree, key_column

# A predicate over one table, for a given alias of it (subqueries need their own aliases).
Pred = Callable[[sa.FromClause], sa.ColumnElement[bool]]
SAMPLE_SIZE = 5


def _match(t: sa.FromClause, column: str, value: Any) -> sa.ColumnElement[bool]:
    col = t.c[column]
    return col.is_(None) if value is None else col == value


def _differs(t: sa.FromClause, column: str, value: Any) -> sa.ColumnElement[bool]:
    """The exact complement of :func:`_match`, NULL included (a NULL hold flag is no hold)."""
    col = t.c[column]
    return col.is_not(None) if value is None else sa.or_(col.is_(None), col != value)


def _in_term_end(after: sa.ColumnElement[Any], col: sa.Column[Any], cut: Cutoff) -> sa.ColumnElement[bool]:
    """``after`` is at or before the cut-off: the main range, plus the month-end day windows."""
    if isinstance(col.type, sa.DateTime) and getattr(col.type, "timezone", False):
        # A column with a time zone is compared as an instant.
        main, windows = cut.instant, cut.instant_windows()
    elif isinstance(col.type, sa.DateTime):
        # One without holds local wall-clock time.
        main, windows = cut.local, cut.windows
    else:
        # A DATE counts from the start of its day; the window days follow the main day.
        return after <= cut.date
    if not windows:
        return after <= main
    return sa.or_(after <= main, *[after.between(lo, hi) for lo, hi in windows])


def pending(policy: Policy, t: sa.FromClause) -> sa.ColumnElement[bool]:
    """True for rows the policy has not anonymised yet.

    With a ``marker`` column: the marker is NULL. Otherwise a ``redact`` field is a reliable
    witness (it is always set to its marker text); with only ``null`` fields, any field not
    yet NULL. Validation refuses policies where neither can tell.
    """
    if policy.marker:
        return t.c[policy.marker].is_(None)
    specs = {c: strategies.resolve(s) for c, s in (policy.fields or {}).items()}
    redacts = [c for c, s in specs.items() if s.name == "redact"]
    if redacts:
        return sa.or_(*[_differs(t, c, specs[c].value(t.c[c])) for c in redacts])
    return sa.or_(*[t.c[c].is_not(None) for c in specs])


@dataclass
class Plan:
    """One policy compiled against a reflected schema, for one run."""

    policy: Policy
    database: str
    schema: Schema
    cutoff: Cutoff
    table: sa.Table = field(init=False)
    key: sa.Column[Any] = field(init=False)
    tree: dict[str, Edge] = field(init=False)
    earlier: list[Plan] = field(default_factory=list)
    blocked_by_guard: bool = False

    def __post_init__(self) -> None:
        self.table = self.schema.tables[self.policy.table]
        key = key_column(self.table, self.policy)
        assert not isinstance(key, str), key
        self.key = key
        tree = cascade_tree(self.schema, self.policy)
        assert not isinstance(tree, str), tree
        self.tree = tree
        self.strategies = {c: strategies.resolve(s) for c, s in (self.policy.fields or {}).items()}

    # -- row sets --------------------------------------------------------------------------
    @property
    def members(self) -> list[str]:
        """The policy's table and its cascade tables: what one removal takes away."""
        return [self.policy.table, *self.tree]

    def past_term(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        after = t.c[self.policy.after]
        cond = [after.is_not(None), _in_term_end(after, self.table.c[self.policy.after], self.cutoff)]
        cond += [_match(t, c, v) for c, v in self.policy.where.items()]
        if self.policy.action == "anonymise":
            cond.append(self.pending(t))
        return sa.and_(*cond)

    def held_match(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        return sa.or_(*[_match(t, c, v) for c, v in self.policy.exclude.items()]) if self.policy.exclude else sa.false()

    def not_held(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        if not self.policy.exclude:
            return sa.true()
        return sa.and_(*[_differs(t, c, v) for c, v in self.policy.exclude.items()])

    def due(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        return sa.and_(self.past_term(t), self.not_held(t))

    def pending(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        return pending(self.policy, t)

    # -- references ------------------------------------------------------------------------
    def blocking_edges(self) -> list[Edge]:
        """Foreign keys into the removed set from rows that are not removed with it."""
        tree_edges = set(self.tree.values())
        return [
            e for m in self.members for e in self.schema.referencing(m)
            if e not in tree_edges and e.child not in self.tree
        ]

    def _owned(self, member: str, outer: sa.FromClause) -> tuple[sa.FromClause, list[sa.ColumnElement[bool]]]:
        """An alias of a member table and the conditions tying its rows to the outer policy row."""
        if member == self.policy.table:
            return outer, []
        alias = self.schema.tables[member].alias()
        conds: list[sa.ColumnElement[bool]] = []
        current, current_alias = member, alias
        while current != self.policy.table:
            edge = self.tree[current]
            parent_alias = outer if edge.parent == self.policy.table else self.schema.tables[edge.parent].alias()
            pairs = zip(edge.child_cols, edge.parent_cols, strict=True)
            conds += [current_alias.c[cc] == parent_alias.c[pc] for cc, pc in pairs]
            if edge.parent == self.policy.table:
                break
            current, current_alias = edge.parent, parent_alias
        return alias, conds

    def referenced_by(self, edge: Edge, t: sa.FromClause) -> sa.ColumnElement[bool]:
        """Rows of ``t`` that a row of ``edge.child`` points at, and that row stays in this run."""
        member, conds = self._owned(edge.parent, t)
        child = self.schema.tables[edge.child].alias()
        conds = conds + [child.c[cc] == member.c[pc] for cc, pc in zip(edge.child_cols, edge.parent_cols, strict=True)]
        conds.append(sa.not_(self.removed_earlier(edge.child, child)))
        # Self-references: the referencing row stays unless a different, earlier policy removes it.
        return sa.exists().where(*conds)

    def removed_earlier(self, table: str, alias: sa.FromClause) -> sa.ColumnElement[bool]:
        for plan in self.earlier:
            if plan.policy.table == table and plan.policy.action == "delete" and not plan.blocked_by_guard:
                return sa.and_(plan.due(alias), sa.not_(plan.blocked(alias)))
        return sa.false()

    def blocked(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        if self.policy.action != "delete":
            return sa.false()
        edges = self.blocking_edges()
        return sa.or_(*[self.referenced_by(e, t) for e in edges]) if edges else sa.false()

    def removable(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        if self.policy.action == "anonymise":
            return self.due(t)
        return sa.and_(self.due(t), sa.not_(self.blocked(t)))

    def anonymisable(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        """Deferred rows that on_referenced: anonymise still has to anonymise."""
        return sa.and_(self.due(t), self.blocked(t), self.pending(t))

    # -- counting ---------------------------------------------------------------------------
    def count(self, conn: sa.Connection) -> Counts:
        t = self.table
        one = sa.literal(1)

        def tally(cond: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
            return sa.func.coalesce(sa.func.sum(sa.case((cond, one), else_=0)), 0)

        blocked = self.blocked(t)
        columns = [tally(self.held_match(t)), tally(self.not_held(t)), tally(sa.and_(self.not_held(t), blocked))]
        if self.policy.on_referenced == "anonymise" and self.policy.action == "delete":
            columns.append(tally(sa.and_(self.not_held(t), blocked, self.pending(t))))
        row = conn.execute(sa.select(*columns).select_from(t).where(self.past_term(t))).one()
        total = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
        counts = Counts(total=int(total), held=int(row[0]), due=int(row[1]), deferred=int(row[2]),
                        to_anonymise=int(row[3]) if len(row) > 3 else 0)
        if counts.deferred:
            for edge in self.blocking_edges():
                n = conn.execute(
                    sa.select(sa.func.count()).select_from(t).where(self.due(t), self.referenced_by(edge, t))
                ).scalar_one()
                if n:
                    counts.reasons[edge.child] = counts.reasons.get(edge.child, 0) + int(n)
        return counts

    def cascade_counts(self, conn: sa.Connection) -> dict[str, int]:
        """Child rows that removing the removable rows takes with them (for the preview)."""
        result = {}
        for member in self.tree:
            alias, conds = self._owned(member, self.table)
            n = conn.execute(
                sa.select(sa.func.count()).select_from(alias).where(
                    sa.exists().where(*conds, self.removable(self.table))
                )
            ).scalar_one()
            result[member] = int(n)
        return result

    def sample(self, conn: sa.Connection, n: int = SAMPLE_SIZE) -> list[Any]:
        t = self.table
        pred = sa.or_(self.removable(t), self.anonymisable(t)) if self.policy.on_referenced == "anonymise" \
            else self.removable(t)
        rows = conn.execute(sa.select(self.key).where(pred).order_by(self.key).limit(n))
        return [_jsonable(r[0]) for r in rows]

    def touched(self, counts: Counts) -> int:
        """Rows of the policy's own table this run would change (what the safety guard weighs)."""
        if self.policy.action == "anonymise":
            return counts.due
        return counts.due - counts.deferred + counts.to_anonymise


@dataclass
class Counts:
    total: int
    held: int
    due: int
    deferred: int
    to_anonymise: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (int, str, float)) or value is None:
        return value
    return str(value)


def run_order(policies: Sequence[Policy], schemas: dict[str, Schema],
              database_of: Callable[[Policy], str]) -> list[Policy]:
    """Children before parents: a policy whose table references another policy's table runs first.

    Then a parent can go in the same run as its last child. Ties keep the file's order; a cycle
    of references keeps the file's order too (its rows are then deferred until a later run).
    """
    def members(p: Policy) -> set[str]:
        return {p.table, *p.cascade}

    def before(q: Policy, p: Policy) -> bool:
        if database_of(q) != database_of(p) or q is p or q.action != "delete":
            return False
        schema = schemas[database_of(p)]
        return any(e.child == q.table and e.parent in members(p) for e in schema.edges)

    remaining = list(policies)
    ordered: list[Policy] = []
    while remaining:
        ready = next((p for p in remaining if not any(before(q, p) for q in remaining if q is not p)), None)
        if ready is None:
            ready = remaining[0]
        ordered.append(ready)
        remaining.remove(ready)
    return ordered

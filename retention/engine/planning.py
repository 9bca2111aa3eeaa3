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
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from retention.anonymisation import strategies
from retention.databases import dialects
from retention.databases.schema import (
    Edge,
    Schema,
    blocking_edges,
    cascade_tree,
    detach_key,
    key_column,
    key_unique_alone,
)
from retention.engine import holds
from retention.policy.dates import Cutoff
from retention.policy.model import Policy

# A predicate over one table, for a given alias of it (subqueries need their own aliases).
Pred = Callable[[sa.FromClause], sa.ColumnElement[bool]]
SAMPLE_SIZE = 5


def _match(t: sa.FromClause, column: str, value: Any) -> sa.ColumnElement[bool]:
    col = t.c[column]
    # Never NULL (a NULL column gives false, not unknown): the match is negated in
    # removed_earlier(), where an unknown would let a referenced row go.
    return col.is_(None) if value is None else sa.and_(col.is_not(None), col == value)


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
    found = strategies.witnesses(policy.fields or {})
    assert found is not None, f"policy {policy.name!r}: validation lets no undetectable anonymisation through"
    # Not yet done: some witness still differs from what the strategy writes (NULL or the marker text).
    return sa.or_(*[_differs(t, c, s.value(t.c[c])) for c, s in found.items()])


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
    # The file's other policies on this database: their `exclude` holds reach this policy's
    # rows through foreign keys (unless this policy says `holds: own`).
    holders: list[Policy] = field(default_factory=list)
    # The hold registry (engine/holds.py): per policy name, the keys (as text) held tonight.
    registry: dict[str, list[str]] = field(default_factory=dict)
    blocked_by_guard: bool = False
    # Set by count() on a range-blind database when much of the table is past its term: the
    # dialect whose planner is then steered to scan the table rather than walk the index.
    scan: str | None = None

    def __post_init__(self) -> None:
        self.table = self.schema.tables[self.policy.table]
        key = key_column(self.table, self.policy)
        assert not isinstance(key, str), key
        self.key = key
        self.key_unique = key_unique_alone(self.table, key)
        tree = cascade_tree(self.schema, self.policy)
        assert not isinstance(tree, str), tree
        self.tree = tree
        self.strategies = {c: strategies.resolve(s) for c, s in (self.policy.fields or {}).items()}
        # (holding policy, foreign key between its table and ours) for every link a hold follows.
        self.hold_links: list[tuple[Policy, Edge]] = []
        # Two policies of one table with the same `exclude` (one anonymises, one deletes) hold the
        # same rows: one test per link, not one per policy. Each is an EXISTS per row in every
        # batch (1M-account backlog, MariaDB: the due tickets counted in 4.8-5.3 s with one,
        # 7.3-9.3 s with both).
        seen: set[tuple[str, str, Edge]] = set()
        if self.policy.holds == "linked":
            for other in self.holders:
                if other.name == self.policy.name or not other.exclude or other.table == self.policy.table:
                    continue
                held_table = self.schema.tables.get(other.table)
                if held_table is None or any(c not in held_table.c for c in other.exclude):
                    continue  # a policy not run tonight whose table validate has not checked
                for edge in self.schema.edges:
                    same = (other.table, repr(sorted(other.exclude.items(), key=repr)), edge)
                    if {edge.child, edge.parent} == {other.table, self.policy.table} and same not in seen:
                        seen.add(same)
                        self.hold_links.append((other, edge))
        # The same for registry holds: (holding policy, its key column, link) per followed link.
        self.registry_links: list[tuple[Policy, sa.Column[Any], Edge]] = []
        if self.policy.holds == "linked":
            for other in self.holders:
                if (other.name == self.policy.name or other.table == self.policy.table
                        or not self.registry.get(other.name) or other.table not in self.schema.tables):
                    continue
                other_key = key_column(self.schema.tables[other.table], other)
                if isinstance(other_key, str):
                    continue
                for edge in self.schema.edges:
                    if {edge.child, edge.parent} == {other.table, self.policy.table}:
                        self.registry_links.append((other, other_key, edge))

    # -- row sets --------------------------------------------------------------------------
    @property
    def members(self) -> list[str]:
        """The policy's table and its cascade tables: what one removal takes away."""
        return [self.policy.table, *self.tree]

    @functools.cached_property
    def column_cutoff(self) -> Cutoff:
        """The cut-off in the terms of the ``after`` column: for a naive column whose values are
        another zone's wall clock (``after_timezone``), that zone's wall times."""
        zone = self.policy.after_timezone
        return self.cutoff.in_zone(zone) if zone else self.cutoff

    def after(self, t: sa.FromClause) -> sa.ColumnElement[Any]:
        """``t``'s ``after`` column, kept off its index when a backlog makes scanning cheaper
        (:meth:`choose_access`): every statement over the due range should use this."""
        after = t.c[self.policy.after]
        return dialects.unindexed(after, self.scan) if self.scan else after

    def readable(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        """``after`` holds a real date (see dialects.readable_date); never NULL for a non-NULL value."""
        # No upper bound: every caller also compares with the cut-off.
        return dialects.readable_date(self.after(t), self.table.c[self.policy.after], self.schema.dialect,
                                      upper=False)

    def past_term(self, t: sa.FromClause, readable: bool = True) -> sa.ColumnElement[bool]:
        """Rows whose event is at or before the cut-off. With ``readable=False``, also the rows
        whose ``after`` is not a date but compares as stored at or before it (for counting them:
        a plain comparison would take them as due)."""
        after = self.after(t)
        cond = [after.is_not(None), _in_term_end(after, self.table.c[self.policy.after], self.column_cutoff)]
        cond += [_match(t, c, v) for c, v in self.policy.where.items()]
        if readable:  # after the plain comparisons: SQLite stops at the first false term
            cond.append(self.readable(t))
        if self.policy.action == "anonymise":
            cond.append(self.pending(t))
        return sa.and_(*cond)

    def _linked_hold(self, t: sa.FromClause, other: Policy, edge: Edge, columns: Sequence[str] | None = None,
                     whole: bool = False, past_key: Any = None) -> sa.ColumnElement[bool]:
        """A row of ``other``'s table linked to the row of ``t`` by ``edge`` is held by ``other``'s
        `exclude` (only the given columns of it, for the reasons). EXISTS: never unknown.

        ``past_key``: a batch's keyset bound (the statement takes only rows whose key is greater).
        Where the held rows point at our key, the bound is repeated on their column: a linked row
        equal to a key past the bound is past it too, so the same rows are held. PostgreSQL does
        not carry an inequality across an equality, and without it walked the linked table's
        index from its start in every batch (a merge anti-join): the batches grew slower with
        every key passed (10M accounts: ~2,000 rows a second by the end). Integer keys and
        columns only, as for the approved plans' chunks.

        ``whole``: for a statement that reads the whole range once (a count), not a batch. Where
        the database computes an uncorrelated ``IN (subquery)`` once per statement rather than
        an EXISTS per row (dialects.holds_as_key_list), the link is written as ``col IN (the
        held rows' keys)``: exactly the same rows, and still never unknown (the column is
        tested for NULL, the list holds no NULL). Never in a batch's statement: the list would be
        computed again for every batch, a scan of the held table (no index on a hold flag)."""
        h = self.schema.tables[other.table].alias()
        if edge.child == self.policy.table:  # our row points at the held row
            pairs = list(zip(edge.child_cols, edge.parent_cols, strict=True))
        else:  # the held row points at ours
            pairs = [(pc, cc) for cc, pc in zip(edge.child_cols, edge.parent_cols, strict=True)]
        wanted = other.exclude if columns is None else {c: other.exclude[c] for c in columns}
        held = sa.or_(*[_match(h, c, v) for c, v in wanted.items()])
        if whole and len(pairs) == 1 and dialects.holds_as_key_list(self.schema.dialect):
            (mine, theirs), = pairs
            listed = sa.select(h.c[theirs]).where(h.c[theirs].is_not(None), held)
            return sa.and_(t.c[mine].is_not(None), t.c[mine].in_(listed))
        link = [h.c[theirs] == t.c[mine] for mine, theirs in pairs]
        if (type(past_key) is int and [mine for mine, _ in pairs] == [self.key.name]
                and isinstance(h.c[pairs[0][1]].type, sa.Integer)):
            # An integer column only: SQLite compares a TEXT-affinity column with a number as
            # text ('10' > 9 is false), and the held row would be missed.
            link.append(h.c[pairs[0][1]] > past_key)
        return sa.exists().where(*link, held)

    def registry_hold(self, t: sa.FromClause) -> sa.ColumnElement[bool] | None:
        """Rows held by the hold registry: their own key is held, or (one link, either way) the
        key of a row of another policy. Never unknown (IN over non-NULL keys, EXISTS); None
        when no registry hold reaches this policy."""
        conds: list[sa.ColumnElement[bool]] = []
        # A hold is on a row: it keeps it under every policy of the same table.
        names = {self.policy.name, *(p.name for p in self.holders if p.table == self.policy.table)}
        own = [k for name in sorted(names) for k in self.registry.get(name, [])]
        if own:
            conds.append(holds.key_values(t.c[self.key.name], own))
        for other, other_key, edge in self.registry_links:
            h = self.schema.tables[other.table].alias()
            pairs = zip(edge.child_cols, edge.parent_cols, strict=True)
            if edge.child == self.policy.table:
                link = [h.c[pc] == t.c[cc] for cc, pc in pairs]
            else:
                link = [h.c[cc] == t.c[pc] for cc, pc in pairs]
            conds.append(sa.exists().where(*link, holds.key_values(h.c[other_key.name], self.registry[other.name])))
        return sa.or_(*conds) if conds else None

    def held_match(self, t: sa.FromClause, whole: bool = False) -> sa.ColumnElement[bool]:
        """``whole``: see :meth:`_linked_hold` (only for statements that read the range once)."""
        own = [_match(t, c, v) for c, v in self.policy.exclude.items()]
        linked = [self._linked_hold(t, other, edge, whole=whole) for other, edge in self.hold_links]
        registry = self.registry_hold(t)
        own += [registry] if registry is not None else []
        return sa.or_(*own, *linked) if own or linked else sa.false()

    def not_held(self, t: sa.FromClause, whole: bool = False, past_key: Any = None) -> sa.ColumnElement[bool]:
        """``whole``, ``past_key``: see :meth:`_linked_hold`."""
        own = [_differs(t, c, v) for c, v in self.policy.exclude.items()]
        linked = [sa.not_(self._linked_hold(t, other, edge, whole=whole, past_key=past_key))
                  for other, edge in self.hold_links]
        registry = self.registry_hold(t)
        own += [sa.not_(registry)] if registry is not None else []
        return sa.and_(*own, *linked) if own or linked else sa.true()

    def hold_reasons(self, t: sa.FromClause, whole: bool = False) -> dict[str, sa.ColumnElement[bool]]:
        """Per reason (``table.column`` of the hold flag), the rows it holds: the policy's own
        `exclude` columns, and those of the policies whose holds follow links to this one.
        ``whole``: see :meth:`_linked_hold`."""
        reasons: dict[str, list[sa.ColumnElement[bool]]] = {}
        for c, v in self.policy.exclude.items():
            reasons.setdefault(f"{self.policy.table}.{c}", []).append(_match(t, c, v))
        for other, edge in self.hold_links:
            for c in other.exclude:
                reasons.setdefault(f"{other.table}.{c}", []).append(
                    self._linked_hold(t, other, edge, [c], whole=whole))
        registry = self.registry_hold(t)
        if registry is not None:
            reasons.setdefault(holds.REASON, []).append(registry)
        return {name: sa.or_(*conds) for name, conds in reasons.items()}

    def due(self, t: sa.FromClause, whole: bool = False, past_key: Any = None) -> sa.ColumnElement[bool]:
        """``whole`` (only for statements that read the range once), ``past_key`` (only for a
        batch taking the keys after it): see :meth:`_linked_hold`."""
        return sa.and_(self.past_term(t), self.not_held(t, whole, past_key))

    def due_whole(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        """:meth:`due` for a statement that reads the whole due range once (the counts)."""
        return self.due(t, whole=True)

    def pending(self, t: sa.FromClause) -> sa.ColumnElement[bool]:
        return pending(self.policy, t)

    def detach_key(self, child: sa.Table) -> sa.Column[Any] | None:
        """The column naming the rows of ``child`` that ``on_referenced: detach`` detaches."""
        return detach_key(child, self.holders)

    # -- references ------------------------------------------------------------------------
    def blocking_edges(self) -> list[Edge]:
        """Foreign keys into the removed set from rows that are not removed with it."""
        return blocking_edges(self.schema, self.policy, self.tree)

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
        if self.policy.action != "delete" or self.detaches:
            return sa.false()
        edges = self.blocking_edges()
        return sa.or_(*[self.referenced_by(e, t) for e in edges]) if edges else sa.false()

    def blocking_keys(self) -> sa.Subquery | None:
        """:meth:`blocked` as a set to outer-join instead of an EXISTS per row: the distinct keys
        (column ``rt_k``) of the policy rows that a row staying in this run points at. None when
        nothing can block. Reads every referencing table once, whatever the rows asked about."""
        if self.policy.action != "delete" or self.detaches:
            return None
        edges = self.blocking_edges()
        if not edges:
            return None
        parts: list[sa.Select[Any]] = []
        for edge in edges:
            if edge.parent == self.policy.table and list(edge.parent_cols) == [self.key.name]:
                # The child's own copy of the key: the join compares it as the EXISTS does.
                child = self.schema.tables[edge.child].alias()
                fk = child.c[edge.child_cols[0]]
                parts.append(sa.select(fk.label("rt_k")).where(
                    fk.is_not(None), sa.not_(self.removed_earlier(edge.child, child))))
            else:  # through cascade tables or another unique column: from the policy rows
                parts.append(self._referenced_keys(edge, lambda t: sa.true()))
        # UNION, not UNION ALL: a row referenced twice must join once.
        return (parts[0].distinct() if len(parts) == 1 else sa.union(*parts)).subquery("rt_blk")

    # -- references, per key ---------------------------------------------------------------
    def _referenced_keys(self, edge: Edge, restrict: Pred, tag: int | None = None,
                         with_pending: bool = False, semi_join: bool = False) -> sa.Select[Any]:
        """Distinct keys of policy rows (restricted by ``restrict``) that ``edge`` blocks.

        The same relation as :meth:`referenced_by` (a row of ``edge.child`` points at the
        policy row, or at one of its cascade rows, and is not removed earlier in this run),
        written as a join from the policy rows so that the database only visits the
        referencing rows of the rows asked about; with ``semi_join``, as ``EXISTS`` (each
        policy row once, no DISTINCT: see dialects.prefers_semi_join). The keys returned are
        the policy table's own values, never the child's copy (collations may compare unequal
        values equal).
        """
        t = self.table.alias("rt_t")
        member, conds = self._owned(edge.parent, t)
        child = self.schema.tables[edge.child].alias("rt_ref")
        conds = conds + [child.c[cc] == member.c[pc] for cc, pc in zip(edge.child_cols, edge.parent_cols, strict=True)]
        conds.append(sa.not_(self.removed_earlier(edge.child, child)))
        cols: list[sa.ColumnElement[Any]] = [t.c[self.key.name].label("rt_k")]
        if tag is not None:
            cols.append(sa.literal_column(str(int(tag))).label("rt_e"))
        if with_pending:
            cols.append(sa.case((self.pending(t), sa.literal_column("1")), else_=sa.literal_column("0")).label("rt_p"))
        if semi_join:
            return sa.select(*cols).where(restrict(t), sa.exists().where(*conds))
        return sa.select(*cols).where(*conds, restrict(t)).distinct()

    def blocked_among(self, conn: sa.Connection, keys: Sequence[Any],
                      key_filter: Callable[[sa.ColumnElement[Any]], sa.ColumnElement[bool]]) -> dict[Any, bool]:
        """Of the given keys, those that :meth:`blocked` holds for, each with whether it is still
        to anonymise (always False without ``on_referenced: anonymise``).

        One statement (a UNION over the blocking edges), evaluated in the caller's transaction.
        """
        if self.policy.action != "delete" or not keys:
            return {}
        edges = self.blocking_edges()
        if not edges:
            return {}
        with_pending = self.policy.on_referenced == "anonymise"
        selects = [self._referenced_keys(e, lambda t: key_filter(t.c[self.key.name]), with_pending=with_pending)
                   for e in edges]
        stmt = selects[0] if len(selects) == 1 else sa.union(*selects)
        return {row[0]: with_pending and bool(row[1]) for row in conn.execute(stmt)}

    def owned_filter(self, member: str, table: sa.FromClause,
                     policy_keys: Callable[[sa.ColumnElement[Any]], sa.ColumnElement[bool]]) -> sa.ColumnElement[bool]:
        """Rows of cascade table ``member`` that hang under the policy rows whose key passes ``policy_keys``."""
        edge = self.tree[member]
        parent = self.schema.tables[edge.parent]
        if edge.parent == self.policy.table:
            if len(edge.child_cols) == 1 and edge.parent_cols[0] == self.key.name:
                return policy_keys(table.c[edge.child_cols[0]])
            parent_filter = policy_keys(parent.c[self.key.name])
        else:
            parent_filter = self.owned_filter(edge.parent, parent, policy_keys)
        if len(edge.child_cols) == 1:
            return table.c[edge.child_cols[0]].in_(sa.select(parent.c[edge.parent_cols[0]]).where(parent_filter))
        return sa.tuple_(*[table.c[c] for c in edge.child_cols]).in_(
            sa.select(*[parent.c[c] for c in edge.parent_cols]).where(parent_filter)
        )

    def referencing_filter(self, edge: Edge, child: sa.FromClause,
                           policy_keys: Callable[[sa.ColumnElement[Any]], sa.ColumnElement[bool]]
                           ) -> sa.ColumnElement[bool]:
        """Rows of ``edge.child`` that point, through ``edge``, at a row removed with the policy
        rows whose key passes ``policy_keys`` (the row itself, or one of its cascade rows)."""
        parent = self.schema.tables[edge.parent]
        if edge.parent == self.policy.table:
            if len(edge.child_cols) == 1 and edge.parent_cols[0] == self.key.name:
                return policy_keys(child.c[edge.child_cols[0]])
            parent_filter = policy_keys(parent.c[self.key.name])
        else:
            parent_filter = self.owned_filter(edge.parent, parent, policy_keys)
        if len(edge.child_cols) == 1:
            return child.c[edge.child_cols[0]].in_(sa.select(parent.c[edge.parent_cols[0]]).where(parent_filter))
        return sa.tuple_(*[child.c[c] for c in edge.child_cols]).in_(
            sa.select(*[parent.c[c] for c in edge.parent_cols]).where(parent_filter)
        )

    @property
    def detaches(self) -> bool:
        return self.policy.action == "delete" and self.policy.on_referenced == "detach"

    def _detach_columns(self) -> list[sa.ScalarSelect[Any]]:
        """Per blocking edge, the kept rows that point at a due row and would be detached from it
        (their foreign key set to NULL): rows not removed earlier in this run."""
        t = self.table.alias("rt_d")
        columns = []
        for edge in self.blocking_edges():
            member, conds = self._owned(edge.parent, t)
            child = self.schema.tables[edge.child].alias("rt_dc")
            pairs = zip(edge.child_cols, edge.parent_cols, strict=True)
            conds = conds + [child.c[cc] == member.c[pc] for cc, pc in pairs]
            conds.append(sa.not_(self.removed_earlier(edge.child, child)))
            columns.append(sa.select(sa.func.count()).select_from(t).where(self.due_whole(t), *conds)
                           .scalar_subquery())
        return columns

    # -- counting ---------------------------------------------------------------------------
    def choose_access(self, conn: sa.Connection, total: int | None = None) -> None:
        """On a range-blind database, probe the ``after`` index: when more than a fifth of the
        table is past its term (a first run's backlog), have every later statement scan."""
        dialect = conn.dialect.name
        if not dialects.range_blind(dialect):
            return
        if total is None:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one())
        if not total:
            return
        after = self.table.c[self.policy.after]
        limit = max(1_000, total // 5)
        probe = sa.select(sa.literal(1)).where(
            after.is_not(None), _in_term_end(after, after, self.column_cutoff)
        ).limit(limit).subquery()
        found = conn.execute(sa.select(sa.func.count()).select_from(probe)).scalar_one()
        self.scan = dialect if found >= limit else None

    def choose_batch_access(self, counts: Counts) -> None:
        """Before the batches, on a range-blind database: walk the primary key rather than the
        ``after`` index when the due rows are many for their table.

        A batch takes the next due keys in key order. Through the ``after`` index SQLite visits
        every remaining due row and sorts them, for each batch: the batches together cost the
        square of the due rows over the batch size. Walking the key (``+after``) visits the
        table once over all batches. The walk wins above sqrt(2 x batch x table) due rows:
        10M accounts, 780,000 invoices due, 1.75 s per batch of ever fewer rows (the adaptive
        size shrinks towards a slow statement) against 0.1 s; 100 rows due a night keep the index.
        """
        if self.scan or not dialects.range_blind(self.schema.dialect) or not counts.total:
            return
        if counts.due * counts.due > 2 * self.policy.batch_size * counts.total:
            self.scan = self.schema.dialect

    def count(self, conn: sa.Connection, cascade: bool = False) -> Counts:
        """Total, held, due and deferred rows (with reasons and how many to anonymise instead);
        with ``cascade``, also the cascade rows removing the removable rows takes with them
        (``Counts.cascaded``, for the preview) and, with ``on_referenced: detach``, the rows that
        would be detached (``Counts.detached``)."""
        t = self.table
        one = sa.literal(1)
        total = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
        self.choose_access(conn, int(total))

        def tally(cond: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
            return sa.func.coalesce(sa.func.sum(sa.case((cond, one), else_=0)), 0)

        # One pass over the range the cut-off selects as stored. The readability check runs once
        # per row, and again only for held rows (held_match is tested first): an unreadable
        # value in the range is kept and counted; of the rest, held (per hold reason) or due.
        # Read once over the whole range: holds through links may be key lists (_linked_hold).
        reasons = self.hold_reasons(t, whole=True)
        readable = self.readable(t)
        unreadable, held = sa.not_(readable), self.held_match(t, whole=True)
        # Only where the tally takes them apart: elsewhere the expressions would be built for nothing.
        dialect = conn.dialect.name
        grouped = dialects.tallies_by_groups(dialect)
        terms = self._hold_terms(t, whole=True) if dialects.flags_rows_apart(dialect) or grouped else []
        linked = any(not is_own for _r, _c, is_own in terms)
        if linked and grouped:
            row = self._tally_grouped(conn, t, terms, readable, len(reasons) > 1)
        elif linked:
            row = conn.execute(self._tally_flags(t, terms, readable, len(reasons) > 1)).one()
        else:
            row = conn.execute(
                sa.select(sa.func.count(), tally(held), tally(unreadable), tally(sa.and_(held, unreadable)),
                          *([tally(sa.and_(c, readable)) for c in reasons.values()] if len(reasons) > 1 else []))
                .select_from(t).where(self.past_term(t, readable=False))
            ).one()
        in_range, held_all, bad, held_bad = (int(v) for v in row[:4])
        # Also the values that sort after every date ('yesterday', infinity): a range on the
        # index, so that `unreadable` misses only malformed dates later than the cut-off.
        after = self.table.c[self.policy.after]
        beyond = int(conn.execute(sa.select(sa.func.count()).select_from(t).where(
            dialects.beyond_dates(after, after), *[_match(t, c, v) for c, v in self.policy.where.items()])
        ).scalar_one())
        counts = Counts(total=int(total), held=held_all - held_bad, due=in_range - held_all - (bad - held_bad),
                        deferred=0, unreadable=bad + beyond)
        per_reason = [int(n) for n in row[4:]] if len(reasons) > 1 else [counts.held] * len(reasons)
        counts.held_reasons = {name: n for name, n in zip(reasons, per_reason, strict=True) if n}
        edges = self.blocking_edges() if self.policy.action == "delete" else []
        if self.detaches and edges and counts.due:
            # Nothing is deferred: every due row goes, after the rows pointing at it are detached.
            # Counted for the preview only: a real run reports the rows it detached.
            if not cascade:
                return counts
            found = conn.execute(sa.select(*self._detach_columns(),
                                           *(self._cascade_columns(self.due_whole) if cascade else []))).one()
            for edge, n in zip(edges, found, strict=False):
                if n:
                    name = f"{edge.child}.{','.join(edge.child_cols)}"
                    counts.detached_columns[name] = counts.detached_columns.get(name, 0) + int(n)
            counts.detached = sum(counts.detached_columns.values())
            if cascade and self.tree:
                counts.cascaded = {m: int(n) for m, n in zip(self.tree, found[len(edges):], strict=True)}
            return counts
        if not edges or not counts.due:
            if cascade and self.tree:
                found = conn.execute(sa.select(*self._cascade_columns(self.due_whole))).one()
                counts.cascaded = {m: int(n) for m, n in zip(self.tree, found, strict=True)}
            return counts
        # Per blocking edge the distinct due keys it holds back; the database takes the union
        # (a key held back by two tables is deferred once) and counts per edge for the reasons.
        anonymise = self.policy.on_referenced == "anonymise"
        semi = dialects.prefers_semi_join(conn.dialect.name)
        parts = [self._referenced_keys(e, self.due_whole, tag=i, with_pending=anonymise, semi_join=semi)
                 for i, e in enumerate(edges)]
        u = (parts[0] if len(parts) == 1 else sa.union_all(*parts)).subquery("rt_u")
        per_edge = [sa.func.max(sa.case((u.c.rt_e == i, 1), else_=0)).label(f"rt_e{i}") for i in range(len(edges))]
        per_key_cols = [u.c.rt_k, *per_edge]
        if anonymise:
            per_key_cols.append(sa.func.max(u.c.rt_p).label("rt_p"))
        # A CTE: with cascade counts it is read twice, and the databases compute it once.
        per_key = sa.select(*per_key_cols).group_by(u.c.rt_k).cte("rt_pk")
        sums: list[sa.ColumnElement[Any]] = [
            sa.func.coalesce(sa.func.sum(per_key.c[f"rt_e{i}"]), 0) for i in range(len(edges))
        ]
        if anonymise:
            sums.append(sa.func.coalesce(sa.func.sum(per_key.c.rt_p), 0))
        shared_cte = dialects.computes_cte_once(conn.dialect.name)
        if cascade and self.tree:
            if shared_cte:
                # Removable = due and not among the held-back keys just collected.
                sums += self._cascade_columns(
                    lambda r: sa.and_(self.due_whole(r), r.c[self.key.name].not_in(sa.select(per_key.c.rt_k)))
                )
            else:
                # The CTE would be computed again for the NOT IN: count the held-back keys' cascade
                # rows per key instead, and subtract them from the due rows' below.
                sums += self._cascade_per_key(per_key.c.rt_k)
        agg = conn.execute(sa.select(sa.func.count(), *sums).select_from(per_key)).one()
        counts.deferred = int(agg[0])
        for i, edge in enumerate(edges):
            n = int(agg[1 + i])
            if n:
                counts.reasons[edge.child] = counts.reasons.get(edge.child, 0) + n
        if anonymise:
            counts.to_anonymise = int(agg[1 + len(edges)])
        if cascade and self.tree:
            found = agg[1 + len(edges) + int(anonymise):]
            if not shared_cte:
                # Every cascade row hangs under one policy row, and the held-back keys are due
                # keys: the removable rows' cascade = the due rows' minus the held-back rows'.
                of_due = conn.execute(sa.select(*self._cascade_columns(self.due_whole))).one()
                found = [int(d) - int(h or 0) for d, h in zip(of_due, found, strict=True)]
            counts.cascaded = {m: int(n) for m, n in zip(self.tree, found, strict=True)}
        return counts

    def _hold_terms(self, t: sa.FromClause, whole: bool = False) -> list[tuple[str, sa.ColumnElement[bool], bool]]:
        """Every hold condition apart, as (reason, condition, on the row's own columns): the
        policy's `exclude` columns, one EXISTS per followed link and held column, the registry.
        A row is held (:meth:`held_match`) exactly when one of them is true: an EXISTS over
        a link with "column a or column b" is true when the EXISTS for a or the one for b is.
        ``whole``: see :meth:`_linked_hold`."""
        terms: list[tuple[str, sa.ColumnElement[bool], bool]] = [
            (f"{self.policy.table}.{c}", _match(t, c, v), True) for c, v in self.policy.exclude.items()]
        for other, edge in self.hold_links:
            terms += [(f"{other.table}.{c}", self._linked_hold(t, other, edge, [c], whole=whole), False)
                      for c in other.exclude]
        registry = self.registry_hold(t)
        if registry is not None:
            terms.append((holds.REASON, registry, False))
        return terms

    def _tally_flags(self, t: sa.FromClause, terms: list[tuple[str, sa.ColumnElement[bool], bool]],
                     readable: sa.ColumnElement[bool], per_reason: bool) -> sa.Select[Any]:
        """The count's tally (rows in range, held, unreadable, held and unreadable, and per hold
        reason the readable ones it holds) with each hold condition computed once per row, in a
        subquery the planner may not merge into the aggregate (see dialects.flags_rows_apart)."""
        one, zero = sa.literal_column("1"), sa.literal_column("0")
        flags = [sa.case((cond, one), else_=zero).label(f"rt_h{i}") for i, (_r, cond, _o) in enumerate(terms)]
        rows = (sa.select(*flags, sa.case((readable, one), else_=zero).label("rt_ok"),
                          sa.case((sa.not_(readable), one), else_=zero).label("rt_bad"))
                .select_from(t).where(self.past_term(t, readable=False))
                .offset(sa.literal_column("0")).subquery("rt_rows"))

        def any_of(indexes: list[int]) -> sa.ColumnElement[bool]:
            return sa.or_(*[rows.c[f"rt_h{i}"] == one for i in indexes])

        def tally(cond: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
            return sa.func.coalesce(sa.func.sum(sa.case((cond, one), else_=zero)), 0)

        held = any_of(list(range(len(terms))))
        bad, ok = rows.c.rt_bad == one, rows.c.rt_ok == one
        by_reason = _terms_by_reason(terms)
        return sa.select(sa.func.count(), tally(held), tally(bad), tally(sa.and_(held, bad)),
                         *([tally(sa.and_(any_of(ix), ok)) for ix in by_reason.values()] if per_reason else [])
                         ).select_from(rows)

    def _tally_grouped(self, conn: sa.Connection, t: sa.FromClause,
                       terms: list[tuple[str, sa.ColumnElement[bool], bool]], readable: sa.ColumnElement[bool],
                       per_reason: bool) -> tuple[int, ...]:
        """The tally of :meth:`_tally_flags`, each hold condition computed once per row by
        grouping the rows by the conditions (dialects.tallies_by_groups): at most 2 ** (terms + 2)
        groups, summed here. The same numbers: a group counts in a sum exactly when its flags
        satisfy the sum's condition."""
        one, zero = sa.literal_column("1"), sa.literal_column("0")
        flags = [sa.case((cond, one), else_=zero) for _r, cond, _o in terms]
        flags += [sa.case((readable, one), else_=zero), sa.case((sa.not_(readable), one), else_=zero)]
        # By position: a label could name a column of the table, which MariaDB would group by.
        stmt = (sa.select(*flags, sa.func.count()).select_from(t).where(self.past_term(t, readable=False))
                .group_by(*[sa.literal_column(str(i + 1)) for i in range(len(flags))]))
        by_reason = _terms_by_reason(terms)
        in_range = held = bad = held_bad = 0
        per = dict.fromkeys(by_reason, 0)
        for *found, n in conn.execute(stmt):
            hold, ok, unreadable = [bool(int(f)) for f in found[:-2]], int(found[-2]) == 1, int(found[-1]) == 1
            n = int(n)
            in_range += n
            held += n if any(hold) else 0
            bad += n if unreadable else 0
            held_bad += n if any(hold) and unreadable else 0
            for reason, ix in by_reason.items():
                per[reason] += n if ok and any(hold[i] for i in ix) else 0
        return (in_range, held, bad, held_bad, *(per.values() if per_reason else ()))

    def _cascade_per_key(self, key: sa.ColumnElement[Any]) -> list[sa.ColumnElement[Any]]:
        """Per cascade table, the sum over the rows of ``key``'s table of the cascade rows under
        each key: a correlated count through the foreign-key indexes."""
        t = self.table.alias("rt_h")
        return [sa.func.coalesce(sa.func.sum(
            sa.select(sa.func.count()).select_from(t).where(*conds, t.c[self.key.name] == key).scalar_subquery()
        ), 0) for conds in (self._owned(member, t)[1] for member in self.tree)]

    def _cascade_columns(self, removable: Pred) -> list[sa.ScalarSelect[Any]]:
        """Per cascade table, the number of its rows under the rows ``removable`` selects.

        Driven from the removable rows (the due index, then each child's foreign-key index), as
        a join: every cascade row hangs under exactly one row (foreign keys point at unique
        columns), so count(*) over the join counts each of them once.
        """
        t = self.table.alias("rt_r")
        columns = []
        for member in self.tree:
            _alias, conds = self._owned(member, t)
            columns.append(sa.select(sa.func.count()).select_from(t).where(*conds, removable(t)).scalar_subquery())
        return columns

    def sample(self, conn: sa.Connection, counts: Counts, n: int = SAMPLE_SIZE) -> list[Any]:
        """The first keys the run would change: due, and not blocked (or blocked but still to anonymise).

        ``counts`` says how many there are, so the walk over the due keys stops as soon as it has
        them all (or ``n``), and never starts when there are none: after a first run most due
        rows of a policy may be deferred, and walking them all would take longer than counting.
        """
        t = self.table
        dialect = conn.dialect.name
        want = min(n, self.touched(counts))
        found: list[Any] = []
        last: Any = None
        chunk = 100
        while len(found) < want:
            query = sa.select(self.key).where(self.due(t, past_key=last))
            if last is not None:
                query = query.where(self.key > last)
            keys = [r[0] for r in conn.execute(query.order_by(self.key).limit(chunk))]
            if not keys:
                break
            if self.detaches:  # every due row goes (what points at it is detached first)
                found += keys
                last = keys[-1]
                continue
            blocked = self.blocked_among(conn, keys, functools.partial(dialects.key_in, keys=keys, dialect=dialect))
            anonymise = self.policy.on_referenced == "anonymise"
            found += [k for k in keys if k not in blocked or (anonymise and blocked[k])]
            last = keys[-1]
            chunk = min(chunk * 4, 50_000)
        return [_jsonable(k) for k in found[:want]]

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
    # Rows kept because ``after`` is not a date: all but malformed dates later than the cut-off.
    unreadable: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    cascaded: dict[str, int] = field(default_factory=dict)
    # Past-term rows kept by a hold, per hold flag ("accounts.legal_hold"); a row may have several.
    held_reasons: dict[str, int] = field(default_factory=dict)
    # on_referenced: detach: kept rows whose foreign key is set to NULL, per "table.column".
    detached: int = 0
    detached_columns: dict[str, int] = field(default_factory=dict)


def _terms_by_reason(terms: list[tuple[str, sa.ColumnElement[bool], bool]]) -> dict[str, list[int]]:
    """Per hold reason, the positions of its conditions among :meth:`Plan._hold_terms`' terms."""
    by_reason: dict[str, list[int]] = {}
    for i, (reason, _c, _o) in enumerate(terms):
        by_reason.setdefault(reason, []).append(i)
    return by_reason


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (int, str, float)) or value is None:
        return value
    return str(value)


def never_in_scope(table: sa.FromClause, policies: Sequence[Policy]) -> sa.ColumnElement[bool] | None:
    """Rows of a policy table that no policy of the file on it will ever remove: outside the
    `where` of every one of them, so their event can never make them due as the file stands
    (an open ticket under `where: {status: closed}`). None when some policy has no `where`.

    A NULL `after` is not counted: that event may still happen (a customer who has not
    deregistered). The definition is deliberately this simple; docs/policy-file.md.
    """
    if not policies or any(not p.where for p in policies):
        return None
    # _match is never NULL, so the NOT of the conjunction is exact (a NULL column is out of scope).
    return sa.and_(*[sa.not_(sa.and_(*[_match(table, c, v) for c, v in p.where.items()])) for p in policies])


def uncovered_links(schema: Schema, policies: Sequence[Policy]) -> dict[str, list[Edge]]:
    """Per policy table, the foreign keys pointing at it (or at its cascade tables) from tables
    that no policy covers (neither a policy's table nor a cascade table): their rows, which may
    hold personal data of the same person, have no end in the file."""
    covered = {p.table for p in policies} | {c for p in policies for c in p.cascade}
    out: dict[str, list[Edge]] = {}
    for table in dict.fromkeys(p.table for p in policies):
        # Only tables that point at a person's rows (orders at accounts); the tables a policy
        # table points at are mostly lookups (products, countries).
        members = {table} | {c for p in policies if p.table == table for c in p.cascade}
        for e in schema.edges:
            if e.parent in members and e.child not in covered:
                out.setdefault(table, []).append(e)
    return out


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

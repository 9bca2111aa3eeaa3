"""The re-identification check: what an anonymise policy's rows would look like to someone
trying to find a person in them, measured in SQL before anything is written.

For each policy that anonymises, over **every** row it has anonymised (earlier runs) or will
anonymise tonight, with the values those rows will hold once tonight's run is done:

- ``k``: the size of the smallest group of such rows that share the same values in every
  *quasi-identifier*, and ``below_k``: how many rows sit in groups smaller than the policy's
  ``k_anonymity`` (default 5). One row alone in its group can be singled out by whoever knows
  those values about a person (when they deregistered, the year they were born).
- ``linkable``: how many of the rows are still joined by a foreign key to a row that is kept
  and holds personal data (an invoice with the customer's name pointing at the anonymised
  account; an anonymised order still pointing at a live account). Such a row is not
  anonymous: the join gives the person back.

The quasi-identifiers are the columns that keep information from the old row: every ``keep``
column, every generalised field (at its generalised value), and the ``after`` column (as
stored, or generalised when it is in ``fields``). Not counted: columns set to NULL, to a
constant (``redact``) or to a fresh fake (they say nothing about the row they replaced), the
key (a surrogate; what it links to is ``linkable``), and the ``marker`` (see the docs: it
tells the night a row was anonymised).

Personal columns of a table: the file's ``personal`` list for it, and the columns any
anonymising policy names in ``fields``. A row holds personal data when one of them is not
NULL and the row is not (or will not be, tonight) anonymised by its own table's policy.

Rows "to be anonymised tonight" are the ones the run would anonymise: due and not held for
``action: anonymise``; due, not held and still referenced for ``on_referenced: anonymise``.
Every generalisation is idempotent, so one expression gives the future value of old and new
rows alike, and one GROUP BY computes ``k``. A policy that fails (``below_k > 0`` or
``linkable > 0``) is blocked before its first batch (exit 3) unless it says
``reidentification: warn``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from retention.anonymisation.strategies import Generalise
from retention.databases import dialects
from retention.engine.planning import _in_term_end as in_term_end
from retention.engine.planning import _match as match

if TYPE_CHECKING:
    from retention.engine.planning import Plan

Personal = Callable[[str], list[str]]


@dataclass
class Reidentification:
    rows: int
    k: int | None
    below_k: int
    linkable: int
    k_anonymity: int
    quasi_identifiers: list[str] = field(default_factory=list)
    links: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.below_k == 0 and self.linkable == 0

    def as_dict(self) -> dict[str, Any]:
        """For the JSON output and ``policy.end``: integers, names and a verdict, never a value."""
        return {"k": self.k, "below_k": self.below_k, "linkable": self.linkable, "rows": self.rows,
                "k_anonymity": self.k_anonymity, "quasi_identifiers": list(self.quasi_identifiers),
                "links": dict(self.links), "passed": self.passed}

    def summary(self) -> str:
        if not self.rows:
            return "no anonymised rows"
        qi = ", ".join(self.quasi_identifiers) or "nothing"
        return (f"k = {self.k} (needs {self.k_anonymity}) on {qi}; {self.below_k} of {self.rows} anonymised "
                f"row(s) in smaller groups; {self.linkable} still linked to personal data")

    def failure(self) -> str:
        reasons = []
        if self.below_k:
            reasons.append(f"{self.below_k} of {self.rows} anonymised row(s) share their "
                           f"{', '.join(self.quasi_identifiers) or 'values'} with fewer than "
                           f"{self.k_anonymity - 1} other(s) (k = {self.k}, k_anonymity {self.k_anonymity})")
        if self.linkable:
            via = ", ".join(f"{n} via {t}" for t, n in self.links.items())
            reasons.append(f"{self.linkable} still linked by a foreign key to kept rows holding personal data ({via})")
        return "re-identification check failed: " + "; ".join(reasons)


def quasi_identifiers(plan: Plan, t: sa.FromClause, dialect: str) -> list[tuple[str, sa.ColumnElement[Any]]]:
    """(column, its value once anonymised) for each column that keeps information, in table order."""
    policy = plan.policy
    fields = plan.strategies
    out: list[tuple[str, sa.ColumnElement[Any]]] = []
    for col in plan.table.c:
        name = col.name
        strategy = fields.get(name)
        if isinstance(strategy, Generalise):
            out.append((name, dialects.generalise(t.c[name], strategy.grain, dialect, strategy.step)))
        elif strategy is None and (name in policy.keep or name == policy.after):
            out.append((name, t.c[name]))
    return out


def anonymised_after_run(plan: Plan, t: sa.FromClause, let_through: bool = False,
                         blocked: sa.ColumnElement[bool] | None = None) -> sa.ColumnElement[bool]:
    """Rows of ``t`` that the policy has anonymised, or will anonymise in this run (``let_through``:
    as if a guard that blocked it tonight had let it through). ``blocked``: :meth:`Plan.blocked`
    in another form (a flag of :meth:`Plan.blocking_keys` outer-joined to ``t``)."""
    policy = plan.policy
    # Off the index on a backlog, as the counts before it: walking the `after` index over a third of
    # a 1M-row table and fetching each row took 3.5 s on SQLite, a scan 0.9 s.
    after = plan.after(t)
    # Past the term and in scope: Plan.past_term without its "still to anonymise" condition.
    base = [after.is_not(None), in_term_end(after, plan.table.c[policy.after], plan.cutoff),
            *[match(t, c, v) for c, v in policy.where.items()]]
    done = sa.not_(plan.pending(t))
    if plan.blocked_by_guard and not let_through:  # nothing of the policy happens tonight
        return sa.and_(*base, done)
    if policy.action == "anonymise":
        # Held rows keep what they have; every other row is (or becomes) anonymised.
        return sa.and_(*base, sa.or_(done, plan.not_held(t)))
    # A delete policy: a due row still referenced is (or becomes) anonymised, one referenced no
    # more is deleted tonight, even if an earlier run anonymised it; a held row keeps what it has.
    blocked = plan.blocked(t) if blocked is None else blocked
    return sa.and_(*base, sa.or_(sa.and_(plan.not_held(t), blocked), sa.and_(plan.held_match(t), done)))


def _anonymise_plans(plans: Sequence[Plan], plan: Plan, table: str) -> list[Plan]:
    return [p for p in plans if p.database == plan.database and p.policy.table == table and p.policy.anonymises]


def _holds_personal(plan: Plan, plans: Sequence[Plan], table: str, alias: sa.FromClause,
                    personal: Personal) -> sa.ColumnElement[bool] | None:
    cols = [c for c in personal(table) if c in alias.c]
    if not cols:
        return None
    cond: list[sa.ColumnElement[bool]] = [sa.or_(*[alias.c[c].is_not(None) for c in cols])]
    for other in _anonymise_plans(plans, plan, table):
        if other.policy.fields:
            cond.append(sa.not_(anonymised_after_run(other, alias)))
    return sa.and_(*cond)


@dataclass
class _Link:
    """One foreign key joining the policy's rows to rows of ``table`` that hold personal data:
    ``keys`` is the distinct key values of those rows, to be outer-joined on ``on``."""

    table: str
    keys: sa.Subquery
    on: sa.ColumnElement[bool]
    exists: sa.ColumnElement[bool]

    @property
    def found(self) -> sa.ColumnElement[bool]:
        return self.keys.c.rt_k0.is_not(None)


def _links(plan: Plan, plans: Sequence[Plan], t: sa.FromClause, personal: Personal) -> list[_Link]:
    """Every foreign key, either direction, that joins an anonymised row to kept personal data.

    Both as distinct keys to outer-join and as an EXISTS per row; :func:`dialects.joins_links`
    chooses.
    """
    schema, table = plan.schema, plan.policy.table
    fields = plan.policy.fields or {}
    out: list[_Link] = []
    for edge in schema.edges:
        if edge.child == edge.parent or (edge.parent != table and edge.child != table):
            continue
        if edge.parent == table:  # a row elsewhere points at the anonymised row
            other_name, mine, theirs = edge.child, edge.parent_cols, edge.child_cols
        else:  # the anonymised row points elsewhere, unless its foreign key is anonymised too
            if any(c in fields for c in edge.child_cols):
                continue
            other_name, mine, theirs = edge.parent, edge.child_cols, edge.parent_cols
        if other_name not in schema.tables:
            continue
        other = schema.tables[other_name].alias(f"rt_other_{len(out)}")
        holds = _holds_personal(plan, plans, other_name, other, personal)
        if holds is None:
            continue
        conds = [holds, *[other.c[o].is_not(None) for o in theirs]]
        if edge.parent == table:
            conds.append(sa.not_(plan.removed_earlier(other_name, other)))
        keys = (sa.select(*[other.c[o].label(f"rt_k{j}") for j, o in enumerate(theirs)]).where(*conds)
                .distinct().subquery(f"rt_link_{len(out)}"))
        on = sa.and_(*[keys.c[f"rt_k{j}"] == t.c[m] for j, m in enumerate(mine)])
        exists = sa.exists().where(*conds, *[other.c[o] == t.c[m] for m, o in zip(mine, theirs, strict=True)])
        out.append(_Link(other_name, keys, on, exists))
    return out


def measure(conn: sa.Connection, plan: Plan, plans: Sequence[Plan], personal: Personal,
            let_through: bool = False) -> Reidentification:
    """The check for one anonymising policy, in the caller's (read-only or not yet written) transaction.

    One statement: the rows with their quasi-identifiers and a flag per linking foreign key (an
    outer join to the keys of kept rows holding personal data), one GROUP BY over the
    quasi-identifiers (on MariaDB each row's group size as a window, dialects.groups_by_window),
    and the sums over the groups (``k``, ``below_k``, ``rows``, ``linkable`` and per table).
    """
    t = plan.table
    dialect = conn.dialect.name
    threshold = plan.policy.k_anonymity
    qis = quasi_identifiers(plan, t, dialect)
    joined: sa.FromClause = t
    blocking = plan.blocking_keys() if dialects.joins_references(dialect) else None
    if blocking is not None and (let_through or not plan.blocked_by_guard):
        joined = joined.outerjoin(blocking, blocking.c.rt_k == t.c[plan.key.name])
        member = anonymised_after_run(plan, t, let_through, blocked=blocking.c.rt_k.is_not(None))
    else:
        member = anonymised_after_run(plan, t, let_through)
    links = _links(plan, plans, t, personal)
    one, zero = sa.literal_column("1"), sa.literal_column("0")
    # Per row, one flag per linking foreign key; per group, how many rows have any flag set.
    if dialects.joins_links(dialect):
        flags = [sa.case((link.found, one), else_=zero) for link in links]
        for link in links:
            joined = joined.outerjoin(link.keys, link.on)
    else:
        flags = [sa.case((link.exists, one), else_=zero) for link in links]
    inner = (sa.select(*[e.label(f"rt_q{i}") for i, (_n, e) in enumerate(qis)],
                       *[f.label(f"rt_l{i}") for i, f in enumerate(flags)])
             .select_from(joined).where(member).subquery("rt_rows"))
    row_flags = [inner.c[f"rt_l{i}"] for i in range(len(flags))]
    linked = sa.case((sa.or_(*[f == 1 for f in row_flags]), one), else_=zero) if row_flags else zero
    total = sa.func.coalesce
    qi_columns = [inner.c[f"rt_q{i}"] for i in range(len(qis))]
    if dialects.groups_by_window(dialect):
        # Each row with the size of its group: the sums below weigh every row once.
        sized = (sa.select(sa.func.count().over(partition_by=qi_columns).label("n"), linked.label("l"),
                           *[f.label(f"rt_s{i}") for i, f in enumerate(row_flags)])
                 .select_from(inner).subquery("rt_sized"))
        weight: sa.ColumnElement[Any] = one
    else:
        sized = (sa.select(sa.func.count().label("n"), sa.func.sum(linked).label("l"),
                           *[sa.func.sum(f).label(f"rt_s{i}") for i, f in enumerate(row_flags)])
                 .select_from(inner).group_by(*qi_columns).subquery("rt_groups"))
        weight = sized.c.n  # a group stands for its rows
    n = sized.c.n
    stmt = sa.select(
        sa.func.min(n),
        total(sa.func.sum(sa.case((n < threshold, weight), else_=zero)), 0),
        total(sa.func.sum(weight), 0),
        total(sa.func.sum(sized.c.l), 0),
        *[total(sa.func.sum(sized.c[f"rt_s{i}"]), 0) for i in range(len(flags))],
    ).select_from(sized)
    found = conn.execute(stmt).one()
    k, below, rows, linkable = found[:4]
    per_table: dict[str, int] = {}
    for link, count in zip(links, found[4:], strict=True):
        if count:
            per_table[link.table] = per_table.get(link.table, 0) + int(count)
    return Reidentification(rows=int(rows), k=int(k) if rows else None, below_k=int(below),
                            linkable=int(linkable), k_anonymity=threshold, quasi_identifiers=[q for q, _e in qis],
                            links=per_table)

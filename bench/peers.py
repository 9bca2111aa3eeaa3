"""What `retention run` is compared with: one raw SQL statement, and a hand-written ORM loop.

Both select exactly the rows the bench policies select (same cut-off, same WHERE, the legal
holds of the file's other policies followed over the foreign keys as `retention` does), so the
row counts can be checked against what `retention run` reports.

- ``raw_*``: the database doing the work in one statement per table, in one transaction
  (delete with cascade: children with one statement, then parents with one statement).
- ``orm_*``: what a developer writes by hand with the SQLAlchemy ORM: load the due objects,
  set fields or ``session.delete`` them (children via ``cascade="all, delete-orphan"``),
  commit per 1,000. Faker is called per row, as such a script does.

Run as a script, it executes one ORM peer in its own process (so its time and memory can be
capped and measured) and prints one JSON line: ``{"rows": N, "seconds": S}``.

    python bench/peers.py orm --url URL --kind delete|anon_const|anon_fake --as-of 2026-11-24T03:00:00
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from retention.demo import shop_metadata
from retention.policy.dates import cutoff, parse_as_of, parse_period

TIMEZONE = "Europe/Amsterdam"
REDACTED = "[verwijderd]"  # the `redact` strategy's default text
ORM_CHUNK = 1_000

# The bench policies (see run.py): kind -> (table, child table, after, retain, align)
KINDS: dict[str, tuple[str, str | None, str, str, str]] = {
    "delete": ("tickets", "ticket_messages", "closed_at", "2 years", "none"),  # correspondence
    "delete_invoices": ("invoices", "invoice_lines", "issued_at", "7 years", "end_of_year"),
    "anon_const": ("accounts", None, "deregistered_at", "24 months", "none"),
    "anon_fake": ("accounts", None, "deregistered_at", "24 months", "none"),
}
PARENT_KEY = {"ticket_messages": "ticket_id", "invoice_lines": "invoice_id"}


def make_engine(url: str) -> sa.Engine:
    """A plain engine; SQLite gets foreign keys enforced, as `retention` has them."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _fk(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


@dataclass
class Work:
    rows: int
    children: int
    seconds: float


def _cut(kind: str, as_of: str) -> Any:
    _table, _child, _after, retain, align = KINDS[kind]
    c = cutoff(parse_as_of(as_of, TIMEZONE), parse_period(retain), align, TIMEZONE)  # type: ignore[arg-type]
    return c.date if kind == "delete_invoices" else c.local  # issued_at is a DATE, the others DATETIMEs


def not_held(t: sa.Table) -> sa.ColumnElement[bool]:
    return sa.or_(t.c.legal_hold.is_(None), t.c.legal_hold != sa.true())


def no_linked_hold(other: sa.Table, link: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """Holds follow foreign keys (`holds: linked`, the default): a row linked to a row that
    another bench policy's `exclude: {legal_hold: true}` holds is held too. The bench file has
    such policies on accounts and tickets, so the peers must leave those rows alone as well."""
    return sa.not_(sa.exists().where(link, other.c.legal_hold.is_not(None), other.c.legal_hold == sa.true()))


def due_where(kind: str, t: sa.Table, as_of: str) -> sa.ColumnElement[bool]:
    cut = _cut(kind, as_of)
    accounts, tickets = t.metadata.tables["accounts"], t.metadata.tables["tickets"]
    if kind == "delete_invoices":  # their account may be on legal hold (accounts policies' exclude)
        acc = accounts.alias("held_acc")
        return sa.and_(t.c.issued_at.is_not(None), t.c.issued_at <= cut,
                       no_linked_hold(acc, acc.c.id == t.c.account_id))
    if kind == "delete":  # closed tickets, not on legal hold, nor their account
        acc = accounts.alias("held_acc")
        return sa.and_(t.c.closed_at.is_not(None), t.c.closed_at <= cut, t.c.status == "closed", not_held(t),
                       no_linked_hold(acc, acc.c.id == t.c.account_id))
    # accounts: past term, not on legal hold nor with a ticket on legal hold (the correspondence
    # policy's exclude), not yet anonymised (street not yet redacted)
    tk = tickets.alias("held_tk")
    return sa.and_(
        t.c.deregistered_at.is_not(None),
        t.c.deregistered_at <= cut,
        not_held(t),
        no_linked_hold(tk, tk.c.account_id == t.c.id),
        sa.or_(t.c.street.is_(None), t.c.street != REDACTED),
    )


def _year_start(col: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    if dialect == "sqlite":
        return sa.func.date(col, "start of year")
    if dialect == "postgresql":
        return sa.cast(sa.func.date_trunc("year", col), sa.Date)
    return sa.func.makedate(sa.func.year(col), 1)


def raw(engine: sa.Engine, kind: str, as_of: str, secure_delete: bool = False) -> Work:
    """One statement per table in one transaction; timed from BEGIN to COMMIT."""
    md = shop_metadata()
    dialect = engine.dialect.name
    with engine.connect() as conn:  # connect outside the timing
        if secure_delete and dialect == "sqlite":
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        conn.commit()
        t0 = time.perf_counter()
        children = 0
        with conn.begin():
            if kind.startswith("delete"):
                table, child_name = KINDS[kind][0], KINDS[kind][1]
                parent, child = md.tables[table], md.tables[child_name]  # type: ignore[index]
                where = due_where(kind, parent, as_of)
                fk = child.c[PARENT_KEY[child.name]]
                if dialect == "mysql":
                    # MariaDB 10.x runs `DELETE ... WHERE fk IN (SELECT ...)` as a dependent subquery per
                    # child row (no semi-join for single-table DELETE); the statement a MariaDB user
                    # writes is the multi-table DELETE ... USING join.
                    children = conn.execute(child.delete().where(fk == parent.c.id, where)).rowcount
                else:
                    children = conn.execute(
                        child.delete().where(fk.in_(sa.select(parent.c.id).where(where)))
                    ).rowcount
                rows = conn.execute(parent.delete().where(where)).rowcount
            else:
                acc = md.tables["accounts"]
                if kind == "anon_const":
                    values: dict[str, Any] = {
                        "phone": None, "street": REDACTED, "city": None,
                        "postcode": sa.func.substr(acc.c.postcode, 1, 4),
                        "birth_date": _year_start(acc.c.birth_date, dialect),
                    }
                else:  # the constant UPDATE of the columns the fake policy writes
                    values = {"first_name": "Anoniem", "last_name": "Anoniem",
                              "email": "anoniem@example.invalid", "street": REDACTED}
                rows = conn.execute(acc.update().where(due_where(kind, acc, as_of)).values(values)).rowcount
        seconds = time.perf_counter() - t0
    return Work(rows=rows, children=children, seconds=seconds)


def orm_peer(engine: sa.Engine, kind: str, as_of: str) -> Work:
    """The hand-written ORM loop: load due objects per 1,000, change or delete them, commit."""
    md = shop_metadata()
    reg = orm.registry()

    class InvoiceLine:
        pass

    class Invoice:
        pass

    class TicketMessage:
        pass

    class Ticket:
        pass

    class Account:
        pass

    reg.map_imperatively(InvoiceLine, md.tables["invoice_lines"])
    reg.map_imperatively(Invoice, md.tables["invoices"], properties={
        "children": orm.relationship(InvoiceLine, cascade="all, delete-orphan"),
    })
    reg.map_imperatively(TicketMessage, md.tables["ticket_messages"])
    reg.map_imperatively(Ticket, md.tables["tickets"], properties={
        "children": orm.relationship(TicketMessage, cascade="all, delete-orphan"),
    })
    reg.map_imperatively(Account, md.tables["accounts"])
    cls: Any = {"delete": Ticket, "delete_invoices": Invoice}.get(kind, Account)
    faker = None
    if kind == "anon_fake":
        from faker import Faker

        faker = Faker("nl_NL")

    t0 = time.perf_counter()
    children = 0
    with orm.Session(engine) as session:
        table = md.tables[KINDS[kind][0]]
        ids = session.scalars(sa.select(table.c.id).where(due_where(kind, table, as_of)).order_by(table.c.id)).all()
        for i in range(0, len(ids), ORM_CHUNK):
            chunk = ids[i:i + ORM_CHUNK]
            query = sa.select(cls).where(table.c.id.in_(chunk))
            if kind.startswith("delete"):
                query = query.options(orm.selectinload(cls.children))
            for obj in session.scalars(query):
                if kind.startswith("delete"):
                    children += len(obj.children)
                    session.delete(obj)
                elif kind == "anon_const":
                    obj.phone = None
                    obj.street = REDACTED
                    obj.city = None
                    obj.postcode = obj.postcode[:4] if obj.postcode else obj.postcode
                    obj.birth_date = obj.birth_date.replace(month=1, day=1) if obj.birth_date else None
                else:
                    assert faker is not None
                    obj.first_name = faker.first_name()
                    obj.last_name = faker.last_name()
                    obj.email = faker.email()
                    obj.street = REDACTED
            session.commit()
    return Work(rows=len(ids), children=children, seconds=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["orm", "raw"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--kind", required=True, choices=sorted(KINDS))
    ap.add_argument("--as-of", required=True)
    args = ap.parse_args(argv)
    engine = make_engine(args.url)
    try:
        work = orm_peer(engine, args.kind, args.as_of) if args.what == "orm" else raw(engine, args.kind, args.as_of)
    finally:
        engine.dispose()
    print(json.dumps({"rows": work.rows, "children": work.children, "seconds": work.seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

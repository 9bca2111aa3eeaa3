"""The count's hold terms: a row is held when any hold says so (its own flag, a linked row's
flag, the registry), counted once in `held` and once per reason; two policies on one table with
the same `exclude` hold through one condition. PostgreSQL counts them from a fenced subquery
of per-row flags (dialects.flags_rows_apart), MariaDB from the rows grouped by their flags
(dialects.tallies_by_groups); every database must agree with plain SQL, at the term's boundary
too (a row at the cut-off is due, one a second later is not counted at all), and a held row
whose date is unreadable is counted as unreadable, not as held.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from helpers import hold_tables, ids, invoke, run_cli, write_policies

if TYPE_CHECKING:
    from conftest import TestDatabase

OLD = dt.datetime(2019, 5, 1, 12, 0)
# AS_OF 2026-11-24T03:00 Europe/Amsterdam, retain 1 year: the cut-off in local wall time.
CUT = dt.datetime(2025, 11, 24, 3, 0, 0)
LATER = CUT + dt.timedelta(seconds=1)

ACCOUNTS_A = {"name": "accounts_a", "table": "accounts", "after": "left_at", "retain": "1 year",
              "action": "delete", "on_referenced": "detach", "exclude": {"legal_hold": True}, "max_fraction": 1.0}
ACCOUNTS_B = {**ACCOUNTS_A, "name": "accounts_b", "retain": "2 years"}
TICKETS = {"name": "tickets", "table": "tickets", "after": "closed_at", "retain": "1 year", "action": "delete",
           "exclude": {"legal_hold": True}, "max_fraction": 1.0}

# account id -> legal_hold; account 6 is held by the registry (through accounts_a).
ACCOUNT_HOLDS = {1: True, 2: False, 3: None, 4: False, 5: True, 6: False}
# ticket id -> (closed_at, legal_hold, account_id)
TICKET_ROWS: dict[int, tuple[dt.datetime, bool | None, int | None]] = {
    101: (OLD, False, 1),     # its account is held
    102: (OLD, True, 2),      # held itself
    103: (OLD, True, 5),      # held itself and through its account: one held row, two reasons
    104: (OLD, None, 3),      # a NULL flag, here and on the account, is no hold: due
    105: (OLD, False, None),  # no account: due
    106: (CUT, False, 4),     # at the cut-off: due
    107: (LATER, False, 1),   # a second short of its term: neither due nor counted as held
    108: (LATER, True, 2),    # the same, held itself
    109: (OLD, False, 6),     # its account is held by the registry
    110: (OLD, None, 4),      # due
}


def _schema(engine: sa.Engine) -> None:
    md = sa.MetaData()
    accounts, tickets = hold_tables(md)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [{"id": i, "left_at": OLD, "legal_hold": h} for i, h in ACCOUNT_HOLDS.items()])
        conn.execute(tickets.insert(), [{"id": i, "closed_at": c, "legal_hold": h, "account_id": a}
                                        for i, (c, h, a) in TICKET_ROWS.items()])


# Plain SQL: tickets in the range, and each hold on its own.
IN_RANGE = "t.closed_at IS NOT NULL AND t.closed_at <= :cut"
# NULL-safe: a NULL flag or account is no hold, and NOT of it must be true.
OWN = "COALESCE(t.legal_hold = :yes, :no)"
LINKED = "EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.account_id AND a.legal_hold = :yes)"
REGISTRY = "COALESCE(t.account_id IN (6), :no)"


def _query(sql: str) -> sa.TextClause:
    # The cut-off bound as a DateTime: SQLite compares the text SQLAlchemy stored.
    flags = {k: v for k, v in (("yes", True), ("no", False)) if f":{k}" in sql}
    return sa.text(sql).bindparams(sa.bindparam("cut", CUT, type_=sa.DateTime), **flags)


def _count(engine: sa.Engine, *conds: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(_query("SELECT COUNT(*) FROM tickets t WHERE "
                                       + " AND ".join([IN_RANGE, *conds]))).scalar_one())


def test_held_and_due_counts_agree_with_plain_sql(db: TestDatabase, tmp_path: Path) -> None:
    _schema(db.engine)
    policy = write_policies(tmp_path / "policies.yaml", db.url, [ACCOUNTS_A, ACCOUNTS_B, TICKETS])
    added = invoke(["--policies", str(policy), "hold", "add", "--policy", "accounts_a", "--key", "6",
                    "--reason", "a claim", "--until", "2099-01-01"])
    assert added.exit_code == 0, added
    held_sql = f"({OWN} OR {LINKED} OR {REGISTRY})"
    expected = {
        "held": _count(db.engine, held_sql),
        "due": _count(db.engine, f"NOT {held_sql}"),
        "held_reasons": {"tickets.legal_hold": _count(db.engine, OWN), "accounts.legal_hold": _count(db.engine, LINKED),
                         "registry": _count(db.engine, REGISTRY)},
    }
    # The rows themselves, so that the plain SQL above is known to say what the comments say.
    assert expected == {"held": 4, "due": 4,
                        "held_reasons": {"tickets.legal_hold": 2, "accounts.legal_hold": 2, "registry": 1}}
    with db.engine.connect() as conn:
        due_ids = set(conn.execute(_query(f"SELECT id FROM tickets t WHERE {IN_RANGE} AND NOT {held_sql}")).scalars())
    assert due_ids == {104, 105, 106, 110}

    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", seen)
    try:
        preview = run_cli(policy, "--dry-run", "--policy", "tickets")
        run = run_cli(policy, "--policy", "tickets")
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", seen)
    assert (preview.exit_code, run.exit_code) == (0, 0), run
    for result in (preview, run):
        tickets = result.policy("tickets")
        assert {k: tickets[k] for k in expected} == expected, result
    assert run.policy("tickets")["deleted"] == len(due_ids)
    assert ids(db.engine, "SELECT id FROM tickets") == set(TICKET_ROWS) - due_ids
    if db.name == "mariadb":
        assert any("GROUP BY 1" in s for s in statements), "the grouped count did not run"
    if db.name == "postgresql":
        # The flags were counted apart, each hold condition once: one EXISTS into accounts for
        # the flag of both accounts policies, one for the registry.
        fenced = [s for s in statements if "OFFSET 0" in s]
        assert fenced, "the fenced count did not run"
        assert all(s.count("FROM accounts") == 2 for s in fenced), fenced


# A stored value that is not a date, per database (as in tests/test_unreadable_dates.py).
NOT_A_DATE = {"sqlite": "''", "mariadb": "'0000-00-00 00:00:00'", "postgresql": "'-infinity'"}


def test_a_held_row_whose_date_is_unreadable_is_counted_as_unreadable(db: TestDatabase, tmp_path: Path) -> None:
    """Held and unreadable, by its own flag or through its account: kept, and counted once, as
    unreadable; the hold reasons count only the readable held rows."""
    md = sa.MetaData()
    hold_tables(md)
    md.create_all(db.engine)
    bad = NOT_A_DATE[db.name]
    old = "'2019-05-01 12:00:00'"
    with db.engine.begin() as conn:
        if db.name == "mariadb":
            conn.exec_driver_sql("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ALLOW_INVALID_DATES')")
        conn.exec_driver_sql("INSERT INTO accounts (id, left_at, legal_hold) VALUES "
                             f"(1, {old}, {_true(db)}), (2, {old}, {_false(db)})")
        conn.exec_driver_sql("INSERT INTO tickets (id, account_id, closed_at, legal_hold) VALUES "
                             f"(10, 2, {old}, {_false(db)}), "   # due
                             f"(11, 2, {old}, {_true(db)}), "    # held itself
                             f"(12, 1, {old}, {_false(db)}), "   # held through its account
                             f"(13, 2, {bad}, {_true(db)}), "    # held itself, not a date
                             f"(14, 1, {bad}, {_false(db)}), "   # held through its account, not a date
                             f"(15, 2, {bad}, {_false(db)})")    # not held, not a date
    with db.engine.connect() as conn:  # plain SQL: the rows are what the comments say
        held = conn.exec_driver_sql(
            f"SELECT t.id FROM tickets t WHERE t.legal_hold = {_true(db)} OR EXISTS (SELECT 1 FROM accounts a "
            f"WHERE a.id = t.account_id AND a.legal_hold = {_true(db)})").scalars().all()
    assert sorted(held) == [11, 12, 13, 14]
    policy = write_policies(tmp_path / "policies.yaml", db.url, [ACCOUNTS_A, TICKETS])
    for args in (("--dry-run",), ()):
        result = run_cli(policy, "--policy", "tickets", *args)
        assert result.exit_code == 0, result
        tickets = result.policy("tickets")
        assert (tickets["due"], tickets["held"], tickets["unreadable"]) == (1, 2, 3), result
        assert tickets["held_reasons"] == {"tickets.legal_hold": 1, "accounts.legal_hold": 1}
    assert ids(db.engine, "SELECT id FROM tickets") == {11, 12, 13, 14, 15}


def _true(db: TestDatabase) -> str:
    return "1" if db.name != "postgresql" else "TRUE"


def _false(db: TestDatabase) -> str:
    return "0" if db.name != "postgresql" else "FALSE"

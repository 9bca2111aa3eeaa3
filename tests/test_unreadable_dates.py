"""An ``after`` value that is not a date is never due (issue 11, item 6), on every database.

Compared as stored, such values sort before most cut-offs (SQLite: ``''`` and numbers sort
before all text, ``'2020-13-45'`` before ``'2024-...'``; MariaDB: ``'0000-00-00'``;
PostgreSQL: ``-infinity``), so a plain ``after <= cutoff`` deletes them. The bad values are
written with raw SQL, each database's own kinds (what its column types let in); every count
expected here is written out by hand, and what is left is read back with plain SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from helpers import AS_OF, audit_path, ids, invoke, run_cli, write_policies

from retention.audit import log as audit
from retention.engine.planning import Plan
from retention.engine.validation import connect_and_check
from retention.policy.dates import cutoff, parse_as_of
from retention.policy.loader import load

if TYPE_CHECKING:
    from conftest import TestDatabase

# At AS_OF (2026-11-24 03:00 Amsterdam) with 24 months, events up to 2024-11-24 03:00 are due.
GOOD = {
    100: "2020-06-01 10:00:00",  # due
    101: "2024-11-24 03:00:00",  # due, exactly at the cut-off
    102: "2024-11-24 03:00:01",  # one second inside its term
    103: "2026-01-01 00:00:00",  # inside its term
}
GOOD_DUE = {100, 101}

# Per database: id -> raw SQL literal of a stored value that is not a date, and which of them a
# run counts as `unreadable`: all but a malformed date that sorts after the cut-off (validate
# counts those too).
BAD: dict[str, dict[int, str]] = {
    "sqlite": {
        1: "''", 2: "'2020-13-45 99:99:99'", 3: "20200101", 4: "'2020-02-30 10:00:00'",
        5: "'10:00'", 6: "'yesterday'", 7: "-1.5", 8: "' 2020-01-01 10:00:00'", 9: "'2020-04-31'",
        10: "'2030-13-45'",
    },
    # sql_mode ALLOW_INVALID_DATES while inserting; MariaDB's default mode takes zero dates too.
    "mariadb": {
        1: "'0000-00-00 00:00:00'", 2: "'2019-00-00 10:00:00'", 3: "'2019-05-00 00:00:00'",
        4: "'2020-02-31 10:00:00'", 5: "'2030-00-00 00:00:00'",
    },
    "postgresql": {1: "'-infinity'", 2: "'infinity'", 3: "'0044-03-15 10:00:00 BC'"},
}
COUNTED_BY_RUN = {"sqlite": set(range(1, 10)), "mariadb": {1, 2, 3, 4}, "postgresql": {1, 2, 3}}


def create(db: TestDatabase) -> None:
    md = sa.MetaData()
    sa.Table(
        "events", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("happened_at", sa.DateTime, nullable=True, index=True),
        sa.Column("happened_on", sa.Date, nullable=True, index=True),
    )
    md.create_all(db.engine)


def insert_raw(db: TestDatabase, column: str, values: dict[int, str]) -> None:
    with db.engine.begin() as conn:
        if db.name == "mariadb":
            conn.exec_driver_sql("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
        for key, literal in values.items():
            conn.exec_driver_sql(f"INSERT INTO events (id, {column}) VALUES ({key}, {literal})")
        if db.name == "mariadb":
            conn.exec_driver_sql("SET SESSION sql_mode = DEFAULT")


def setup(db: TestDatabase, tmp_path: Path, **overrides: Any) -> Path:
    create(db)
    insert_raw(db, "happened_at", {k: f"'{v}'" for k, v in GOOD.items()} | BAD[db.name])
    policy = {"name": "events", "table": "events", "after": "happened_at", "retain": "24 months",
              "action": "delete", "max_fraction": 1.0, **overrides}
    return write_policies(tmp_path / "policies.yaml", db.url, [policy])


def test_values_that_are_not_dates_are_kept_and_counted(db: TestDatabase, tmp_path: Path) -> None:
    """Preview and run: only the real dates past their term go; every bad value stays and is
    counted as `unreadable` in the JSON, the text report and the audit log's policy.end (but
    a malformed date later than the cut-off)."""
    pf = setup(db, tmp_path)
    everything = set(GOOD) | set(BAD[db.name])
    assert ids(db.engine, "SELECT id FROM events") == everything

    preview = run_cli(pf, "--dry-run")
    assert preview.exit_code == 0, preview
    p = preview.policy("events")
    assert (p["due"], p["unreadable"]) == (len(GOOD_DUE), len(COUNTED_BY_RUN[db.name]))
    assert sorted(p["sample_keys"]) == sorted(GOOD_DUE)

    text = run_cli(pf, "--dry-run", fmt="text")
    assert f"{len(COUNTED_BY_RUN[db.name])} row(s) kept: their `after` value is not a date" in text.stdout

    result = run_cli(pf)
    assert result.exit_code == 0, result
    p = result.policy("events")
    assert (p["applied"], p["unreadable"]) == (len(GOOD_DUE), len(COUNTED_BY_RUN[db.name]))
    assert ids(db.engine, "SELECT id FROM events") == everything - GOOD_DUE

    ends = [e for e in audit.read_entries(audit_path(pf)) if e["event"] == "policy.end"]
    # The previews append nothing (issue 13): only the real run's policy.end.
    assert [e["unreadable"] for e in ends] == [len(COUNTED_BY_RUN[db.name])]

    # Years later nothing changes for them: a bad value is never due.
    later = run_cli(pf, "--dry-run", as_of="2099-01-01T00:00:00")
    assert later.policy("events")["due"] == len(GOOD) - len(GOOD_DUE)


def test_anonymise_leaves_values_that_are_not_dates_alone(db: TestDatabase, tmp_path: Path) -> None:
    """The same predicate selects rows to anonymise: a row whose date is unreadable keeps its values."""
    create(db)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE events ADD COLUMN note VARCHAR(40)")
    insert_raw(db, "happened_at", {k: f"'{v}'" for k, v in GOOD.items()} | BAD[db.name])
    with db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE events SET note = 'personal'")
    pf = write_policies(tmp_path / "policies.yaml", db.url, [{
        "name": "events", "table": "events", "after": "happened_at", "retain": "24 months",
        "action": "anonymise", "fields": {"note": "redact"}, "max_fraction": 1.0,
        # Only the selection is under test here: the other date stays, and these few rows are
        # trivially unique (the re-identification check has tests of its own).
        "keep": {"happened_on": "not under test"}, "reidentification": "warn"}])
    result = run_cli(pf)
    assert result.exit_code == 0, result
    assert result.policy("events")["unreadable"] == len(COUNTED_BY_RUN[db.name])
    assert ids(db.engine, "SELECT id FROM events WHERE note <> 'personal'") == GOOD_DUE


def test_date_column_with_values_that_are_not_dates(db: TestDatabase, tmp_path: Path) -> None:
    """A DATE column: the same rule (SQLite: '' and 20191231 and '2019-02-29'; MariaDB: zero
    dates; PostgreSQL: -infinity), with a real date on each side of the cut-off."""
    create(db)
    bad = {"sqlite": {1: "''", 2: "20191231", 3: "'2019-02-29'"},
           "mariadb": {1: "'0000-00-00'", 2: "'2019-12-00'", 3: "'2019-02-29'"},
           "postgresql": {1: "'-infinity'", 2: "'2019-12-31 BC'", 3: "'infinity'"}}[db.name]
    before = 3
    insert_raw(db, "happened_on", {10: "'2024-11-24'", 11: "'2024-11-25'"} | bad)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [{
        "name": "events", "table": "events", "after": "happened_on", "retain": "24 months",
        "action": "delete", "max_fraction": 1.0}])
    result = run_cli(pf)
    assert result.exit_code == 0, result
    assert (result.policy("events")["applied"], result.policy("events")["unreadable"]) == (1, before)
    assert ids(db.engine, "SELECT id FROM events") == {11} | set(bad)


def test_validate_warns_with_the_count_and_the_first_keys(db: TestDatabase, tmp_path: Path) -> None:
    """`validate` counts every bad value in the table (also those after the cut-off) and names
    the first keys; a warning, so the exit code stays 0."""
    pf = setup(db, tmp_path)
    result = invoke(["--policies", str(pf), "validate"])
    assert result.exit_code == 0, result
    n = len(BAD[db.name])
    first = ", ".join(map(str, sorted(BAD[db.name])[:5])) + (", ..." if n > 5 else "")
    assert (f"policy 'events': {n} row(s) of events whose happened_at is not a date are never due "
            f"(keys {first})") in result.stderr


def test_validate_says_nothing_when_every_value_is_a_date(db: TestDatabase, tmp_path: Path) -> None:
    create(db)
    insert_raw(db, "happened_at", {k: f"'{v}'" for k, v in GOOD.items()})
    pf = write_policies(tmp_path / "policies.yaml", db.url, [{
        "name": "events", "table": "events", "after": "happened_at", "retain": "24 months", "action": "delete"}])
    result = invoke(["--policies", str(pf), "validate"])
    assert result.exit_code == 0, result
    assert "not a date" not in result.stderr


# -- the index on `after` still serves the due selection --------------------------------------

@contextmanager
def explained(engine: sa.Engine, prefix: str) -> Iterator[None]:
    """Every statement run meanwhile is sent as ``prefix + statement`` (EXPLAIN ...)."""
    def rewrite(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> Any:
        return prefix + statement, parameters

    sa.event.listen(engine, "before_cursor_execute", rewrite, retval=True)
    try:
        yield
    finally:
        sa.event.remove(engine, "before_cursor_execute", rewrite)


def test_the_due_selection_uses_the_index_on_after(db: TestDatabase, tmp_path: Path) -> None:
    """The query plan of the due selection (a batch's SELECT, and the preview's count) walks
    the `after` index: the readability check keeps a range on it. PostgreSQL with seq scans
    off, so that the answer is about whether the index can serve, not what it costs; MariaDB
    lists it among the usable keys."""
    pf = setup(db, tmp_path)
    model = load(pf)
    connected = connect_and_check(model)
    try:
        policy = model.policies[0]
        cut = cutoff(parse_as_of(AS_OF, model.timezone), policy.retain, "none", model.timezone)
        plan = Plan(policy, "shop", connected.schemas["shop"], cut)
        t = plan.table
        index = next(ix["name"] for ix in sa.inspect(db.engine).get_indexes("events")
                     if ix["column_names"] == ["happened_at"])
        # Unordered: ordered by key, the planner may walk the primary key instead, for cost.
        statements = [sa.select(plan.key).where(plan.due(t)),
                      sa.select(sa.func.count()).select_from(t).where(plan.past_term(t, readable=False))]
        for stmt in statements:
            engine = connected.engines["shop"]
            prefix = {"sqlite": "EXPLAIN QUERY PLAN ", "postgresql": "EXPLAIN ", "mariadb": "EXPLAIN "}[db.name]
            with engine.connect() as conn:
                if db.name == "postgresql":
                    conn.exec_driver_sql("SET enable_seqscan = off")
                with explained(engine, prefix):
                    rows = conn.execute(stmt).mappings().all()
            if db.name == "mariadb":
                assert index in rows[0]["possible_keys"].split(","), rows
                assert rows[0]["type"] in ("range", "index"), rows
            else:
                text = "\n".join(str(list(r.values())) for r in rows)
                assert f"{index}" in text, text
                if db.name == "sqlite":
                    # A range on the index with both bounds, not a walk of the whole index.
                    assert "happened_at>? AND happened_at<?" in text, text
    finally:
        connected.dispose()


@pytest.mark.parametrize("value", ["2020-13-45 99:99:99", "", "2020-02-30 10:00:00", "2019-02-29", "10:00",
                                   "2020-01-01 10:00:00 x", "2020-1-1"])
def test_sqlite_a_bad_value_beside_a_good_one_of_the_same_day(sqlite_db: TestDatabase, tmp_path: Path,
                                                             value: str) -> None:
    """The text bounds alone are not the check: a bad value in the range of real dates is kept too."""
    create(sqlite_db)
    with sqlite_db.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO events (id, happened_at) VALUES (1, ?), (2, '2020-02-29 10:00:00')",
                             (value,))
    pf = write_policies(tmp_path / "policies.yaml", sqlite_db.url, [{
        "name": "events", "table": "events", "after": "happened_at", "retain": "24 months",
        "action": "delete", "max_fraction": 1.0}])
    assert run_cli(pf).policy("events")["applied"] == 1
    assert ids(sqlite_db.engine, "SELECT id FROM events") == {1}


@pytest.mark.parametrize("value", ["2020-12-31 23:59:59.999999", "2020-02-29 23:59:59.999999", "2020-01-31",
                                   "2020-04-30 10:00", "2020-01-01T10:00:00", "2020-01-01 24:00:00"])
def test_sqlite_real_dates_stay_readable(sqlite_db: TestDatabase, tmp_path: Path, value: str) -> None:
    """Dates SQLite reads are due as before: the last microsecond of a month (normalising the
    whole value would round it into the next day), month ends, minutes without seconds, the
    ISO 'T', and 24:00 (the end of a day, which SQLite reads as the next midnight)."""
    create(sqlite_db)
    with sqlite_db.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO events (id, happened_at) VALUES (1, ?)", (value,))
    pf = write_policies(tmp_path / "policies.yaml", sqlite_db.url, [{
        "name": "events", "table": "events", "after": "happened_at", "retain": "24 months",
        "action": "delete", "max_fraction": 1.0}])
    # --force: the one row is the value under test, so the run empties the table by design.
    result = run_cli(pf, "--force")
    assert (result.policy("events")["applied"], result.policy("events")["unreadable"]) == (1, 0), result
    assert ids(sqlite_db.engine, "SELECT id FROM events") == set()


def test_a_child_whose_date_is_unreadable_keeps_its_parent(db: TestDatabase, tmp_path: Path) -> None:
    """A child policy runs first; its row with a bad date stays, so its parent is deferred (not
    deleted from under it), while the parent of a child that did go is deleted in the same run."""
    md = sa.MetaData()
    sa.Table("parents", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("ended_at", sa.DateTime, index=True))
    sa.Table("children", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("parent_id", sa.Integer, sa.ForeignKey("parents.id"), nullable=False, index=True),
             sa.Column("written_at", sa.DateTime, index=True))
    md.create_all(db.engine)
    bad = {"sqlite": "''", "mariadb": "'0000-00-00 00:00:00'", "postgresql": "'-infinity'"}[db.name]
    with db.engine.begin() as conn:
        if db.name == "mariadb":
            conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.exec_driver_sql("INSERT INTO parents (id, ended_at) VALUES (1, '2020-01-01 00:00:00'), "
                             "(2, '2020-01-01 00:00:00')")
        conn.exec_driver_sql(f"INSERT INTO children (id, parent_id, written_at) VALUES (10, 1, {bad}), "
                             "(20, 2, '2020-01-01 00:00:00')")
    pf = write_policies(tmp_path / "policies.yaml", db.url, [
        {"name": "parents", "table": "parents", "after": "ended_at", "retain": "24 months", "action": "delete",
         "max_fraction": 1.0},
        {"name": "children", "table": "children", "after": "written_at", "retain": "24 months",
         "action": "delete", "max_fraction": 1.0},
    ])
    preview = run_cli(pf, "--dry-run")
    p = preview.policy("parents")
    assert (p["due"], p["deferred"], p["deferred_reasons"]) == (2, 1, {"children": 1}), preview
    assert preview.policy("children")["unreadable"] == 1
    result = run_cli(pf)
    assert result.exit_code == 0, result
    assert (result.policy("children")["applied"], result.policy("parents")["applied"]) == (1, 1), result
    assert ids(db.engine, "SELECT id FROM children") == {10}
    assert ids(db.engine, "SELECT id FROM parents") == {1}

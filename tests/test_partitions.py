"""Whole range partitions past their term go in one statement, audited key by key.

The table is built here (PostgreSQL declarative range partitions, MariaDB RANGE COLUMNS),
partitioned on the policy's `after` column; the policy keeps events 2 years, time zone UTC,
so at AS_OF (2026-11-24T03:00:00) the cut-off is 2024-11-24 03:00:00 exactly:

- p2022 (to 2023-01-01): all rows due: dropped whole;
- p2023 (to 2024-01-01): one row on legal hold: row batches (the hold is kept);
- pshort (to the cut-off plus one second): all its rows are due, but its range is not: batches;
- pmax: rows after the cut-off: kept.

Every expectation is plain SQL on the database and the audit log's own lines.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from helpers import invoke, run_cli, write_policies

from retention.audit import log as audit

if TYPE_CHECKING:
    from conftest import TestDatabase

AS_OF = "2026-11-24T03:00:00"
CUT = "2024-11-24 03:00:00"
ROWS = {
    "p2022": [(1, "2021-03-01 10:00:00", 0), (2, "2022-06-30 23:59:59", 0), (3, "2022-12-31 23:59:59", 0)],
    "p2023": [(4, "2023-02-01 00:00:00", 0), (5, "2023-05-01 00:00:00", 1), (6, "2023-12-31 00:00:00", 0)],
    "pshort": [(7, "2024-01-01 00:00:00", 0), (8, CUT, 0)],
    "pmax": [(9, "2024-11-24 03:00:01", 0), (10, "2026-01-01 00:00:00", 0)],
}
POLICY = {"name": "events", "table": "events", "key": "id", "after": "happened_at", "retain": "2 years",
          "action": "delete", "exclude": {"legal_hold": True}, "max_fraction": 1.0, "batch_size": 2}


def _build(db: TestDatabase, short_upper: str = "2024-11-24 03:00:01",
           extra: tuple[int, str] | None = None) -> None:
    """The table of the module docstring; ``extra``: one more row (id, happened_at), not held."""
    bounds = [("p2022", "2023-01-01 00:00:00"), ("p2023", "2024-01-01 00:00:00"), ("pshort", short_upper)]
    with db.engine.begin() as conn:
        if db.name == "postgresql":
            conn.exec_driver_sql(
                "CREATE TABLE events (id bigint NOT NULL, happened_at timestamp NOT NULL, "
                "legal_hold boolean NOT NULL DEFAULT false, body text, PRIMARY KEY (id, happened_at)) "
                "PARTITION BY RANGE (happened_at)")
            lower = "MINVALUE"
            for name, upper in bounds:
                conn.exec_driver_sql(
                    f"CREATE TABLE {name} PARTITION OF events FOR VALUES FROM ({lower}) TO ('{upper}')")
                lower = f"'{upper}'"
            conn.exec_driver_sql(f"CREATE TABLE pmax PARTITION OF events FOR VALUES FROM ({lower}) TO (MAXVALUE)")
        else:
            parts = ", ".join(f"PARTITION {name} VALUES LESS THAN ('{upper}')" for name, upper in bounds)
            conn.exec_driver_sql(
                "CREATE TABLE events (id BIGINT NOT NULL, happened_at DATETIME NOT NULL, "
                "legal_hold BOOLEAN NOT NULL DEFAULT 0, body TEXT, PRIMARY KEY (id, happened_at)) "
                f"PARTITION BY RANGE COLUMNS (happened_at) ({parts}, PARTITION pmax VALUES LESS THAN (MAXVALUE))")
        for rows in [*ROWS.values(), [(*extra, 0)] if extra else []]:
            for id_, at, hold in rows:
                conn.execute(sa.text("INSERT INTO events (id, happened_at, legal_hold, body) VALUES (:i, :a, :h, 'x')"),
                             {"i": id_, "a": at, "h": bool(hold)})


def _ids(db: TestDatabase) -> set[int]:
    with db.engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.text("SELECT id FROM events"))}


def _partitions(db: TestDatabase) -> set[str]:
    sql = ("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
           "WHERE i.inhparent = 'events'::regclass" if db.name == "postgresql" else
           "SELECT PARTITION_NAME FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = DATABASE() "
           "AND TABLE_NAME = 'events'")
    with db.engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.text(sql))}


def _policy(db: TestDatabase, tmp_path: Path) -> Path:
    return write_policies(tmp_path / "policies.yaml", db.url, [POLICY], timezone="UTC")


def _entries(policy_file: Path) -> list[dict[str, Any]]:
    return list(audit.read_entries(policy_file.parent / "audit" / "retention.jsonl"))


def test_expired_partition_dropped_whole_the_rest_by_batches(server_db: TestDatabase, tmp_path: Path) -> None:
    """p2022 goes in one statement with its keys in the audit log; the held row's partition and
    the partition one second short of its term go by batches; nothing after the cut-off goes."""
    _build(server_db)
    policy = _policy(server_db, tmp_path)

    preview = run_cli(policy, "--dry-run", as_of=AS_OF)
    assert preview.exit_code == 0, preview
    assert preview.policy("events")["partitions"] == [{"partition": "p2022", "rows": 3}]
    assert _ids(server_db) == set(range(1, 11))

    result = run_cli(policy, as_of=AS_OF)
    assert result.exit_code == 0, result
    assert _ids(server_db) == {5, 9, 10}
    assert _partitions(server_db) == {"p2023", "pshort", "pmax"}
    out = result.policy("events")
    assert out["applied"] == 7
    assert out["partitions"] == [{"partition": "p2022", "rows": 3}]

    entries = _entries(policy)
    intents = [e for e in entries if e["event"] == "batch" and e.get("partition") == "p2022"]
    assert sorted(k for e in intents for k in e["keys"]) == [1, 2, 3]
    committed = {e["batch"] for e in entries if e["event"] == "batch.committed" and e.get("partition") == "p2022"}
    assert committed == {e["batch"] for e in intents}
    # Every deleted key is in the log exactly once; the kept ones never.
    logged = sorted(k for e in entries if e["event"] == "batch" for k in e["keys"])
    assert logged == [1, 2, 3, 4, 6, 7, 8]
    end = next(e for e in entries if e["event"] == "policy.end")
    assert end["partitions"] == [{"partition": "p2022", "rows": 3}]
    assert audit.verify(policy.parent / "audit" / "retention.jsonl").ok


def test_a_dropped_partitions_keys_are_logged_in_order_in_entries_of_the_set_size(
        server_db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys are read in pages (MariaDB: numbered and aggregated by the server): with two
    keys per entry and id 2 twice in p2022 (unique only with happened_at), a page boundary falls
    between the two: every row's key is logged once, in key order, and the partition goes."""
    from retention.engine import partitions

    monkeypatch.setattr(partitions, "KEYS_PER_ENTRY", 2)
    _build(server_db, extra=(2, "2022-01-01 00:00:00"))
    policy = _policy(server_db, tmp_path)
    result = run_cli(policy, as_of=AS_OF)
    assert result.exit_code == 0, result
    assert result.policy("events")["partitions"] == [{"partition": "p2022", "rows": 4}]
    assert "p2022" not in _partitions(server_db)
    intents = [e for e in _entries(policy) if e["event"] == "batch" and e.get("partition") == "p2022"]
    assert [e["keys"] for e in intents] == [[1, 2], [2, 3]]


def test_reading_a_partitions_keys_leaves_the_session_as_it_was(db_factory: Any) -> None:
    """MariaDB: the key pages raise group_concat_max_len (1 MB would cut a page of 100,000 keys)
    for their own statement, and set it back on the pooled connection afterwards."""
    from retention.databases import dialects

    db = db_factory("mariadb")
    _build(db)
    table = sa.Table("events", sa.MetaData(), autoload_with=db.engine)
    frm, finish = dialects.partition_rows(table, "p2023", "mysql")
    with db.engine.connect() as conn:
        before = conn.exec_driver_sql("SELECT @@SESSION.group_concat_max_len").scalar_one()
        pages = list(dialects.stream_keys(conn, finish(sa.select(frm.c.id).order_by(frm.c.id)), 100_000))
        after = conn.exec_driver_sql("SELECT @@SESSION.group_concat_max_len").scalar_one()
    assert pages == [[4, 5, 6]]
    assert before == after < 100_000 * 22


def test_a_key_repeated_across_whole_pages_is_read_as_often_as_it_occurs(db_factory: Any) -> None:
    """MariaDB walks the key page by page (`key >= last`, skipping the repeats already read):
    id 5 three times in p2023 with two keys a page fills a whole page of its own and starts the
    next; every row's key comes back once, in order, in pages of the set size."""
    from retention.databases import dialects

    db = db_factory("mariadb")
    _build(db)
    with db.engine.begin() as conn:
        for at in ("2023-02-01 00:00:00", "2023-03-01 00:00:00"):
            conn.execute(sa.text("INSERT INTO events (id, happened_at, legal_hold, body) VALUES (5, :a, 0, 'x')"),
                         {"a": at})
    table = sa.Table("events", sa.MetaData(), autoload_with=db.engine)
    frm, finish = dialects.partition_rows(table, "p2023", "mysql")
    with db.engine.connect() as conn:
        plain = sorted(conn.exec_driver_sql("SELECT id FROM events PARTITION (p2023)").scalars())
        query = finish(sa.select(frm.c.id).order_by(frm.c.id))
        pages = {size: list(dialects.stream_keys(conn, query, size)) for size in (1, 2, 3, 100_000)}
    assert plain == [4, 5, 5, 5, 6]
    assert pages[2] == [[4, 5], [5, 5], [6]]
    assert pages[1] == [[4], [5], [5], [5], [6]]
    assert pages[3] == [[4, 5, 5], [5, 6]]
    assert pages[100_000] == [plain]


def test_partition_ending_exactly_at_the_cutoff_is_dropped(server_db: TestDatabase, tmp_path: Path) -> None:
    """The boundary: a partition whose upper bound is the cut-off itself is past its term."""
    _build(server_db, short_upper=CUT)
    policy = _policy(server_db, tmp_path)
    result = run_cli(policy, as_of=AS_OF)
    assert result.exit_code == 0, result
    assert _partitions(server_db) == {"p2023", "pmax"}
    assert [p["partition"] for p in result.policy("events")["partitions"]] == ["p2022", "pshort"]
    # pshort's row at the cut-off itself was due; the one a second later (now in pmax) is kept.
    assert _ids(server_db) == {5, 9, 10}


def test_held_row_keeps_its_partition(server_db: TestDatabase, tmp_path: Path) -> None:
    """A hold anywhere in an expired partition: no drop; its other rows go by batches."""
    _build(server_db)
    with server_db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET legal_hold = :t WHERE id = 2"), {"t": True})
    policy = _policy(server_db, tmp_path)
    result = run_cli(policy, as_of=AS_OF)
    assert result.exit_code == 0, result
    assert result.policy("events")["partitions"] == []
    assert "p2022" in _partitions(server_db)
    assert _ids(server_db) == {2, 5, 9, 10}


def test_zero_date_keeps_its_partition_on_mariadb(db_factory: Any, tmp_path: Path) -> None:
    """MariaDB stores '0000-00-00 00:00:00', in the first partition: not a date, never due, so
    that partition is not dropped whole and the row stays."""
    db = db_factory("mariadb")
    _build(db)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.exec_driver_sql("INSERT INTO events (id, happened_at, legal_hold) VALUES (11, '0000-00-00 00:00:00', 0)")
    with db.engine.connect() as conn:
        where = conn.execute(sa.text("SELECT count(*) FROM events PARTITION (p2022) WHERE id = 11")).scalar_one()
    assert where == 1
    policy = _policy(db, tmp_path)
    result = run_cli(policy, as_of=AS_OF)
    assert result.exit_code == 0, result
    assert result.policy("events")["partitions"] == []
    assert "p2022" in _partitions(db)
    assert _ids(db) == {5, 9, 10, 11}


def test_validate_says_which_tables_qualify(server_db: TestDatabase, tmp_path: Path) -> None:
    _build(server_db)
    policy = _policy(server_db, tmp_path)
    out = invoke(["--policies", str(policy), "validate"])
    assert out.exit_code == 0, out
    assert "events: shop.events range-partitioned on happened_at (4 partitions)" in out.stdout


@pytest.mark.parametrize("point,expected", [("intent", "not applied"), ("commit", "applied")])
def test_kill_around_a_partition_drop_is_recovered(server_db: TestDatabase, tmp_path: Path, point: str,
                                                   expected: str) -> None:
    """Killed after the partition's intent (before the drop commits) or after the drop (before
    `batch.committed`): the next run finds the partition's fate and finishes."""
    _build(server_db)
    policy = _policy(server_db, tmp_path)
    argv = [sys.executable, "-m", "retention.cli", "--policies", str(policy), "--log-format", "json",
            "run", "--as-of", AS_OF, "--format", "json"]
    killed = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "RETENTION_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert ("p2022" in _partitions(server_db)) == (point == "intent")
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    recovered = [e for e in _entries(policy) if e["event"] == "batch.recovered"]
    assert [e["result"] for e in recovered] == [expected]
    assert "partition p2022" in recovered[0]["detail"]
    assert _ids(server_db) == {5, 9, 10}
    assert "p2022" not in _partitions(server_db)
    assert json.loads(again.stdout)["policies"][0]["status"] == "ok"


def test_a_key_shared_with_a_row_not_due_never_takes_that_row(server_db: TestDatabase, tmp_path: Path) -> None:
    """The key is unique only with `happened_at`: a due row and a later row with the same id.
    The batch deletes by key and due, so the later row stays (and is not in the log)."""
    _build(server_db, extra=(7, "2026-02-01 00:00:00"))
    policy = _policy(server_db, tmp_path)
    result = run_cli(policy, as_of=AS_OF)
    assert result.exit_code == 0, result
    with server_db.engine.connect() as conn:
        left = {(r[0], str(r[1])[:10]) for r in conn.execute(sa.text("SELECT id, happened_at FROM events"))}
    assert left == {(5, "2023-05-01"), (7, "2026-02-01"), (9, "2024-11-24"), (10, "2026-01-01")}
    assert result.policy("events")["applied"] == 7


@pytest.mark.parametrize("on_referenced", ["anonymise", "detach"])
def test_a_key_unique_only_with_after_is_refused_when_rows_change_by_key(
        server_db: TestDatabase, tmp_path: Path, on_referenced: str) -> None:
    """on_referenced anonymise/detach change rows by key: they need a key unique on its own."""
    _build(server_db)
    extra: dict[str, Any] = {"on_referenced": on_referenced}
    if on_referenced == "anonymise":
        extra["fields"] = {"body": "redact"}
    policy = write_policies(tmp_path / "policies.yaml", server_db.url, [POLICY | extra], timezone="UTC")
    result = run_cli(policy, as_of=AS_OF)
    assert result.exit_code == 2, result
    assert "column 'id' of table 'events' is not unique" in result.stderr
    assert _ids(server_db) == set(range(1, 11))


def test_detaching_rows_of_a_partitioned_table_never_touches_a_row_sharing_their_key(
        db_factory: Any, tmp_path: Path) -> None:
    """PostgreSQL (MariaDB's partitioned tables have no foreign keys): a partitioned table whose
    rows point at accounts, keyed `id` unique only with its partition column, and two rows with
    id 1, one pointing at the account being deleted, one at an account kept. Detaching names the
    rows by `id` (the key of the table's own policy) and tests the link again in its UPDATE, so
    only the first row is detached; the log names key 1 once, for that row."""
    db = db_factory("postgresql")
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE accounts (id integer PRIMARY KEY, deregistered_at timestamp)")
        conn.exec_driver_sql(
            "CREATE TABLE shipments (id integer NOT NULL, shipped_at timestamp NOT NULL, "
            "account_id integer REFERENCES accounts (id), PRIMARY KEY (id, shipped_at)) "
            "PARTITION BY RANGE (shipped_at)")
        conn.exec_driver_sql("CREATE TABLE s2020 PARTITION OF shipments FOR VALUES FROM (MINVALUE) TO ('2021-01-01')")
        conn.exec_driver_sql("CREATE TABLE s2021 PARTITION OF shipments FOR VALUES FROM ('2021-01-01') TO (MAXVALUE)")
        conn.exec_driver_sql("INSERT INTO accounts VALUES (10, '2020-01-01'), (20, NULL)")
        conn.exec_driver_sql("INSERT INTO shipments VALUES (1, '2020-06-01', 10), (1, '2021-06-01', 20), "
                             "(2, '2021-07-01', 10)")
    policy = write_policies(tmp_path / "policies.yaml", db.url, [
        {"name": "accounts", "table": "accounts", "after": "deregistered_at", "retain": "24 months",
         "action": "delete", "on_referenced": "detach", "max_fraction": 1.0},
        {"name": "shipments", "table": "shipments", "key": "id", "after": "shipped_at", "retain": "10 years",
         "action": "delete"},
    ], timezone="UTC")
    result = run_cli(policy, as_of=AS_OF)
    assert result.exit_code == 0, result.stdout
    with db.engine.connect() as conn:
        rows = {(r[0], str(r[1])[:10], r[2]) for r in conn.exec_driver_sql(
            "SELECT id, shipped_at, account_id FROM shipments")}
        accounts = {r[0] for r in conn.exec_driver_sql("SELECT id FROM accounts")}
    assert rows == {(1, "2020-06-01", None), (1, "2021-06-01", 20), (2, "2021-07-01", None)}
    assert accounts == {20}
    assert result.policy("accounts")["detached"] == 2
    detached = [e for e in _entries(policy) if e.get("event") == "batch" and e.get("action") == "detach"]
    assert [(e["table"], sorted(e["keys"])) for e in detached] == [("shipments", [1, 2])]


def test_dropped_partition_keys_are_found_and_shown(server_db: TestDatabase, tmp_path: Path) -> None:
    """`audit find` answers for a key that went with its partition; `audit show` totals it;
    the text preview names the partition."""
    _build(server_db)
    policy = _policy(server_db, tmp_path)
    preview = run_cli(policy, "--dry-run", as_of=AS_OF, fmt="text")
    assert preview.exit_code == 0, preview
    assert "of these, 3 as the whole partition p2022 (one statement)" in preview.stdout
    assert run_cli(policy, as_of=AS_OF).exit_code == 0
    found = invoke(["--policies", str(policy), "audit", "find", "--policy", "events", "--key", "2",
                    "--format", "json"], parse_json=True)
    assert found.exit_code == 0, found
    touches = found.data["touches"]
    assert [(t["action"], t["outcome"], t["table"]) for t in touches] == [("delete", "committed", "events")]
    shown = invoke(["--policies", str(policy), "audit", "show"])
    assert shown.exit_code == 0, shown
    assert "7 rows deleted" in shown.stdout


@pytest.mark.parametrize("column_type,bounds,rows", [
    # An instant: the cut-off is 2024-11-24 03:00:00 UTC; a bound one second later is not past it.
    ("timestamptz", ["2024-11-24 03:00:00+00", "2024-11-24 03:00:01+00"],
     {"pa": "2024-01-01 00:00:00+00", "pb": "2024-11-24 03:00:00+00", "pmax": "2025-01-01 00:00:00+00"}),
    # A DATE: 2024-11-24 is the last due day, so a partition ending before 2024-11-25 is past the
    # term, one ending a day later is not.
    ("date", ["2024-11-25", "2024-11-26"], {"pa": "2024-11-24", "pb": "2024-11-25", "pmax": "2025-01-01"}),
])
def test_bounds_of_instant_and_date_columns(db_factory: Any, tmp_path: Path, column_type: str,
                                            bounds: list[str], rows: dict[str, str]) -> None:
    db = db_factory("postgresql")
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE events (id bigint NOT NULL, happened_at {column_type} NOT NULL, "
                             "legal_hold boolean NOT NULL DEFAULT false, PRIMARY KEY (id, happened_at)) "
                             "PARTITION BY RANGE (happened_at)")
        conn.exec_driver_sql(f"CREATE TABLE pa PARTITION OF events FOR VALUES FROM (MINVALUE) TO ('{bounds[0]}')")
        conn.exec_driver_sql(f"CREATE TABLE pb PARTITION OF events FOR VALUES FROM ('{bounds[0]}') TO ('{bounds[1]}')")
        conn.exec_driver_sql(f"CREATE TABLE pmax PARTITION OF events FOR VALUES FROM ('{bounds[1]}') TO (MAXVALUE)")
        for i, (_part, at) in enumerate(rows.items(), start=1):
            conn.execute(sa.text("INSERT INTO events (id, happened_at) VALUES (:i, :a)"), {"i": i, "a": at})
    policy = _policy(db, tmp_path)
    result = run_cli(policy, as_of=AS_OF)
    assert result.exit_code == 0, result
    assert [p["partition"] for p in result.policy("events")["partitions"]] == ["pa"]
    assert _partitions(db) == {"pb", "pmax"}
    due_in_pb = column_type == "timestamptz"  # the instant at the cut-off is due; the day after it is not
    assert _ids(db) == ({3} if due_in_pb else {2, 3})


def test_partition_bounds_are_read_from_the_catalog(server_db: TestDatabase) -> None:
    """Each partitioning form read gives the exclusive upper bound as the column's value; a
    DEFAULT or MAXVALUE partition has none (it is never past any term)."""
    from retention.databases.dialects import range_partitions

    with server_db.engine.begin() as conn:
        if server_db.name == "postgresql":
            conn.exec_driver_sql("CREATE TABLE ev (id bigint NOT NULL, at timestamp NOT NULL) PARTITION BY RANGE (at)")
            conn.exec_driver_sql("CREATE TABLE ev_a PARTITION OF ev FOR VALUES FROM (MINVALUE) TO ('2021-01-01')")
            conn.exec_driver_sql("CREATE TABLE ev_b PARTITION OF ev FOR VALUES FROM ('2021-01-01') "
                                 "TO ('2021-07-01 12:30:00')")
            conn.exec_driver_sql("CREATE TABLE ev_c PARTITION OF ev DEFAULT")
            expected = {"ev": {"ev_a": dt.datetime(2021, 1, 1), "ev_b": dt.datetime(2021, 7, 1, 12, 30),
                               "ev_c": None}}
        else:
            conn.exec_driver_sql("CREATE TABLE ev (id BIGINT NOT NULL, at DATETIME NOT NULL, PRIMARY KEY (id, at)) "
                                 "PARTITION BY RANGE (YEAR(at)) (PARTITION p20 VALUES LESS THAN (2021), "
                                 "PARTITION pmax VALUES LESS THAN MAXVALUE)")
            conn.exec_driver_sql("CREATE TABLE ev2 (id BIGINT NOT NULL, at DATETIME NOT NULL, PRIMARY KEY (id, at)) "
                                 "PARTITION BY RANGE (TO_DAYS(at)) (PARTITION p1 VALUES LESS THAN "
                                 "(TO_DAYS('2021-07-01')), PARTITION pmax VALUES LESS THAN MAXVALUE)")
            conn.exec_driver_sql("CREATE TABLE ev3 (id BIGINT NOT NULL, at DATETIME NOT NULL, PRIMARY KEY (id, at)) "
                                 "PARTITION BY RANGE COLUMNS (at) (PARTITION p1 VALUES LESS THAN "
                                 "('2021-07-01 12:30:00'), PARTITION pmax VALUES LESS THAN (MAXVALUE))")
            expected = {"ev": {"p20": dt.datetime(2021, 1, 1), "pmax": None},
                        "ev2": {"p1": dt.datetime(2021, 7, 1), "pmax": None},
                        "ev3": {"p1": dt.datetime(2021, 7, 1, 12, 30), "pmax": None}}
    md = sa.MetaData()
    with server_db.engine.connect() as conn:
        for name, want in expected.items():
            found = range_partitions(conn, sa.Table(name, md, autoload_with=conn))
            assert found is not None
            assert {p.name: p.upper for p in found} == want
            assert {p.column for p in found} == {"at"}
        md2 = sa.MetaData()
        conn.exec_driver_sql("CREATE TABLE flat (id INTEGER PRIMARY KEY)")
        assert range_partitions(conn, sa.Table("flat", md2, autoload_with=conn)) is None


def test_a_year_aligned_term_drops_the_year_partition_on_new_years_day(server_db: TestDatabase,
                                                                       tmp_path: Path) -> None:
    """`align: end_of_year`: the term of 2023's events ends at 2023-12-31 23:59:59.999999 + 2 years,
    and the 2023 partition holds exactly the values below 2024-01-01, so at 2026-01-01 00:00 it goes
    whole (one statement); a second earlier only 2022's does. Before, an exclusive bound one
    microsecond after the cut-off kept every year-aligned partition out of reach."""
    with server_db.engine.begin() as conn:
        if server_db.name == "postgresql":
            conn.exec_driver_sql("CREATE TABLE events (id bigint NOT NULL, happened_at timestamp NOT NULL, "
                                 "legal_hold boolean NOT NULL DEFAULT false, PRIMARY KEY (id, happened_at)) "
                                 "PARTITION BY RANGE (happened_at)")
            conn.exec_driver_sql("CREATE TABLE p2022 PARTITION OF events FOR VALUES FROM (MINVALUE) TO ('2023-01-01')")
            conn.exec_driver_sql("CREATE TABLE p2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') "
                                 "TO ('2024-01-01')")
            conn.exec_driver_sql("CREATE TABLE pmax PARTITION OF events FOR VALUES FROM ('2024-01-01') TO (MAXVALUE)")
        else:
            conn.exec_driver_sql(
                "CREATE TABLE events (id BIGINT NOT NULL, happened_at DATETIME NOT NULL, "
                "legal_hold BOOLEAN NOT NULL DEFAULT 0, PRIMARY KEY (id, happened_at)) "
                "PARTITION BY RANGE (YEAR(happened_at)) (PARTITION p2022 VALUES LESS THAN (2023), "
                "PARTITION p2023 VALUES LESS THAN (2024), PARTITION pmax VALUES LESS THAN MAXVALUE)")
        rows = {1: "2022-12-31 23:59:59", 2: "2023-01-01 00:00:00", 3: "2023-12-31 23:59:59", 4: "2024-01-01 00:00:00"}
        for i, at in rows.items():
            conn.execute(sa.text("INSERT INTO events (id, happened_at) VALUES (:i, :a)"), {"i": i, "a": at})
    policy = write_policies(tmp_path / "policies.yaml", server_db.url,
                            [{**POLICY, "align": "end_of_year", "batch_size": 10}], timezone="UTC")

    before = run_cli(policy, as_of="2025-12-31T23:59:59")
    assert before.exit_code == 0, before
    assert [p["partition"] for p in before.policy("events")["partitions"]] == ["p2022"]
    assert _ids(server_db) == {2, 3, 4} and _partitions(server_db) == {"p2023", "pmax"}

    on_the_day = run_cli(policy, as_of="2026-01-01T00:00:00")
    assert on_the_day.exit_code == 0, on_the_day
    assert on_the_day.policy("events")["partitions"] == [{"partition": "p2023", "rows": 2}]
    assert _ids(server_db) == {4} and _partitions(server_db) == {"pmax"}


def test_partitions_are_not_read_as_tables_of_their_own(db_factory: Any, tmp_path: Path) -> None:
    """PostgreSQL lists each partition as a table with a clone of its parent's foreign key: a
    person referenced by an event is deferred because of `events`, once, not also because of
    the partition that holds the event; `validate` names no partition."""
    db = db_factory("postgresql")
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE people (id bigint PRIMARY KEY, left_at timestamp)")
        conn.exec_driver_sql("CREATE TABLE events (id bigint NOT NULL, happened_at timestamp NOT NULL, "
                             "person_id bigint REFERENCES people (id), PRIMARY KEY (id, happened_at)) "
                             "PARTITION BY RANGE (happened_at)")
        conn.exec_driver_sql("CREATE TABLE ev2025 PARTITION OF events FOR VALUES FROM (MINVALUE) TO ('2026-01-01')")
        conn.exec_driver_sql("CREATE TABLE evmax PARTITION OF events FOR VALUES FROM ('2026-01-01') TO (MAXVALUE)")
        conn.exec_driver_sql("INSERT INTO people VALUES (1, '2020-01-01'), (2, '2020-01-01'), (3, '2020-01-01')")
        conn.exec_driver_sql("INSERT INTO events VALUES (1, '2025-06-01', 1), (2, '2026-06-01', 2)")
    policy = write_policies(tmp_path / "policies.yaml", db.url, [
        {"name": "people", "table": "people", "after": "left_at", "retain": "2 years", "action": "delete",
         "max_fraction": 1.0}], timezone="UTC")
    checked = invoke(["--policies", str(policy), "validate"])
    assert checked.exit_code == 0, checked
    assert "ev2025" not in checked.stdout + checked.stderr and "evmax" not in checked.stdout + checked.stderr

    result = run_cli(policy, "--force", as_of=AS_OF)
    assert result.exit_code == 0, result
    out = result.policy("people")
    assert (out["deferred"], out["deferred_reasons"], out["applied"]) == (2, {"events": 2}, 1)
    with db.engine.connect() as conn:
        assert sorted(r[0] for r in conn.execute(sa.text("SELECT id FROM people"))) == [1, 2]


def test_a_policy_may_still_name_a_partition_itself(db_factory: Any, tmp_path: Path) -> None:
    """Partitions are left out of the schema only where no policy names them: a policy on one
    partition validates and deletes its due rows (and only those), by plain SQL afterwards."""
    db = db_factory("postgresql")
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE events (id bigint NOT NULL, happened_at timestamp NOT NULL, "
                             "PRIMARY KEY (id, happened_at)) PARTITION BY RANGE (happened_at)")
        conn.exec_driver_sql("CREATE TABLE ev_old PARTITION OF events FOR VALUES FROM (MINVALUE) TO ('2026-01-01')")
        conn.exec_driver_sql("CREATE TABLE ev_new PARTITION OF events FOR VALUES FROM ('2026-01-01') TO (MAXVALUE)")
        conn.exec_driver_sql("INSERT INTO events VALUES (1, '2020-01-01'), (2, '2025-06-01'), (3, '2026-06-01')")
    policy = write_policies(tmp_path / "policies.yaml", db.url, [
        {"name": "old_events", "table": "ev_old", "key": "id", "after": "happened_at", "retain": "2 years",
         "action": "delete", "max_fraction": 1.0}], timezone="UTC")
    checked = invoke(["--policies", str(policy), "validate"])
    assert checked.exit_code == 0, checked
    result = run_cli(policy, "--force", as_of=AS_OF)
    assert result.exit_code == 0, result
    assert result.policy("old_events")["applied"] == 1
    assert _ids(db) == {2, 3}

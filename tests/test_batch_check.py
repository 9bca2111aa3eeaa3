"""Every batch checks itself before it is audited and committed: the statement changed exactly
the keys the batch selected, and none of them is left as it was. A mismatch rolls the batch back,
stops the policy (status failed, exit 1) and puts both numbers in the audit log.

Mismatches are injected the way they happen in the field: a trigger that silently skips a
delete (SQLite ``RAISE(IGNORE)``, a PostgreSQL BEFORE trigger returning NULL; MariaDB has no
silent skip, so its driver's count is patched), and a trigger that undoes an anonymisation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from helpers import audit_path, ids, run_cli, write_policies

from retention.audit.log import read_entries
from retention.engine.execution import Entry, Executor

if TYPE_CHECKING:
    from conftest import TestDatabase

DUE = set(range(1, 13))
RECENT = set(range(100, 120))
SKIPPED = 7  # in the second batch of five


def create(engine: sa.Engine) -> None:
    md = sa.MetaData()
    members = sa.Table("members", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                       sa.Column("left_at", sa.DateTime), sa.Column("street", sa.String(100)))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(members.insert(), [{"id": i, "left_at": dt.datetime(2020, 1, 1), "street": f"Straat {i}"}
                                        for i in DUE]
                     + [{"id": i, "left_at": dt.datetime(2026, 11, 1), "street": "Nieuw"} for i in RECENT])


TRIGGERS = {
    ("sqlite", "delete"): [f"CREATE TRIGGER rt_keep BEFORE DELETE ON members WHEN old.id = {SKIPPED} "
                           "BEGIN SELECT RAISE(IGNORE); END"],
    ("postgresql", "delete"): [
        f"CREATE FUNCTION rt_keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF OLD.id = {SKIPPED} "
        "THEN RETURN NULL; END IF; RETURN OLD; END $$",
        "CREATE TRIGGER rt_keep BEFORE DELETE ON members FOR EACH ROW EXECUTE FUNCTION rt_keep()"],
    ("sqlite", "anonymise"): [f"CREATE TRIGGER rt_undo AFTER UPDATE ON members WHEN new.id = {SKIPPED} "
                              "BEGIN UPDATE members SET street = old.street WHERE id = new.id; END"],
    ("postgresql", "anonymise"): [
        f"CREATE FUNCTION rt_undo() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.id = {SKIPPED} "
        "THEN NEW.street := OLD.street; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER rt_undo BEFORE UPDATE ON members FOR EACH ROW EXECUTE FUNCTION rt_undo()"],
    ("mariadb", "anonymise"): [
        f"CREATE TRIGGER rt_undo BEFORE UPDATE ON members FOR EACH ROW BEGIN IF NEW.id = {SKIPPED} "
        "THEN SET NEW.street = OLD.street; END IF; END"],
}


def policy(action: str) -> dict[str, Any]:
    p: dict[str, Any] = {"name": "members", "table": "members", "after": "left_at", "retain": "2 years",
                         "action": action, "batch_size": 5}
    if action == "anonymise":
        p["fields"] = {"street": "redact"}
    return p


@pytest.mark.parametrize("action", ["delete", "anonymise"])
def test_a_batch_that_changes_fewer_rows_than_it_selected_is_rolled_back(
        db: TestDatabase, tmp_path: Path, action: str, monkeypatch: pytest.MonkeyPatch) -> None:
    create(db.engine)
    statements = TRIGGERS.get((db.name, action))
    if statements:
        with db.engine.begin() as conn:
            for sql in statements:
                conn.exec_driver_sql(sql)
    else:  # MariaDB cannot skip a deleted row silently: its count comes back one short instead
        real = Executor._delete

        def short(self: Executor, conn: sa.Connection, keys: list[Any]) -> Entry:
            entry = real(self, conn, keys)
            return dataclasses.replace(entry, count=entry.count - 1) if SKIPPED in keys else entry

        monkeypatch.setattr(Executor, "_delete", short)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [policy(action)])

    result = run_cli(pf)
    assert result.exit_code == 1, result
    p = result.policy("members")
    assert p["status"] == "failed" and "self-check" in p["error"]
    assert p["applied"] == 5  # the committed first batch, reported after the failure too
    if action == "delete":
        # The first batch (1-5) committed; the second (6-10) was rolled back; 11, 12 never reached.
        assert ids(db.engine, "SELECT id FROM members") == (DUE - set(range(1, 6))) | RECENT
    else:
        assert ids(db.engine, "SELECT id FROM members WHERE street = '[verwijderd]'") == set(range(1, 6))
    entries = list(read_entries(audit_path(pf)))
    [mismatch] = [e for e in entries if e["event"] == "batch.mismatch"]
    assert mismatch["keys"] == [6, 7, 8, 9, 10] and mismatch["selected"] == 5
    if action == "delete":
        assert (mismatch["affected"], mismatch["left_unchanged"]) == (4, 0 if db.name == "mariadb" else 1)
    else:
        assert (mismatch["affected"], mismatch["left_unchanged"]) == (5, 1)
    # Only the first batch was audited as changed.
    assert [k for e in entries if e["event"] == "batch" for k in e["keys"]] == [1, 2, 3, 4, 5]
    assert [e["status"] for e in entries if e["event"] == "run.end"] == ["failed"]

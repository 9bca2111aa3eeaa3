"""`retention audit find --policy NAME --key KEY`: every run and batch that touched one key,
what was done, under which rule and basis; streamed, so a long log is not loaded."""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from helpers import SHOP_POLICIES, SHOP_TODAY, audit_path, invoke, run_cli, write_policies

from retention.audit import find as finder
from retention.audit.log import AuditLog
from retention.demo import create_shop

if TYPE_CHECKING:
    from conftest import TestDatabase


def found(policy_file: Path, *args: str) -> dict[str, Any]:
    out = invoke(["--policies", str(policy_file), "audit", "find", *args, "--format", "json"])
    assert out.exit_code == 0, out
    return json.loads(out.stdout)


def accounts(engine: sa.Engine) -> dict[int, str | None]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT id, email FROM accounts")).all())


def test_find_names_the_run_batch_action_rule_and_basis_of_real_runs(db: TestDatabase, tmp_path: Path) -> None:
    create_shop(db.engine, accounts=200, seed=13, today=SHOP_TODAY)
    policy_file = write_policies(tmp_path / "policies.yaml", db.url, SHOP_POLICIES)
    before = accounts(db.engine)
    result = run_cli(policy_file)
    assert result.exit_code == 0, result
    after = accounts(db.engine)
    deleted = sorted(set(before) - set(after))
    anonymised = sorted(k for k in after if after[k] != before[k])
    untouched = sorted(k for k in after if after[k] == before[k])
    assert deleted and anonymised and untouched  # the shop's accounts policy does all three
    start = next(json.loads(line) for line in audit_path(policy_file).read_text().splitlines()
                 if '"event":"run.start"' in line)
    rule = next(p for p in start["policies"] if p["name"] == "accounts")

    for key, action in ((deleted[0], "delete"), (deleted[-1], "delete"), (anonymised[0], "anonymise")):
        doc = found(policy_file, "--policy", "accounts", "--key", str(key))
        [touch] = doc["touches"]
        assert (touch["action"], touch["outcome"], touch["run"]) == (action, "committed", start["run"])
        assert (touch["table"], touch["key_column"]) == ("accounts", "id")
        assert touch["rule"]["cutoff"] == rule["cutoff"] and touch["rule"]["retain"] == "24 months"
        assert touch["rule"]["basis"] == "Privacyverklaring" and touch["rule"]["as_of"] == start["as_of"]
        if action == "anonymise":
            assert "email" in touch["columns"]
        else:
            assert set(touch["cascaded"]) == {"orders"}
    assert found(policy_file, "--policy", "accounts", "--key", str(untouched[0]))["touches"] == []
    # The same number as a key of another policy is another row.
    other = found(policy_file, "--policy", "invoices", "--key", str(deleted[0]))["touches"]
    assert all(t["table"] == "invoices" and t["policy"] == "invoices" for t in other)

    text = invoke(["--policies", str(policy_file), "audit", "find", "--policy", "accounts",
                   "--key", str(deleted[0])]).stdout
    assert f"shop.accounts id = {deleted[0]}: deleted" in text and "basis: Privacyverklaring" in text
    assert f"due when its event is at or before {rule['cutoff']}" in text


def synthetic_log(path: Path) -> Path:
    """Two nights; key 12 anonymised on the first and deleted on the second; 123 and "12" as a
    string elsewhere; an intent without its commit that a third run recovers; another policy."""
    state = {"now": datetime(2026, 11, 24, 2, 0, tzinfo=UTC)}

    def clock() -> datetime:
        state["now"] += timedelta(seconds=1)
        return state["now"]

    with AuditLog(path, clock=clock) as log:
        for night, (action, keys) in enumerate([("anonymise", [3, 12, 99]), ("delete", [12, 123])], start=1):
            run = f"run-{night}"
            log.append("run.start", run, as_of=f"2026-11-2{3 + night}T03:00:00+01:00", dry_run=False, policies=[
                {"name": "accounts", "retain": "24 months", "align": "none", "basis": "privacy statement",
                 "cutoff": f"2024-11-2{3 + night}T03:00:00+01:00"},
                {"name": "tickets", "retain": "2 years", "align": "none", "basis": "service",
                 "cutoff": f"2024-11-2{3 + night}T03:00:00+01:00"}])
            log.append("batch", run, policy="accounts", database="shop", table="accounts", action=action,
                       state="intent", batch=1, key_column="id", keys=keys, columns=["email"] if night == 1 else [],
                       count=len(keys), cascaded={"orders": 4} if action == "delete" else {})
            log.append("batch.committed", run, policy="accounts", batch=1, count=len(keys))
            log.append("batch", run, policy="tickets", database="shop", table="tickets", action="delete",
                       state="intent", batch=2, key_column="id", keys=[12], columns=[], count=1, cascaded={})
            log.append("batch.committed", run, policy="tickets", batch=2, count=1)
            log.append("run.end", run, status="ok", exit_code=0, duration_ms=10)
        log.append("run.start", "run-3", as_of="2026-11-27T03:00:00+01:00", dry_run=False, policies=[
            {"name": "accounts", "retain": "24 months", "align": "none", "basis": "privacy statement",
             "cutoff": "2024-11-27T03:00:00+01:00"}])
        log.append("batch", "run-3", policy="accounts", database="shop", table="accounts", action="delete",
                   state="intent", batch=1, key_column="email", keys=['a"b', "12x", 9007199254740993], columns=[],
                   count=3, cascaded={})
        log.append("batch", "run-3", policy="accounts", database="shop", table="archive", action="delete",
                   state="intent", batch=2, key_column="id", keys=[12], columns=[], count=1, cascaded={})
        log.append("run.interrupted", "run-4", interrupted_run="run-3")
        log.append("batch.recovered", "run-4", policy="accounts", of_run="run-3", batch=1, result="applied")
    return path


def test_find_on_a_history_of_runs(tmp_path: Path) -> None:
    log = synthetic_log(tmp_path / "log.jsonl")
    twelve = finder.find(log, "accounts", "12")
    assert [(t.run, t.action, t.outcome, t.table) for t in twelve.touches] == [
        ("run-1", "anonymise", "committed", "accounts"), ("run-2", "delete", "committed", "accounts"),
        ("run-3", "delete", "fate unknown", "archive")]
    assert twelve.touches[0].rule.cutoff == "2024-11-24T03:00:00+01:00"
    assert twelve.touches[1].rule.basis == "privacy statement" and twelve.touches[1].cascaded == {"orders": 4}
    assert [t.run for t in finder.find(log, "accounts", "12", table="accounts").touches] == ["run-1", "run-2"]
    assert [t.run for t in finder.find(log, "tickets", "12").touches] == ["run-1", "run-2"]
    assert [t.run for t in finder.find(log, "accounts", "123").touches] == ["run-2"]
    assert finder.find(log, "accounts", "1").touches == [] and finder.find(log, "nope", "12").touches == []
    # String keys, quotes in them, and a 64-bit key the log holds as a string.
    for key in ('a"b', "12x", "9007199254740993"):
        [touch] = finder.find(log, "accounts", key).touches
        assert (touch.run, touch.outcome, touch.checked_by) == ("run-3", "applied", "run-4")
    text = "\n".join(finder.render_text(finder.find(log, "accounts", "12")))
    assert "run stopped before the commit was recorded" in text and "cascade: child rows deleted" in text


def test_find_streams_the_log(tmp_path: Path) -> None:
    """Memory does not grow with the log: a 20 MB log is searched within 3 MB of Python heap."""
    log = tmp_path / "big.jsonl"
    with AuditLog(log) as audit:
        for night in range(60):
            run = f"run-{night}"
            items: list[tuple[str, str, dict[str, Any]]] = [("run.start", run, {"policies": [
                {"name": "accounts", "retain": "24 months", "cutoff": f"night {night}", "basis": "b"}]})]
            for b in range(250):
                keys = list(range((night * 250 + b) * 100, (night * 250 + b + 1) * 100))
                items.append(("batch", run, {"policy": "accounts", "table": "accounts", "action": "delete",
                                              "state": "intent", "batch": b, "keys": keys, "count": 100}))
                items.append(("batch.committed", run, {"policy": "accounts", "batch": b, "count": 100}))
            audit.append_many(items)
    assert log.stat().st_size > 20_000_000
    tracemalloc.start()
    result = finder.find(log, "accounts", str(31 * 25_000 + 7 * 100 + 42))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    [touch] = result.touches
    assert (touch.run, touch.batch, touch.outcome, touch.rule.cutoff) == ("run-31", 7, "committed", "night 31")
    assert result.lines == 60 * 501 and peak < 3_000_000, peak

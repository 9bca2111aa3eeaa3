"""Plan, approve, apply (issue 16): a person's sign-off bound to exactly the keys a run changes.

A small shop of accounts and their orders, built here; every expectation is plain SQL written
in the test. The CLI is driven through CliRunner (helpers.invoke) on every database.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pendulum
import pytest
import sqlalchemy as sa
from helpers import AS_OF, audit_path, ids, invoke, run_cli, scalar, unchanged_witness, write_policies

if TYPE_CHECKING:
    from conftest import TestDatabase

ACCOUNTS = {
    "name": "accounts", "table": "accounts", "after": "deregistered_at", "retain": "24 months",
    "action": "delete", "exclude": {"legal_hold": True}, "max_fraction": 1,
}
ORDERS = {"name": "orders", "table": "orders", "after": "placed_at", "retain": "7 years", "action": "delete",
          "max_fraction": 1}
# What "due" means for the accounts policy at AS_OF, in plain SQL (24 months before 2026-11-24 03:00).
DUE_ACCOUNTS_SQL = ("SELECT id FROM accounts WHERE deregistered_at <= '2024-11-24 03:00:00' "
                    "AND legal_hold = :f AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.account_id = accounts.id "
                    "AND o.placed_at > '2019-11-24 03:00:00')")
DUE_ORDERS_SQL = "SELECT id FROM orders WHERE placed_at <= '2019-11-24 03:00:00'"


def build(engine: sa.Engine) -> None:
    md = sa.MetaData()
    accounts = sa.Table("accounts", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                        sa.Column("name", sa.String(40)), sa.Column("deregistered_at", sa.DateTime),
                        sa.Column("legal_hold", sa.Boolean, nullable=False))
    orders = sa.Table("orders", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id")),
                      sa.Column("placed_at", sa.DateTime, nullable=False))
    md.create_all(engine)
    rows = []
    for i in range(1, 41):
        # 1-24 deregistered in 2022 (past 24 months), 25-32 in 2026 (not yet), 33-40 still customers.
        gone = dt.datetime(2022, 3, 1, 12) if i <= 24 else dt.datetime(2026, 3, 1) if i <= 32 else None
        rows.append({"id": i, "name": f"n{i}", "deregistered_at": gone, "legal_hold": i == 7})
    with engine.begin() as conn:
        conn.execute(accounts.insert(), rows)
        conn.execute(orders.insert(), [
            {"id": 1, "account_id": 1, "placed_at": dt.datetime(2015, 5, 1)},  # due: account 1 goes too
            {"id": 2, "account_id": 2, "placed_at": dt.datetime(2021, 5, 1)},  # kept: defers account 2
            {"id": 3, "account_id": 3, "placed_at": dt.datetime(2016, 5, 1)},
            {"id": 4, "account_id": 30, "placed_at": dt.datetime(2014, 5, 1)},
        ])


def setup(db: TestDatabase, tmp_path: Path, policies: list[dict[str, Any]] | None = None) -> Path:
    build(db.engine)
    return write_policies(tmp_path / "policies.yaml", db.url, policies or [ORDERS, ACCOUNTS])


def cli(policy: Path, *args: str) -> Any:
    return invoke(["--policies", str(policy), "--log-format", "json", *args])


def make_plan(policy: Path, plan: Path, *extra: str) -> Any:
    out = cli(policy, "plan", "-o", str(plan), "--as-of", AS_OF, *extra)
    assert out.exit_code == 0, out
    return out


def approve(policy: Path, plan: Path, by: str = "A. de Vries") -> Any:
    out = cli(policy, "approve", str(plan), "--by", by, "--role", "DPO", "--note", "checked")
    assert out.exit_code == 0, out
    return out


def shown(policy: Path, plan: Path) -> dict[str, Any]:
    out = cli(policy, "plan", "show", str(plan), "--format", "json")
    assert out.exit_code == 0, out
    return json.loads(out.stdout)


def entries(policy: Path, event: str) -> list[dict[str, Any]]:
    lines = audit_path(policy).read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


def false(db: TestDatabase) -> Any:
    return False if db.name == "postgresql" else 0


def test_approve_then_apply_changes_exactly_the_planned_keys(db: TestDatabase, tmp_path: Path) -> None:
    policy = setup(db, tmp_path)
    due_accounts = ids(db.engine, DUE_ACCOUNTS_SQL, f=false(db))
    # An order removed tonight frees its account in the same run (orders run first).
    due_accounts |= {1, 3}
    due_orders = ids(db.engine, DUE_ORDERS_SQL)
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)

    doc = shown(policy, plan)
    counts = {p["name"]: p["counts"] for p in doc["policies"]}
    assert counts["accounts"]["delete"] == len(due_accounts)
    assert counts["accounts"]["defer"] == 1  # account 2, referenced by its 2021 order
    assert counts["accounts"]["held"] == 1  # account 7
    assert counts["orders"]["delete"] == len(due_orders) == 3
    assert doc["approvals"] == []

    approved = approve(policy, plan)
    assert doc["plan"] in approved.stdout
    [entry] = entries(policy, "plan.approved")
    assert entry["plan"] == doc["plan"] and entry["approver"] == "A. de Vries" and entry["role"] == "DPO"
    assert entry["counts"]["accounts"] == {"delete": len(due_accounts), "anonymise": 0, "defer": 1}
    # The approval does not change what was approved: same content hash, approval listed.
    again = shown(policy, plan)
    assert again["plan"] == doc["plan"] and again["approvals"][0]["by"] == "A. de Vries"

    keep_accounts = ids(db.engine, "SELECT id FROM accounts") - due_accounts
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 0, run
    assert ids(db.engine, "SELECT id FROM accounts") == keep_accounts
    assert ids(db.engine, "SELECT id FROM orders") == {2}
    assert run.policy("accounts")["applied"] == len(due_accounts)
    assert run.policy("accounts")["skipped_keys"] == 0 and run.policy("accounts")["plan"] == doc["plan"]
    # Every batch of the run is tied to the plan.
    [start] = entries(policy, "run.start")
    assert start["plan"] == doc["plan"]
    batches = entries(policy, "batch")
    assert batches and all(b["plan"] == doc["plan"] for b in batches)
    assert sorted(k for b in batches if b["table"] == "accounts" for k in b["keys"]) == sorted(due_accounts)


def test_a_key_held_after_approval_is_skipped_and_reported(db: TestDatabase, tmp_path: Path) -> None:
    policy = setup(db, tmp_path)
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    approve(policy, plan)
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE accounts SET legal_hold = :t WHERE id = 5"), {"t": True})
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 0, run
    assert scalar(db.engine, "SELECT count(*) FROM accounts WHERE id = 5") == 1
    accounts = run.policy("accounts")
    assert accounts["skipped_keys"] == 1 and accounts["applied"] == accounts["planned_keys"] - 1
    assert 5 not in {k for b in entries(policy, "batch") for k in b["keys"]}


def test_a_key_outside_the_plan_is_never_touched(db: TestDatabase, tmp_path: Path) -> None:
    policy = setup(db, tmp_path)
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    approve(policy, plan)
    with db.engine.begin() as conn:  # due tonight, but nobody approved it
        conn.execute(sa.text("INSERT INTO accounts (id, name, deregistered_at, legal_hold) "
                             "VALUES (99, 'late', :d, :f)"), {"d": dt.datetime(2021, 1, 1), "f": false(db)})
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 0, run
    assert scalar(db.engine, "SELECT count(*) FROM accounts WHERE id = 99") == 1
    # ...which a plain run would have deleted: the restriction is what kept it.
    plain = run_cli(policy)
    assert plain.exit_code == 0, plain
    assert scalar(db.engine, "SELECT count(*) FROM accounts WHERE id = 99") == 0


@pytest.mark.parametrize("edit", ["rule", "comment"])
def test_a_policy_file_edit_after_approval_is_refused(db: TestDatabase, tmp_path: Path, edit: str) -> None:
    policy = setup(db, tmp_path)
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    approve(policy, plan)
    if edit == "rule":
        write_policies(policy, db.url, [ORDERS, {**ACCOUNTS, "retain": "12 months"}])
    else:
        policy.write_text(policy.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    before = unchanged_witness(db)
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 3, run
    assert "policy file" in run.stderr and "changed since the plan" in run.stderr
    assert unchanged_witness(db) == before


def _tamper(plan: Path, how: str) -> None:
    doc = json.loads(plan.read_text(encoding="utf-8"))
    accounts = next(p for p in doc["policies"] if p["name"] == "accounts")
    if how == "key":  # the first run of keys now starts one later: another account
        accounts["keys"]["delete"]["int_runs"][0] += 30
    elif how == "count":
        accounts["counts"]["delete"] += 1
        accounts["keys"]["delete"]["count"] += 1
    else:  # a count only: the file no longer agrees with itself
        accounts["counts"]["delete"] += 1
    plan.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize("how", ["key", "count", "count_only"])
def test_a_tampered_plan_file_is_refused(db: TestDatabase, tmp_path: Path, how: str) -> None:
    policy = setup(db, tmp_path)
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    approve(policy, plan)
    _tamper(plan, how)
    before = unchanged_witness(db)
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 3, run
    assert "edited" in run.stderr
    assert unchanged_witness(db) == before
    assert entries(policy, "run.start") == []


def test_an_unapproved_plan_is_refused(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    policy = setup(sqlite_db, tmp_path)
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    before = unchanged_witness(sqlite_db)
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 3 and "not approved" in run.stderr, run
    assert unchanged_witness(sqlite_db) == before


def test_a_plan_older_than_the_max_age_is_refused(db: TestDatabase, tmp_path: Path) -> None:
    policy = setup(db, tmp_path)
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    doc = json.loads(plan.read_text(encoding="utf-8"))
    doc["created"] = pendulum.now("UTC").subtract(days=8).isoformat()  # before approval: a real 8-day-old plan
    plan.write_text(json.dumps(doc), encoding="utf-8")
    approve(policy, plan)
    before = unchanged_witness(db)
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 3 and "older than the maximum age" in run.stderr, run
    assert unchanged_witness(db) == before
    run = run_cli(policy, "--plan", str(plan), "--plan-max-age", "9d")
    assert run.exit_code == 0, run
    assert run.policy("accounts")["applied"] > 0


def test_approval_required_waits_for_a_plan_and_runs_from_one(db: TestDatabase, tmp_path: Path) -> None:
    policy = setup(db, tmp_path, [ORDERS, {**ACCOUNTS, "approval": "required"}])
    accounts_before = ids(db.engine, "SELECT id FROM accounts")
    preview = run_cli(policy, "--dry-run")
    assert preview.exit_code == 0, preview
    assert any("approval: required" in w for w in preview.policy("accounts")["warnings"])
    run = run_cli(policy)
    assert run.exit_code == 3, run
    assert run.data["status"] == "awaiting approval"
    assert run.policy("accounts")["status"] == "awaiting approval" and run.policy("accounts")["applied"] == 0
    assert ids(db.engine, "SELECT id FROM accounts") == accounts_before
    # The other policy ran.
    assert run.policy("orders")["status"] == "ok" and ids(db.engine, "SELECT id FROM orders") == {2}

    due = ids(db.engine, DUE_ACCOUNTS_SQL, f=false(db))
    plan = tmp_path / "night.plan"
    make_plan(policy, plan, "--policy", "accounts")
    approve(policy, plan)
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 0, run
    assert run.policy("accounts")["status"] == "ok" and run.policy("accounts")["applied"] == len(due)
    assert ids(db.engine, "SELECT id FROM accounts") == accounts_before - due


def test_a_guard_blocked_backlog_is_drained_by_an_approved_plan(db: TestDatabase, tmp_path: Path) -> None:
    policy = setup(db, tmp_path, [{**ACCOUNTS, "max_fraction": 0.1}])
    run = run_cli(policy)
    assert run.exit_code == 3, run
    assert "approve a plan (retention plan / approve / run --plan) or use --force" in run.policy("accounts")["error"]
    due = ids(db.engine, DUE_ACCOUNTS_SQL.replace("> '2019-11-24 03:00:00'", "IS NOT NULL"), f=false(db))
    assert len(due) > 4  # more than 10 % of 40 accounts: the guard's case
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    approve(policy, plan)
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 0, run
    assert run.policy("accounts")["applied"] == len(due)
    assert ids(db.engine, "SELECT id FROM accounts") & due == set()


def test_plan_show_text_and_html_name_the_counts_and_approvals(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    policy = setup(sqlite_db, tmp_path)
    plan = tmp_path / "night.plan.gz"  # gzip'd by its name
    make_plan(policy, plan)
    assert plan.read_bytes()[:2] == b"\x1f\x8b"
    approve(policy, plan, by="B. Jansen")
    text = cli(policy, "plan", "show", str(plan))
    assert text.exit_code == 0, text
    assert "to delete" in text.stdout and "B. Jansen (DPO): checked" in text.stdout
    page = cli(policy, "plan", "show", str(plan), "--format", "html")
    assert page.stdout.startswith("<!DOCTYPE html>") and "B. Jansen" in page.stdout and "<script" not in page.stdout


def test_plan_writes_nothing_and_requires_an_output(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    policy = setup(sqlite_db, tmp_path)
    before = unchanged_witness(sqlite_db)
    out = cli(policy, "plan")
    assert out.exit_code == 2 and "-o PLAN" in out.stderr
    make_plan(policy, tmp_path / "p.plan")
    assert unchanged_witness(sqlite_db) == before
    assert not audit_path(policy).exists()


def test_a_planned_parent_waits_for_a_child_row_the_plan_does_not_cover(db: TestDatabase, tmp_path: Path) -> None:
    """Orders run first; an order that became due after the plan stays (nobody approved it), so
    its account, planned for deletion, is skipped instead of deleted under it."""
    policy = setup(db, tmp_path)
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    approve(policy, plan)
    with db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO orders (id, account_id, placed_at) VALUES (50, 1, :d)"),
                     {"d": dt.datetime(2015, 6, 1)})
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 0, run
    assert scalar(db.engine, "SELECT count(*) FROM orders WHERE id = 50") == 1
    assert scalar(db.engine, "SELECT count(*) FROM accounts WHERE id = 1") == 1
    assert run.policy("accounts")["skipped_keys"] == 1 and run.policy("orders")["skipped_keys"] == 0


def test_audit_show_names_the_plan_and_who_approved_it(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    policy = setup(sqlite_db, tmp_path)
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    approve(policy, plan, by="C. Bakker")
    sha = shown(policy, plan)["plan"]
    assert run_cli(policy, "--plan", str(plan)).exit_code == 0
    out = cli(policy, "audit", "show")
    assert out.exit_code == 0, out
    assert f"Applied plan {sha[:16]}, approved by C. Bakker (DPO)" in out.stdout
    assert "approve-" not in out.stdout  # an approval is no run
    data = json.loads(cli(policy, "audit", "show", "--format", "json").stdout)
    [run] = data["runs"]
    assert run["plan"] == sha and run["approvals"][0]["approver"] == "C. Bakker"


def test_approval_takes_only_none_or_required(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    policy = setup(sqlite_db, tmp_path, [{**ACCOUNTS, "approval": "yes"}])
    out = cli(policy, "validate")
    assert out.exit_code == 2
    assert "approval" in out.stderr and "none, required" in out.stderr


@pytest.fixture
def endpoint() -> Any:
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/ping/abc", seen
    server.shutdown()


def test_the_monitor_hears_a_policy_awaiting_approval(sqlite_db: TestDatabase, tmp_path: Path,
                                                      endpoint: tuple[str, list[str]]) -> None:
    import yaml

    url, seen = endpoint
    policy = setup(sqlite_db, tmp_path, [{**ACCOUNTS, "approval": "required"}])
    doc = yaml.safe_load(policy.read_text(encoding="utf-8"))
    policy.write_text(yaml.safe_dump(doc | {"monitor": {"url": url}}, sort_keys=False), encoding="utf-8")
    assert run_cli(policy).exit_code == 3
    # healthchecks' forms: start and end paired by ?rid=, the end as URL/<exit code> (docs/safety.md).
    paths = [p.partition("?")[0] for p in seen]
    assert paths == ["/ping/abc/start", "/ping/abc/3"]
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    approve(policy, plan)
    seen.clear()
    assert run_cli(policy, "--plan", str(plan)).exit_code == 0
    assert [p.partition("?")[0] for p in seen] == ["/ping/abc/start", "/ping/abc"]


ANONYMISE = {
    "name": "accounts", "table": "accounts", "after": "deregistered_at", "retain": "24 months",
    "action": "anonymise", "exclude": {"legal_hold": True}, "max_fraction": 1, "reidentification": "warn",
    "fields": {"name": None}, "keep": {"deregistered_at": "the term's event", "legal_hold": "hold flag"},
}


def test_an_anonymise_policy_anonymises_only_the_planned_keys(db: TestDatabase, tmp_path: Path) -> None:
    policy = setup(db, tmp_path, [ANONYMISE])
    due = ids(db.engine, "SELECT id FROM accounts WHERE deregistered_at <= '2024-11-24 03:00:00' "
                         "AND legal_hold = :f AND name IS NOT NULL", f=false(db))
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    approve(policy, plan)
    with db.engine.begin() as conn:  # one more due after the plan, one held since
        conn.execute(sa.text("UPDATE accounts SET deregistered_at = :d WHERE id = 30"), {"d": dt.datetime(2021, 1, 1)})
        conn.execute(sa.text("UPDATE accounts SET legal_hold = :t WHERE id = 4"), {"t": True})
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 0, run
    assert ids(db.engine, "SELECT id FROM accounts WHERE name IS NULL") == due - {4}
    assert run.policy("accounts")["skipped_keys"] == 1 and run.policy("accounts")["applied"] == len(due) - 1


def test_a_planned_anonymisation_is_not_turned_into_a_deletion(db: TestDatabase, tmp_path: Path) -> None:
    """on_referenced: anonymise: account 2 is planned for anonymisation (its 2021 order stays);
    the order goes after the approval, so tonight the engine would delete the account: the plan
    approved an anonymisation, so the account is skipped, not deleted."""
    accounts = {**ACCOUNTS, "on_referenced": "anonymise", "reidentification": "warn", "fields": {"name": None},
                "keep": {"deregistered_at": "the term's event", "legal_hold": "hold flag"}}
    policy = setup(db, tmp_path, [accounts])
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    doc = shown(policy, plan)
    assert doc["policies"][0]["counts"]["anonymise"] == 3  # accounts 1, 2, 3: each with an order that stays
    approve(policy, plan)
    with db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM orders WHERE id = 2"))
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 0, run
    assert scalar(db.engine, "SELECT count(*) FROM accounts WHERE id = 2") == 1
    assert scalar(db.engine, "SELECT name FROM accounts WHERE id = 2") == "n2"
    assert ids(db.engine, "SELECT id FROM accounts WHERE name IS NULL") == {1, 3}
    assert run.policy("accounts")["skipped_keys"] == 1


def test_an_approval_forged_into_a_keyed_log_does_not_count(sqlite_db: TestDatabase, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Edit the plan, then append a plan.approved line for the new content without the chain's
    key: its hash does not verify, so the plan counts as unapproved."""
    import hashlib

    monkeypatch.setenv("PLAN_TEST_KEY", "secret")
    policy = setup(sqlite_db, tmp_path)
    text = policy.read_text(encoding="utf-8").replace("  path: audit/retention.jsonl",
                                                      "  path: audit/retention.jsonl\n  key_env: PLAN_TEST_KEY")
    policy.write_text(text, encoding="utf-8")
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    approve(policy, plan)
    _tamper(plan, "key")
    sha = shown(policy, plan)["plan"]
    log = audit_path(policy)
    last = json.loads(log.read_text(encoding="utf-8").splitlines()[-1])
    forged = {**last, "plan": sha, "seq": last["seq"] + 1, "prev": last["hash"]}
    body = {k: v for k, v in forged.items() if k != "hash"}
    forged["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    with log.open("a", encoding="utf-8") as f:
        f.write(json.dumps(forged, sort_keys=True, separators=(",", ":")) + "\n")
    before = unchanged_witness(sqlite_db)
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 3, run
    assert "edited after approval" in run.stderr
    assert unchanged_witness(sqlite_db) == before


def test_a_plan_over_two_databases_is_approved_in_each_log_and_applied_per_database(
        db_factory: Any, tmp_path: Path) -> None:
    import yaml

    a, b = db_factory("sqlite"), db_factory("postgresql")
    for d in (a, b):
        build(d.engine)
    doc = {
        "version": 1, "timezone": "Europe/Amsterdam",
        "databases": {"alpha": {"url": a.url, "purge": "none"}, "beta": {"url": b.url, "purge": "none"}},
        "audit": {"path": "audit/{database}.jsonl"},
        "policies": [{**ACCOUNTS, "name": "accounts_alpha", "database": "alpha"},
                     {**ACCOUNTS, "name": "accounts_beta", "database": "beta"}],
    }
    policy = tmp_path / "fleet.yaml"
    policy.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    for name in ("alpha", "beta"):  # {database} in audit.path: one plan per database
        out = cli(policy, "plan", "-o", str(tmp_path / f"{name}.plan"), "--as-of", AS_OF, "--database", name)
        assert out.exit_code == 0, out
    plan = tmp_path / "beta.plan"
    approve(policy, plan)
    assert (tmp_path / "audit/beta.jsonl").exists() and not (tmp_path / "audit/alpha.jsonl").exists()
    due_b = ids(b.engine, DUE_ACCOUNTS_SQL.replace("> '2019-11-24 03:00:00'", "IS NOT NULL"), f=False)
    before_a = unchanged_witness(a)
    run = run_cli(policy, "--plan", str(plan), "--database", "beta")
    assert run.exit_code == 0, run
    assert ids(b.engine, "SELECT id FROM accounts") & due_b == set() and due_b
    assert unchanged_witness(a) == before_a
    # The beta plan is not approved in alpha's log, and is not alpha's plan anyway.
    refused = run_cli(policy, "--plan", str(plan), "--database", "alpha")
    assert refused.exit_code == 3, refused
    assert unchanged_witness(a) == before_a


def test_a_plan_that_looks_ahead_never_removes_a_row_before_its_term(db: TestDatabase, tmp_path: Path) -> None:
    """A plan made --as-of a future day lists rows due by then; the run applies only those
    due tonight (account 30 reaches its term on 2027-03-01, after tonight)."""
    policy = setup(db, tmp_path)
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE accounts SET deregistered_at = :d WHERE id = 30"), {"d": dt.datetime(2025, 3, 1)})
    plan = tmp_path / "ahead.plan"
    out = cli(policy, "plan", "-o", str(plan), "--as-of", "2027-06-01")
    assert out.exit_code == 0, out
    approve(policy, plan)
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 0, run
    assert scalar(db.engine, "SELECT count(*) FROM accounts WHERE id = 30") == 1
    assert run.policy("accounts")["skipped_keys"] >= 1
    assert 30 not in {k for b in entries(policy, "batch") for k in b["keys"]}


def test_text_keys_are_planned_and_applied_exactly(db: TestDatabase, tmp_path: Path) -> None:
    md = sa.MetaData()
    sessions = sa.Table("sessions", md, sa.Column("id", sa.String(20), primary_key=True),
                        sa.Column("ended_at", sa.DateTime, nullable=False))
    md.create_all(db.engine)
    with db.engine.begin() as conn:
        conn.execute(sessions.insert(), [{"id": f"s-{i:03d}", "ended_at": dt.datetime(2026 if i % 3 else 2020, 1, 1)}
                                         for i in range(60)])
    policy = write_policies(tmp_path / "policies.yaml", db.url, [
        {"name": "sessions", "table": "sessions", "after": "ended_at", "retain": "1 year", "action": "delete",
         "max_fraction": 1, "batch_size": 7}])
    due = ids(db.engine, "SELECT id FROM sessions WHERE ended_at <= '2025-11-24 03:00:00'")
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    approve(policy, plan)
    with db.engine.begin() as conn:  # due tonight, not in the plan
        conn.execute(sessions.insert(), [{"id": "s-late", "ended_at": dt.datetime(2020, 1, 1)}])
    run = run_cli(policy, "--plan", str(plan))
    assert run.exit_code == 0, run
    assert run.policy("sessions")["applied"] == len(due) == 20
    assert ids(db.engine, "SELECT id FROM sessions") & due == set()
    assert scalar(db.engine, "SELECT count(*) FROM sessions WHERE id = 's-late'") == 1


def test_a_plan_made_on_another_database_is_refused(db_factory: Any, tmp_path: Path) -> None:
    """Same name in the policy file, another database behind it (a copy): refused, untouched."""
    a, b = db_factory("sqlite"), db_factory("sqlite")
    build(a.engine)
    build(b.engine)
    policy = write_policies(tmp_path / "policies.yaml", a.url, [ACCOUNTS])
    plan = tmp_path / "night.plan"
    make_plan(policy, plan)
    approve(policy, plan)
    text = policy.read_text(encoding="utf-8").replace(a.url, b.url)
    other = tmp_path / "other.yaml"
    other.write_text(text, encoding="utf-8")
    # Same content apart from the URL: the policy file's hash differs, so check the database
    # identity on its own by giving the plan the other file's hash.
    doc = json.loads(plan.read_text(encoding="utf-8"))
    before = unchanged_witness(b)
    from retention.policy import loader

    doc["policy_file_sha256"] = loader.load(other).source_sha256
    doc["approvals"] = []
    plan.write_text(json.dumps(doc), encoding="utf-8")
    out = cli(other, "approve", str(plan), "--by", "A. de Vries")
    assert out.exit_code == 0, out
    run = run_cli(other, "--plan", str(plan))
    assert run.exit_code == 3, run
    assert "is not the one planned" in run.stderr
    assert unchanged_witness(b) == before

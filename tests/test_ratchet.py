"""The policy ratchet: a policy edited to change more rows than before is blocked on its own
(exit 3, the other policies run) until one real run accepts the change by name, which the audit
log records with the old and new rule and the user. Lengthening a term or adding a hold passes.

Counts are checked against plain SQL; each night is a real run one day after the last.
"""

from __future__ import annotations

import copy
import datetime as dt
import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pendulum
import pytest
import sqlalchemy as sa
from helpers import audit_path, ids, run_cli, write_policies

from retention.audit.log import read_entries, verify
from retention.engine import guards
from retention.policy.dates import cutoff, parse_period

if TYPE_CHECKING:
    from conftest import TestDatabase

D = dt.datetime
OLD = set(range(1, 6))  # left 2021: due under 24 months
RECENT = set(range(6, 16))  # left June 2026: due under 1 month, not under 24
NEW = {16, 17}  # left last week: due under neither
HELD = {18, 19}  # left 2021, on legal hold
TICKETS_DUE = {1, 2}

NIGHTS = ["2026-11-24T03:00:00", "2026-11-25T03:00:00", "2026-11-26T03:00:00", "2026-11-27T03:00:00"]


def create(engine: sa.Engine) -> None:
    md = sa.MetaData()
    accounts = sa.Table("accounts", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                        sa.Column("left_at", sa.DateTime), sa.Column("legal_hold", sa.Boolean, nullable=False))
    tickets = sa.Table("tickets", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                       sa.Column("closed_at", sa.DateTime))
    md.create_all(engine)
    rows = [{"id": i, "left_at": D(2021, 3, i), "legal_hold": False} for i in OLD]
    rows += [{"id": i, "left_at": D(2026, 6, i), "legal_hold": False} for i in RECENT]
    rows += [{"id": i, "left_at": D(2026, 11, 20), "legal_hold": False} for i in NEW]
    rows += [{"id": i, "left_at": D(2021, 3, 1), "legal_hold": True} for i in HELD]
    with engine.begin() as conn:
        conn.execute(accounts.insert(), rows)
        # Night by night one more ticket falls due, so the other policy has work every night.
        conn.execute(tickets.insert(), [{"id": i, "closed_at": D(2020, 1, i)} for i in TICKETS_DUE]
                     + [{"id": 10 + i, "closed_at": D(2024, 11, 24 + i, 1)} for i in range(4)]
                     + [{"id": 100, "closed_at": D(2026, 1, 1)}])


ACCOUNTS: dict[str, Any] = {"name": "accounts", "table": "accounts", "after": "left_at", "retain": "24 months",
                            "action": "delete", "exclude": {"legal_hold": True}, "max_fraction": 1.0}
TICKETS: dict[str, Any] = {"name": "tickets", "table": "tickets", "after": "closed_at", "retain": "2 years",
                           "action": "delete", "max_fraction": 1.0}


def policies(db: TestDatabase, tmp_path: Path, **accounts: Any) -> Path:
    account_policy = {**copy.deepcopy(ACCOUNTS), **accounts}
    account_policy = {k: v for k, v in account_policy.items() if v is not None}
    return write_policies(tmp_path / "policies.yaml", db.url, [account_policy, dict(TICKETS)])


def accounts_left(db: TestDatabase) -> set[int]:
    return ids(db.engine, "SELECT id FROM accounts")


def test_a_shortened_term_is_blocked_until_accepted_and_the_acceptance_is_audited(
        db: TestDatabase, tmp_path: Path) -> None:
    """retain 24 months -> 1 month between two nights: the policy is blocked (nothing of it
    touched, the other policy runs, exit 3) night after night, until one run accepts it."""
    create(db.engine)
    pf = policies(db, tmp_path)
    first = run_cli(pf, as_of=NIGHTS[0])
    assert first.exit_code == 0, first
    assert accounts_left(db) == RECENT | NEW | HELD

    pf = policies(db, tmp_path, retain="1 month")
    preview = run_cli(pf, "--dry-run", as_of=NIGHTS[1])
    assert preview.exit_code == 3, preview
    p = preview.policy("accounts")
    # The preview says what changed and what the change would do.
    assert p["status"] == "blocked" and "retain 24 months -> 1 month" in p["error"]
    assert p["due"] == len(RECENT) and p["sample_keys"] == sorted(RECENT)[:5]

    for night in NIGHTS[1:3]:  # a blocked run does not become the new baseline
        blocked = run_cli(pf, as_of=night)
        assert blocked.exit_code == 3, blocked
        p = blocked.policy("accounts")
        assert p["status"] == "blocked" and p["applied"] == 0
        assert "retain 24 months -> 1 month" in p["error"] and "--accept-policy-change accounts" in p["error"]
        assert blocked.policy("tickets")["status"] == "ok"
        assert accounts_left(db) == RECENT | NEW | HELD
    assert ids(db.engine, "SELECT id FROM tickets") == {13, 100}  # the other policy ran every night

    accepted = run_cli(pf, "--accept-policy-change", "accounts", as_of=NIGHTS[3])
    assert accepted.exit_code == 0, accepted
    assert accepted.policy("accounts")["applied"] == len(RECENT)
    assert accounts_left(db) == NEW | HELD
    entries = list(read_entries(audit_path(pf)))
    [event] = [e for e in entries if e["event"] == "policy.change.accepted"]
    assert (event["policy"], event["user"]) == ("accounts", getpass.getuser())
    assert (event["old"]["retain"], event["new"]["retain"]) == ("24 months", "1 month")
    assert [c["key"] for c in event["changes"]] == ["retain"]
    assert verify(audit_path(pf)).ok

    # Accepted once is the new baseline: the next night runs without the option.
    again = run_cli(pf, as_of="2026-11-28T03:00:00")
    assert again.exit_code == 0, again


def test_a_removed_hold_is_blocked_and_the_held_rows_stay(db: TestDatabase, tmp_path: Path) -> None:
    create(db.engine)
    assert run_cli(policies(db, tmp_path), as_of=NIGHTS[0]).exit_code == 0
    pf = policies(db, tmp_path, exclude=None)
    blocked = run_cli(pf, as_of=NIGHTS[1])
    assert blocked.exit_code == 3, blocked
    assert "exclude {legal_hold: true} -> {}" in blocked.policy("accounts")["error"]
    assert accounts_left(db) == RECENT | NEW | HELD
    accepted = run_cli(pf, "--accept-policy-change", "accounts", as_of=NIGHTS[2])
    assert accepted.exit_code == 0, accepted
    assert accounts_left(db) == RECENT | NEW


def test_widened_where_other_column_and_raised_max_fraction_each_need_acceptance(
        db: TestDatabase, tmp_path: Path) -> None:
    create(db.engine)
    assert run_cli(policies(db, tmp_path, where={"legal_hold": False}, max_fraction=0.9),
                   as_of=NIGHTS[0]).exit_code == 0
    blocked = run_cli(policies(db, tmp_path, where={}, max_fraction=1.0, after="left_at"), as_of=NIGHTS[1])
    assert blocked.exit_code == 3, blocked
    error = blocked.policy("accounts")["error"]
    assert "where {legal_hold: false} -> {}" in error and "max_fraction 0.9 -> 1.0" in error


def test_a_longer_term_or_an_added_hold_passes_without_acceptance(db: TestDatabase, tmp_path: Path) -> None:
    create(db.engine)
    assert run_cli(policies(db, tmp_path), as_of=NIGHTS[0]).exit_code == 0
    longer = run_cli(policies(db, tmp_path, retain="36 months", exclude={"legal_hold": True, "id": 7}),
                     as_of=NIGHTS[1])
    assert longer.exit_code == 0, longer
    assert longer.policy("accounts")["status"] == "ok"
    assert not [e for e in read_entries(audit_path(tmp_path / "policies.yaml"))
                if e["event"] == "policy.change.accepted"]
    # Back from 36 to 24 months is shorter than the last real run's rule: blocked again.
    back = run_cli(policies(db, tmp_path), as_of=NIGHTS[2])
    assert back.exit_code == 3, back
    assert "retain 36 months -> 24 months" in back.policy("accounts")["error"]


def test_delete_instead_of_anonymise_is_a_change_to_accept(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    create(sqlite_db.engine)
    with sqlite_db.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE accounts ADD COLUMN street VARCHAR(100)"))
    # Every column accounted for, and the check let through (exact left_at values single each
    # row out): this test is about the ratchet, not about the anonymisation's quality.
    anonymise = {"action": "anonymise", "fields": {"street": "redact"},
                 "keep": {"legal_hold": "false on every anonymised row"}, "reidentification": "warn"}
    assert run_cli(policies(sqlite_db, tmp_path, **anonymise), as_of=NIGHTS[0]).exit_code == 0
    blocked = run_cli(policies(sqlite_db, tmp_path), as_of=NIGHTS[1])
    assert blocked.exit_code == 3, blocked
    assert "action anonymise -> delete" in blocked.policy("accounts")["error"]
    assert accounts_left(sqlite_db) == OLD | RECENT | NEW | HELD


def test_run_start_records_the_effective_rule(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    create(sqlite_db.engine)
    pf = policies(sqlite_db, tmp_path, minimum="12 months", where={"legal_hold": False})
    assert run_cli(pf, as_of=NIGHTS[0]).exit_code == 0
    [start] = [e for e in read_entries(audit_path(pf)) if e["event"] == "run.start"]
    rule = start["policies"][0]
    assert {k: rule[k] for k in ("minimum", "exclude", "where", "after", "table", "key", "action", "max_fraction")} \
        == {"minimum": "12 months", "exclude": {"legal_hold": True}, "where": {"legal_hold": False},
            # max_fraction as text: the audit log holds integers only (CONTRACT.md section 4).
            "after": "left_at", "table": "accounts", "key": None, "action": "delete", "max_fraction": "1.0"}
    assert len(rule["rule_sha256"]) == 64


def test_accepting_an_unknown_policy_is_a_usage_error(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    create(sqlite_db.engine)
    result = run_cli(policies(sqlite_db, tmp_path), "--accept-policy-change", "acounts", as_of=NIGHTS[0])
    assert result.exit_code == 2
    assert "--accept-policy-change: no policy 'acounts'" in result.stderr
    assert accounts_left(sqlite_db) == OLD | RECENT | NEW | HELD


# -- the comparison itself, rule by rule (pure: no database) ---------------------------------------
def _rule(**changes: Any) -> dict[str, Any]:
    from retention.policy.model import Policy

    base = {"name": "p", "table": "accounts", "after": "left_at", "retain": "24 months", "action": "delete",
            "exclude": {"legal_hold": True}, "where": {"status": "closed"}, "max_fraction": 0.5}
    return guards.effective_rule(Policy(**{**base, **changes}), "shop")


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    moment = pendulum.datetime(2026, 11, 24, 3, tz="Europe/Amsterdam")
    cut = cutoff(moment, parse_period(new["retain"]), new["align"], "Europe/Amsterdam")  # type: ignore[arg-type]
    return [c.key for c in guards.rule_changes(old, new, cut, moment, "Europe/Amsterdam")]


@pytest.mark.parametrize("old,new,blocked", [
    ({}, {}, []),
    ({"align": "end_of_year", "retain": "7 years"}, {"align": "none", "retain": "7 years"}, ["align"]),
    ({}, {"align": "end_of_month"}, []),
    ({}, {"retain": "2 years"}, []),
    ({}, {"retain": "730 days"}, ["retain"]),  # not always at least 24 months: shorter on some nights
    ({"minimum": "12 months"}, {"minimum": "6 months"}, ["minimum"]),
    ({"minimum": "12 months"}, {}, ["minimum"]),
    ({}, {"minimum": "12 months"}, []),
    ({}, {"exclude": {"legal_hold": True, "vip": True}}, []),
    ({}, {"exclude": {"legal_hold": False}}, ["exclude"]),
    ({}, {"where": {"status": "closed", "kind": "web"}}, []),
    ({}, {"where": {"status": "open"}}, ["where"]),
    ({}, {"key": "id"}, ["key"]),
    ({}, {"after": "closed_at"}, ["after"]),
    ({}, {"table": "members"}, ["table"]),
    ({}, {"cascade": ["orders"]}, ["cascade"]),
    ({}, {"max_fraction": 0.25}, []),
    ({"max_fraction": 0.25}, {}, ["max_fraction"]),
    ({}, {"on_referenced": "anonymise", "fields": {"email": None}}, ["on_referenced"]),
    ({"action": "anonymise", "fields": {"email": None}}, {}, ["action"]),
    ({}, {"action": "anonymise", "fields": {"email": None}}, []),
])
def test_which_rule_changes_need_acceptance(old: dict[str, Any], new: dict[str, Any], blocked: list[str]) -> None:
    assert _changes(_rule(**old), _rule(**new)) == blocked


def test_a_rule_from_an_older_log_is_compared_only_on_what_it_recorded() -> None:
    old = {"name": "p", "retain": "24 months", "align": "none", "table": "accounts", "action": "delete"}
    assert _changes(old, _rule(exclude={}, where={}, max_fraction=1.0)) == []
    assert _changes(old, _rule(retain="12 months")) == ["retain"]

"""`retention explain POLICY KEY`: one row's event, term end, fate tonight and why, for each fate,
on every database; what the test expects is found with its own SQL and calendar arithmetic."""

from __future__ import annotations

import calendar
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import AS_OF, audit_path, ids, invoke, run_cli, scalar, unchanged_witness
from test_preview import add_doubly_referenced_account
from test_run import CUT, INVOICE_DUE, build_shop, expected

if TYPE_CHECKING:
    from conftest import TestDatabase


def _explain(pf: Path, policy: str, key: Any, as_of: str = AS_OF) -> dict[str, Any]:
    out = invoke(["--policies", str(pf), "--log-format", "json", "explain", policy, str(key), "--as-of", as_of,
                  "--format", "json"], parse_json=True)
    assert out.exit_code == 0, out
    return out.data


def _text(pf: Path, policy: str, key: Any) -> str:
    out = invoke(["--policies", str(pf), "--log-format", "json", "explain", policy, str(key), "--as-of", AS_OF])
    assert out.exit_code == 0, out
    return out.stdout


def _plus_months(moment: dt.datetime, months: int) -> dt.datetime:
    y, m = divmod(moment.month - 1 + months, 12)
    year, month = moment.year + y, m + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def _deregistered(db: TestDatabase, key: int) -> dt.datetime:
    value = scalar(db.engine, "SELECT deregistered_at FROM accounts WHERE id = :k", k=key)
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)


def _fmt(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def test_explain_every_fate_before_and_after_the_run(db: TestDatabase, tmp_path: Path) -> None:
    """delete (with its orders), anonymise instead (referenced: by which rows, and when the last
    of them reaches its term), held (by which column), kept inside the term (when it goes),
    no event yet, not covered by `where`; after the run: deferred and already anonymised on that
    night, and deleted rows as gone on that night. Explain writes nothing."""
    pf = build_shop(db, tmp_path)
    add_doubly_referenced_account(db.engine)
    exp = expected(db.engine)
    before = unchanged_witness(db)

    deleted = min(exp.accounts_deleted)
    e = _explain(pf, "accounts", deleted)
    assert e["fate"] == "delete" and e["found"] is True
    when = _deregistered(db, deleted)
    assert e["event"] == _fmt(when)
    assert e["term_end"] == _fmt(_plus_months(when, 24))
    assert e["cascade"] == {"orders": scalar(db.engine, "SELECT count(*) FROM orders WHERE account_id = :k", k=deleted)}

    # Referenced by invoices only: anonymised instead; the last invoice's term end is the end of
    # its book year + 7 years.
    only_invoices = sorted(exp.accounts_deferred - ids(db.engine, "SELECT account_id FROM tickets"))[0]
    e = _explain(pf, "accounts", only_invoices)
    assert e["fate"] == "anonymise"
    kept = ids(db.engine, f"SELECT i.id FROM invoices i WHERE i.account_id = :k AND NOT ({INVOICE_DUE})",
               k=only_invoices)
    last_year = max(int(str(scalar(db.engine, "SELECT issued_at FROM invoices WHERE id = :i", i=i))[:4]) for i in kept)
    (ref,) = e["referenced_by"]
    assert (ref["table"], ref["count"], set(ref["keys"])) == ("invoices", len(kept), kept)
    assert ref["latest_term_end"] == f"{last_year + 7}-12-31 23:59:59"
    assert f"{last_year + 7}-12-31 23:59:59" in e["goes"]

    # Referenced from two tables, one of them an open ticket (no term end yet).
    e = _explain(pf, "accounts", 90100)
    assert e["fate"] == "anonymise"
    assert {r["table"]: r["keys"] for r in e["referenced_by"]} == {"invoices": [90100], "tickets": [90100]}
    assert "not foreseeable" in e["goes"]
    assert "invoices 90100" in _text(pf, "accounts", 90100) and "tickets 90100" in _text(pf, "accounts", 90100)

    held = min(exp.accounts_held)
    e = _explain(pf, "accounts", held)
    assert e["fate"] == "held" and "legal_hold = true" in e["reasons"][0]

    inside = min(ids(db.engine, f"SELECT id FROM accounts WHERE deregistered_at > '{CUT}'"))
    e = _explain(pf, "accounts", inside)
    end = _fmt(_plus_months(_deregistered(db, inside), 24))
    assert (e["fate"], e["term_end"]) == ("kept", end) and end in e["goes"]

    never = min(ids(db.engine, "SELECT id FROM accounts WHERE deregistered_at IS NULL"))
    e = _explain(pf, "accounts", never)
    assert (e["fate"], e["event"], e["term_end"]) == ("kept", None, None)
    assert "deregistered_at is empty" in e["reasons"][0]

    e = _explain(pf, "correspondence", 90100)
    assert e["fate"] == "not covered" and "status = closed" in e["reasons"][0]

    invoice = min(exp.invoices_due)
    e = _explain(pf, "invoices", invoice)
    assert e["fate"] == "delete"
    lines = scalar(db.engine, "SELECT count(*) FROM invoice_lines WHERE invoice_id = :i", i=invoice)
    assert e["cascade"] == {"invoice_lines": lines}

    # An old customer whose invoices and ticket all go tonight, before the account (run order):
    # they hold nothing back, so the account is deleted, as in the run.
    assert 90001 in exp.accounts_deleted
    assert ids(db.engine, "SELECT account_id FROM invoices WHERE account_id = 90001")
    e = _explain(pf, "accounts", 90001)
    assert (e["fate"], e["referenced_by"]) == ("delete", [])

    assert unchanged_witness(db) == before
    assert not audit_path(pf).exists(), "explain wrote to the audit log"

    # After the run: the referenced accounts wait, anonymised that night; deleted ones are gone.
    assert run_cli(pf).exit_code == 0
    e = _explain(pf, "accounts", only_invoices)
    assert e["fate"] == "deferred" and "already anonymised" in e["reasons"][0]
    assert [h["action"] for h in e["history"]] == ["anonymise"]
    assert any(r.startswith("anonymised on ") for r in e["reasons"])
    e = _explain(pf, "accounts", deleted)
    assert (e["fate"], e["found"]) == ("absent", False)
    assert [h["action"] for h in e["history"]] == ["delete"]
    assert any(r.startswith("deleted on ") for r in e["reasons"])


def test_explain_refuses_unknown_policy_and_a_bad_key(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    """Exit 2 with a one-line message naming the policy (or the key), no traceback."""
    pf = build_shop(sqlite_db, tmp_path)
    out = invoke(["--policies", str(pf), "explain", "acounts", "1"])
    assert out.exit_code == 2 and "unknown policy 'acounts'" in out.stderr and "Traceback" not in out.stderr
    out = invoke(["--policies", str(pf), "explain", "accounts", "abc"])
    assert out.exit_code == 2 and "'abc' is not a whole number" in out.stderr
    data = json.loads(invoke(["--policies", str(pf), "explain", "accounts", "999999", "--format", "json"]).stdout)
    assert (data["fate"], data["found"]) == ("absent", False)


def test_explain_an_anonymise_policy(db: TestDatabase, tmp_path: Path) -> None:
    """An anonymise policy: a due member is to be anonymised, a held one held, a recent one kept
    until its term end; after the run the due member is `anonymised`, on the night the audit
    log names."""
    from helpers import write_policies
    from test_batches import DUE, HELD, KEPT, create_members, members_policy

    create_members(db.engine)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [members_policy(batch_size=100)])
    assert _explain(pf, "members", DUE[0])["fate"] == "anonymise"
    held = _explain(pf, "members", HELD)
    assert held["fate"] == "held" and "legal_hold = true" in held["reasons"][0]
    kept = _explain(pf, "members", KEPT)
    assert (kept["fate"], kept["event"], kept["term_end"]) == ("kept", "2026-03-01 00:00:00", "2028-03-01 00:00:00")

    assert run_cli(pf).exit_code == 0
    done = _explain(pf, "members", DUE[0])
    assert done["fate"] == "anonymised"
    assert [h["action"] for h in done["history"]] == ["anonymise"]
    assert any(r.startswith("anonymised on ") for r in done["reasons"])


def test_explain_follows_the_safety_guard(db: TestDatabase, tmp_path: Path) -> None:
    """correspondence blocked by max_fraction: its due ticket is `blocked` (nothing of the policy
    changes tonight), and an account whose only hold-back was that ticket is now held back by it,
    as in the run."""
    import copy

    from helpers import SHOP_POLICIES

    policies = copy.deepcopy(SHOP_POLICIES)
    policies[2]["max_fraction"] = 0.01
    pf = build_shop(db, tmp_path, policies=policies)
    full, blocked = expected(db.engine), expected(db.engine, tickets_removed=False)
    ticket = min(full.tickets_due)
    e = _explain(pf, "correspondence", ticket)
    assert e["fate"] == "blocked" and "max_fraction" in e["reasons"][-1]
    account = min(full.accounts_deleted & blocked.accounts_deferred)
    e = _explain(pf, "accounts", account)
    assert e["fate"] == "anonymise" and "tickets" in {r["table"] for r in e["referenced_by"]}
    assert run_cli(pf).exit_code == 3
    assert ids(db.engine, "SELECT id FROM accounts WHERE id = :k", k=account) == {account}

"""Previews that don't get in the way: `run --dry-run` takes no lock, needs no write access,
runs no recovery and appends nothing to the audit log; `--record` appends exactly one `preview`
entry (counts, no keys, no values).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from helpers import (
    AS_OF,
    SESSIONS_POLICY,
    audit_path,
    create_sessions,
    file_sha256,
    ids,
    invoke,
    run_cli,
    unchanged_witness,
    waiting_for_a_row_lock,
    write_policies,
)
from test_lock import SESSIONS_ENDED, file_lock, server_lock
from test_run import build_shop

from retention.audit.log import AuditLog, read_entries

if TYPE_CHECKING:
    from conftest import TestDatabase


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if "profile" not in p.parts}


@contextmanager
def audit_log_held(path: Path) -> Iterator[None]:
    """Hold the audit log the way a running `retention run` holds it while appending."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def test_dry_run_appends_nothing_and_creates_no_file(db: TestDatabase, tmp_path: Path) -> None:
    """A preview leaves the audit log and lock file uncreated (and an existing log byte for byte
    the same): it appends nothing, takes no file lock."""
    create_sessions(db.engine, SESSIONS_ENDED)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [SESSIONS_POLICY])
    before = _files(tmp_path)
    dry = run_cli(pf, "--dry-run")
    assert dry.exit_code == 0, dry
    assert dry.policy("sessions")["to_delete"] == 2
    assert _files(tmp_path) == before, "the preview created a file"

    real = run_cli(pf)
    assert real.exit_code == 0, real
    log = audit_path(pf)
    digest = file_sha256(log)
    # By then the one row left is due, all of its table: the 100 % guard would block the preview.
    again = run_cli(pf, "--dry-run", "--force", as_of="2027-06-01T00:00:00")
    assert again.exit_code == 0, again
    assert file_sha256(log) == digest, "the preview appended to the audit log"


def test_dry_run_needs_no_write_access_to_the_audit_directory(db: TestDatabase, tmp_path: Path) -> None:
    """The audit path's parent is a regular file, so nothing can be created there (as for a DPO
    without write access; root ignores permission bits, a file in the way it cannot): the preview
    still works and creates nothing; a real run with that path fails (exit 1) before touching data."""
    create_sessions(db.engine, SESSIONS_ENDED)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the audit directory should be\n")
    pf = write_policies(tmp_path / "policies.yaml", db.url, [SESSIONS_POLICY], audit=str(blocker / "retention.jsonl"))
    before_files = _files(tmp_path)
    before = unchanged_witness(db)
    dry = run_cli(pf, "--dry-run")
    assert dry.exit_code == 0, dry
    assert dry.policy("sessions")["due"] == 2
    assert _files(tmp_path) == before_files
    real = run_cli(pf)
    assert real.exit_code == 1, real
    assert unchanged_witness(db) == before


def test_preview_works_while_a_run_holds_every_lock(db: TestDatabase, tmp_path: Path) -> None:
    """The run's file lock, its audit-log lock and (on a server) its advisory lock are all held:
    the preview still answers (exit 0, right counts) instead of exit 4; a real run gets 4."""
    create_sessions(db.engine, SESSIONS_ENDED)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [SESSIONS_POLICY])
    log = audit_path(pf)
    with ExitStack() as held:
        held.enter_context(file_lock(log.with_name(log.name + ".lock")))
        held.enter_context(audit_log_held(log))
        if db.name != "sqlite":
            held.enter_context(server_lock(db))
        dry = run_cli(pf, "--dry-run")
        assert dry.exit_code == 0, dry
        assert (dry.policy("sessions")["due"], dry.policy("sessions")["to_delete"]) == (2, 2)
        assert run_cli(pf).exit_code == 4
        recorded = run_cli(pf, "--dry-run", "--record")
        assert recorded.exit_code == 1, recorded
        assert recorded.policy("sessions")["due"] == 2, "the preview itself is still printed"
        assert "not recorded" in recorded.stderr
    assert log.stat().st_size == 0


def test_preview_during_a_real_run_that_is_waiting(server_db: TestDatabase, tmp_path: Path) -> None:
    """A real run (a second process) is in the middle of its work, waiting for a row another
    transaction holds; a preview meanwhile exits 0, and the real run then finishes with exit 0
    and a log whose chain is intact: the preview never got in its way."""
    db = server_db
    create_sessions(db.engine, SESSIONS_ENDED)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [SESSIONS_POLICY])
    with db.engine.connect() as other:
        other.execute(sa.text("SELECT id FROM sessions WHERE id = 1 FOR UPDATE"))
        run = subprocess.Popen(
            [sys.executable, "-m", "retention.cli", "--policies", str(pf), "--log-format", "json", "run",
             "--as-of", AS_OF, "--format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while not waiting_for_a_row_lock(db):
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "the run never waited for the held row"
                time.sleep(0.05)
            dry = run_cli(pf, "--dry-run")
            assert dry.exit_code == 0, dry
            assert dry.policy("sessions")["due"] == 2
            other.rollback()
            _stdout, stderr = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 0, stderr
    verify = invoke(["--policies", str(pf), "audit", "verify"])
    assert verify.exit_code == 0, verify
    assert not [e for e in read_entries(audit_path(pf)) if e["event"] == "preview"]


def test_dry_run_runs_no_recovery(db: TestDatabase, tmp_path: Path) -> None:
    """A log with an interrupted run and an open batch intent: the preview leaves it as it is
    (recovery writes `run.interrupted` and `batch.recovered`); the next real run recovers it."""
    create_sessions(db.engine, SESSIONS_ENDED)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [SESSIONS_POLICY])
    log = audit_path(pf)
    with AuditLog(log) as w:
        # With the offset a real run writes: a naive as_of would be read as UTC, an hour later
        # than tonight's AS_OF in Amsterdam, and the clock check would refuse the real run.
        w.append("run.start", "old-run", as_of=AS_OF + "+01:00", dry_run=False)
        w.append("batch", "old-run", policy="sessions", database="shop", table="sessions", action="delete",
                 state="intent", batch=1, key_column="id", keys=[1], columns=[], count=1, cascaded={})
    digest = file_sha256(log)
    dry = run_cli(pf, "--dry-run")
    assert dry.exit_code == 0, dry
    assert file_sha256(log) == digest
    real = run_cli(pf)
    assert real.exit_code == 0, real
    events = [e["event"] for e in read_entries(log)]
    assert "run.interrupted" in events and "batch.recovered" in events


def _preview_entries(pf: Path) -> list[dict[str, Any]]:
    return [e for e in read_entries(audit_path(pf)) if e["event"] == "preview"]


def test_record_appends_one_preview_entry_with_counts_and_no_values(db: TestDatabase, tmp_path: Path) -> None:
    """`--dry-run --record` appends exactly one entry, `preview`: the as-of moment, the policy
    file's SHA-256, each policy's counts as the JSON shows them; no key and no personal value
    (no e-mail address or street of the shop is in the line). The chain stays intact."""
    pf = build_shop(db, tmp_path)
    log = audit_path(pf)
    dry = run_cli(pf, "--dry-run", "--record")
    assert dry.exit_code == 0, dry
    lines = log.read_bytes().splitlines()
    assert len(lines) == 1
    (entry,) = _preview_entries(pf)
    assert entry["as_of"] == dry.data["as_of"] == "2026-11-24T03:00:00+01:00"
    assert entry["policy_file_sha256"] == file_sha256(pf)
    assert entry["run"] == dry.data["run"]
    keys = ("due", "held", "deferred", "to_delete", "to_anonymise", "cascaded", "cutoff")
    assert {p["name"]: {k: p[k] for k in keys} for p in entry["policies"]} == \
        {p["name"]: {k: p[k] for k in keys} for p in dry.data["policies"]}
    assert all("sample_keys" not in p and "keys" not in p for p in entry["policies"])
    with db.engine.connect() as conn:
        values = [v for row in conn.execute(sa.text("SELECT email, street, last_name FROM accounts")) for v in row]
    text = lines[0].decode()
    assert not [v for v in values if v and v in text]
    assert invoke(["--policies", str(pf), "audit", "verify"]).exit_code == 0

    assert invoke(["--policies", str(pf), "run", "--record", "--as-of", AS_OF]).exit_code == 2
    assert len(log.read_bytes().splitlines()) == 1


# -- the text preview -------------------------------------------------------------------------


def add_doubly_referenced_account(engine: sa.Engine, account: int = 90100) -> None:
    """A customer gone since 2022 with an invoice of 2023 (kept 7 years) and an open ticket: due,
    and held back by two tables at once."""
    import datetime as dt

    from retention.demo import shop_metadata

    t = shop_metadata().tables
    with engine.begin() as conn:
        conn.execute(t["accounts"].insert(), [{
            "id": account, "first_name": "Twee", "last_name": "Redenen", "email": "twee@example.nl",
            "phone": None, "street": "Kade 2", "postcode": "1011 AB", "city": "Amsterdam",
            "birth_date": dt.date(1970, 1, 2), "created_at": dt.datetime(2020, 1, 1),
            "deregistered_at": dt.datetime(2022, 3, 1), "legal_hold": False}])
        conn.execute(t["invoices"].insert(), [{
            "id": account, "account_id": account, "number": f"TWO-{account}", "issued_at": dt.date(2023, 1, 5),
            "customer_name": "Twee Redenen", "billing_street": "Kade 2", "billing_postcode": "1011 AB",
            "billing_city": "Amsterdam", "total_cents": 100, "vat_cents": 17}])
        conn.execute(t["tickets"].insert(), [{
            "id": account, "account_id": account, "subject": "Factuur", "status": "open",
            "opened_at": dt.datetime(2023, 2, 1), "closed_at": None,
            # NOT NULL since issue 11; an open ticket without messages was last active when opened.
            "last_activity_at": dt.datetime(2023, 2, 1), "legal_hold": False}])


def _overlapping_accounts(engine: sa.Engine) -> set[int]:
    """Due accounts referenced both by a kept invoice and by a kept ticket (plain SQL)."""
    from test_run import CUT, INVOICE_DUE, TICKET_REMOVED

    return ids(engine, f"""
        SELECT a.id FROM accounts a
        WHERE a.deregistered_at <= '{CUT}' AND NOT a.legal_hold
          AND EXISTS (SELECT 1 FROM invoices i WHERE i.account_id = a.id AND NOT ({INVOICE_DUE}))
          AND EXISTS (SELECT 1 FROM tickets t WHERE t.account_id = a.id AND NOT ({TICKET_REMOVED}))
    """)


def test_text_preview_summary_rule_words_and_overlap(db: TestDatabase, tmp_path: Path) -> None:
    """The text preview starts with one summary line whose numbers equal plain SQL (deleted over
    all policies, anonymised, held, waiting), says each rule in words, marks overlapping deferral
    reasons; after the real run, the referenced accounts are "already anonymised", not kept, and
    the summary counts them as waiting. Every line fits 100 columns (not a terminal)."""
    from test_run import expected

    pf = build_shop(db, tmp_path)
    add_doubly_referenced_account(db.engine)
    exp = expected(db.engine)
    assert _overlapping_accounts(db.engine) == {90100}
    deleted = len(exp.accounts_deleted) + len(exp.invoices_due) + len(exp.tickets_due)
    # Holds follow foreign keys (issue 17): an invoice of a held account is held too.
    held = len(exp.accounts_held) + len(exp.invoices_held) + len(exp.tickets_held)
    children = len(exp.orders_deleted) + len(exp.invoice_lines_deleted) + len(exp.messages_deleted)
    out = run_cli(pf, "--dry-run", fmt="text")
    assert out.exit_code == 0, out
    text = " ".join(out.stdout.split())  # unwrapped, for the phrases
    first = out.stdout.split("\n")[2]
    assert first.startswith("Tonight:") or first.startswith("By 2026-11-24 03:00:")
    assert (f": {deleted:,} deleted, {len(exp.accounts_deferred):,} anonymised, {held:,} kept under a hold, "
            f"0 waiting for records that must stay ({children:,} child rows go with the deleted rows).") in text
    assert "deleted 24 months after the account was deregistered (deregistered_at)" in text
    assert "deleted 7 years after the end of the year in which the invoice was issued (issued_at)" in text
    assert "deleted 2 years after the ticket was closed (closed_at); only rows where status = closed" in text
    assert "the reasons overlap" in text
    assert f"of these, {len(exp.accounts_deferred)} would be anonymised instead" in text
    assert "as if the other policies" not in text
    assert max(len(line) for line in out.stdout.splitlines()) <= 100

    assert run_cli(pf).exit_code == 0
    again = run_cli(pf, "--dry-run", fmt="text")
    text = " ".join(again.stdout.split())
    waiting = len(exp.accounts_deferred)
    assert (f": 0 deleted, 0 anonymised, {held:,} kept under a hold, {waiting:,} waiting for records that "
            f"must stay ({waiting:,} of the waiting rows were anonymised on an earlier night).") in text
    assert f"of these, {waiting} already anonymised on an earlier night" in text
    assert "would be anonymised instead" not in text


def test_single_policy_preview_says_it_counts_as_if_the_others_did_not_run(db: TestDatabase, tmp_path: Path) -> None:
    """`--policy accounts`: the invoices and tickets that the full run removes first still count as
    references, so more accounts are deferred than in the full preview, and the text says why."""
    pf = build_shop(db, tmp_path)
    full = run_cli(pf, "--dry-run").policy("accounts")
    alone = run_cli(pf, "--dry-run", "--policy", "accounts")
    assert alone.policy("accounts")["deferred"] > full["deferred"]
    assert alone.policy("accounts")["partial"] is True and full["partial"] is False
    text = " ".join(run_cli(pf, "--dry-run", "--policy", "accounts", fmt="text").stdout.split())
    assert "Only accounts: counted as if the other policies (invoices, correspondence) did not run" in text


def test_text_wraps_to_the_terminal_width(monkeypatch: Any) -> None:
    """On a terminal the width is the terminal's (here 72), elsewhere 100; wrapped lines keep
    their words whole and continue under the label's text."""
    import shutil

    from retention.cli import app as cli
    from retention.engine.runner import PolicyOutcome, RunResult
    from retention.reports.run import render_text

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=(100, 24): os.terminal_size((72, 24)))
    assert cli._width() == 72
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert cli._width() == 100
    o = PolicyOutcome(name="p", database="d", table="accounts", action="delete", basis="word " * 40,
                      description=None, retain="24 months", align="none", cutoff="c", cutoff_local="c",
                      after="deregistered_at")
    text = render_text(RunResult(run="r", as_of="2026-11-24T03:00:00+01:00", dry_run=True, policies=[o]), 72)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 72
    basis = [i for i, line in enumerate(lines) if line.startswith("   basis:   ")][0]
    assert lines[basis + 1].startswith(" " * 12 + "word")


def test_summary_leaves_out_a_policy_the_safety_guard_blocks(db: TestDatabase, tmp_path: Path) -> None:
    """correspondence blocked by max_fraction: tonight's numbers hold only the policies that run
    (its tickets then keep their accounts), and the summary names what it left out."""
    import copy

    from helpers import SHOP_POLICIES
    from test_run import expected

    policies = copy.deepcopy(SHOP_POLICIES)
    policies[2]["max_fraction"] = 0.01
    pf = build_shop(db, tmp_path, policies=policies)
    exp = expected(db.engine, tickets_removed=False)
    full = expected(db.engine)
    out = run_cli(pf, "--dry-run", fmt="text")
    assert out.exit_code == 3, out
    text = " ".join(out.stdout.split())
    deleted = len(exp.accounts_deleted) + len(exp.invoices_due)
    assert f": {deleted:,} deleted, {len(exp.accounts_deferred):,} anonymised," in text
    assert f"not counted: {len(full.tickets_due):,} rows of correspondence, which a safety guard blocks" in text

"""The audit log and the operational logs never hold a value of a personal field.

Every text field of every row in the demo shop gets a unique marker; then the whole job
runs (validate, dry-run, real run, a second run, every `audit show` format). No marker,
nor its MD5/SHA-1/SHA-256 hex digest, may appear in the audit log or on stderr.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from click.testing import CliRunner
from helpers import SHOP_POLICIES, write_policies

from retention.cli import main
from retention.demo import create_shop

if TYPE_CHECKING:
    from conftest import TestDatabase

PERSONAL = {
    "accounts": ["first_name", "last_name", "email", "phone", "street", "postcode", "city"],
    "orders": ["shipping_street", "shipping_postcode", "shipping_city"],
    "invoices": ["customer_name", "billing_street", "billing_postcode", "billing_city"],
    "ticket_messages": ["body"],
    "tickets": ["subject"],
}


def _seed_markers(engine: sa.Engine) -> list[str]:
    """Replace every personal text value with a unique marker; return the markers."""
    md = sa.MetaData()
    md.reflect(engine, only=list(PERSONAL))
    markers: list[str] = []
    with engine.begin() as conn:
        for name, columns in PERSONAL.items():
            table = md.tables[name]
            ids = [r[0] for r in conn.execute(sa.select(table.c.id))]
            rows = []
            for i in ids:
                values = {}
                for col in columns:
                    length = getattr(table.c[col].type, "length", None) or 64
                    marker = f"M{uuid.uuid4().hex}"[: min(length, 33)]
                    markers.append(marker)
                    values[col] = marker
                rows.append({"k": i, **{f"v_{c}": v for c, v in values.items()}})
            stmt = table.update().where(table.c.id == sa.bindparam("k")).values(
                {c: sa.bindparam(f"v_{c}") for c in columns})
            conn.execute(stmt, rows)
    return markers


def _leaks(text: str, markers: list[str]) -> list[str]:
    found = []
    for m in markers:
        forms = [m, hashlib.md5(m.encode()).hexdigest(), hashlib.sha1(m.encode()).hexdigest(),
                 hashlib.sha256(m.encode()).hexdigest()]
        found += [f for f in forms if f in text]
    return found


def test_no_marker_or_its_hash_in_audit_log_or_logs(db: TestDatabase, tmp_path: Path) -> None:
    create_shop(db.engine, accounts=150, seed=3, today=dt.date(2026, 11, 24))
    markers = _seed_markers(db.engine)
    log = tmp_path / "audit.jsonl"
    policy = write_policies(tmp_path / "policies.yaml", db.url,
                            [{**p, "max_fraction": 1.0} for p in SHOP_POLICIES], audit=str(log))
    runner = CliRunner()
    stderr = []
    for args in (["validate"], ["run", "--dry-run", "--as-of", "2026-11-24T03:00:00"],
                 ["run", "--as-of", "2026-11-24T03:00:00", "--format", "json"],
                 ["run", "--as-of", "2026-11-24T03:00:00"],
                 ["audit", "show"], ["audit", "show", "--format", "json"], ["audit", "show", "--format", "csv"],
                 ["audit", "show", "--format", "html"], ["audit", "verify"]):
        result = runner.invoke(main, ["--policies", str(policy), "--log-format", "json", *args])
        assert result.exit_code == 0, (args, result.output, result.stderr)
        stderr.append(result.stderr)
        # Output to stdout of audit commands is built from the log only: check it too.
        if args[0] == "audit":
            assert not _leaks(result.stdout, markers), args
    # The data-subject rights (docs/rights.md): a hold whose reason names someone, an erasure
    # that finds a ticket by a personal value given on the command line, and its replay.
    with db.engine.connect() as conn:
        subject = conn.execute(sa.text("SELECT MIN(account_id) FROM tickets WHERE account_id IS NOT NULL")).scalar()
        other = conn.execute(sa.text("SELECT MIN(id) FROM accounts WHERE id <> :s"), {"s": subject}).scalar()
        match_id, match = conn.execute(sa.text("SELECT id, subject FROM tickets WHERE account_id IS NULL "
                                               "OR account_id <> :s ORDER BY id"), {"s": subject}).first()
    assert subject and other and match in markers
    reason = f"claim of M{uuid.uuid4().hex}"[:40]
    markers.append(reason.split()[-1])
    for args in (["hold", "add", "--policy", "accounts", "--key", str(other), "--reason", reason,
                  "--until", "2099-01-01", "--by", "dpo"], ["hold", "list"],
                 ["erase", "--policy", "accounts", "--key", str(subject), "--request", "AVG-1",
                  "--match", f"tickets.subject={match}", "--dry-run"],
                 ["erase", "--policy", "accounts", "--key", str(subject), "--request", "AVG-1",
                  "--match", f"tickets.subject={match}", "--format", "json"],
                 ["replay", "--dry-run"], ["replay"], ["audit", "show"], ["audit", "show", "--format", "html"]):
        result = runner.invoke(main, ["--policies", str(policy), "--log-format", "json", *args])
        assert result.exit_code == 0, (args, result.output, result.stderr)
        stderr.append(result.stderr)
        if args[0] in ("audit", "erase", "replay"):
            assert not _leaks(result.stdout, markers), args
        if "json" in args and args[0] == "erase":  # the match found the ticket: not vacuous
            found = {t["table"]: t["found"] for t in json.loads(result.stdout)["tables"]}
            assert match_id in found["tickets"], found
    text = log.read_text()
    for event in ("hold.added", "erase.start", "erase.end", "replay.start", "replay.end"):
        assert f'"event":"{event}"' in text, event
    assert '"event":"batch"' in text  # the run really did remove rows: the check is not vacuous
    assert not _leaks(text, markers)
    assert not _leaks("\n".join(stderr), markers)
    # And the check can fail: the markers of rows still within their term are in the database.
    with db.engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT customer_name FROM invoices")).scalars().all()
    assert kept and set(kept) <= set(markers)

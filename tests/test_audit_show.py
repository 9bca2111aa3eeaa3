"""`audit show`: a month of nightly runs, summarised and rendered for people."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from retention.audit.log import AuditLog, head, read_entries, verify
from retention.reports.audit import (
    CSV_COLUMNS,
    render_csv,
    render_html,
    render_json,
    render_text,
    summarise,
)

FIRST_NIGHT = date(2026, 10, 26)
NIGHTS = 30
INTERRUPTED_NIGHT = 11  # its run starts, commits one batch, and the machine goes down
FAILED_NIGHT = 19  # the database connection drops during invoices
BLOCKED_NIGHT = 24  # max_fraction stops accounts
PREVIEW_NIGHTS = {0, 7, 14, 21, 28}  # the DPO's Monday previews, in the morning

POLICIES = [
    {"name": "accounts", "database": "shop", "table": "accounts", "action": "anonymise", "retain": "24 months",
     "align": "none", "basis": "Privacy statement, retention terms (account data)", "years": 2},
    {"name": "invoices", "database": "shop", "table": "invoices", "action": "delete", "retain": "7 years",
     "align": "end_of_year", "basis": "Dutch tax law: 7 years (AWR art. 52)", "years": 7},
    {"name": "correspondence", "database": "shop", "table": "tickets", "action": "delete", "retain": "2 years",
     "align": "none", "basis": "Privacy statement, customer service", "years": 2},
]  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=700)
        return self.now


def cutoff(night: date, years: int) -> str:
    return f"{night.year - years}-{night.month:02d}-{night.day:02d}T02:00:00+01:00"


def one_run(log: AuditLog, clock: Clock, run: str, night: date, *, dry_run: bool, fate: str = "ok") -> None:
    policies = [dict(p, cutoff=cutoff(night, p["years"])) for p in POLICIES]
    for p in policies:
        del p["years"]
    log.append("run.start", run, policy_file="/etc/retention/policies.yaml", policy_file_sha256="ab" * 32,
               as_of=f"{night}T02:00:00+01:00", dry_run=dry_run, user="retention", host="db1.shop.internal",
               version="0.1.0", policies=policies)  # fmt: skip
    batch = 0
    for i, p in enumerate(policies):
        name = p["name"]
        log.append("policy.start", run, policy=name, database="shop", table=p["table"], action=p["action"],
                   cutoff=p["cutoff"], basis=p["basis"], dry_run=dry_run)  # fmt: skip
        due = 40 + (night.day * (i + 3)) % 70
        if fate == "blocked" and name == "accounts":
            log.append("policy.end", run, policy=name, due=9000, held=0, deferred=0, applied=0, anonymised=0,
                       cascaded={}, deferred_reasons={}, status="blocked", duration_ms=400, dry_run=False)  # fmt: skip
            continue
        held, deferred = (3, 0) if name == "accounts" else (0, 2 if name == "invoices" else 0)
        applied = 0 if dry_run else due - deferred
        cascaded = {"invoice_lines": applied * 3} if name == "invoices" else {}
        if name == "correspondence":
            cascaded = {"ticket_messages": applied * 4}
        if not dry_run and applied:
            batch += 1
            log.append("batch", run, policy=name, database="shop", table=p["table"], action=p["action"],
                       state="intent", batch=batch, key_column="id", keys=list(range(1000, 1000 + applied)),
                       columns=["email", "phone"] if name == "accounts" else [], count=applied,
                       cascaded=cascaded)  # fmt: skip
            if fate == "interrupted" and i == 1:
                return  # power cut: the intent has no committed, the run no end
            if fate == "failed" and name == "invoices":
                log.append("policy.end", run, policy=name, due=due, held=held, deferred=deferred, applied=0,
                           anonymised=0, cascaded={}, deferred_reasons={}, status="failed", duration_ms=2000,
                           dry_run=False)  # fmt: skip
                log.append("run.end", run, status="failed", exit_code=1, duration_ms=9500)
                return
            log.append("batch.committed", run, policy=name, batch=batch, count=applied)
        log.append("policy.end", run, policy=name, due=due, held=held, deferred=deferred, applied=applied,
                   anonymised=applied if name == "accounts" else 0, cascaded={} if dry_run else cascaded,
                   deferred_reasons={"orders": deferred} if deferred else {},
                   status="preview" if dry_run else "ok", duration_ms=1250, dry_run=dry_run)  # fmt: skip
    if not dry_run:
        log.append("purge", run, database="shop", tables=["accounts", "invoices", "tickets"], level="thorough",
                   result="done", duration_ms=3500, detail="")  # fmt: skip
    status, code = ("blocked", 3) if fate == "blocked" else ("ok", 0)
    log.append("run.end", run, status=status, exit_code=code, duration_ms=14250)


def build_log(path: Path) -> Path:
    """Thirty nights of enforcement runs plus the DPO's Monday previews."""
    clock = Clock()
    with AuditLog(path, clock=clock) as log:
        for n in range(NIGHTS):
            night = FIRST_NIGHT + timedelta(days=n)
            clock.now = datetime(night.year, night.month, night.day, 1, 0, tzinfo=UTC)
            run = f"{night:%Y%m%d}-0100-r{n:02d}"
            if n == INTERRUPTED_NIGHT + 1:
                prev = f"{night - timedelta(days=1):%Y%m%d}-0100-r{n - 1:02d}"
                log.append("run.interrupted", run, interrupted_run=prev, started=f"{night - timedelta(days=1)}T01:00")
                log.append("batch.recovered", run, policy="invoices", of_run=prev, batch=2, result="applied",
                           detail="no row of the batch is left")  # fmt: skip
            fate = {INTERRUPTED_NIGHT: "interrupted", FAILED_NIGHT: "failed", BLOCKED_NIGHT: "blocked"}.get(n, "ok")
            one_run(log, clock, run, night, dry_run=False, fate=fate)
            if n in PREVIEW_NIGHTS:
                clock.now = datetime(night.year, night.month, night.day, 8, 30, tzinfo=UTC)
                one_run(log, clock, f"{night:%Y%m%d}-0830-preview", night, dry_run=True)
    return path


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_log(tmp_path_factory.mktemp("audit") / "retention.jsonl")


@pytest.fixture(scope="module")
def runs(log_path: Path) -> list:
    """With the previews (`audit show --previews`)."""
    return summarise(read_entries(log_path), previews=True)


def test_the_synthetic_log_is_a_whole_chain(log_path: Path) -> None:
    assert verify(log_path).ok


def test_summarise(runs: list) -> None:
    assert len(runs) == NIGHTS + len(PREVIEW_NIGHTS)
    by_status = {s.status for s in runs}
    assert by_status == {"ok", "failed", "blocked", "interrupted"}
    previews = [s for s in runs if s.dry_run]
    assert len(previews) == len(PREVIEW_NIGHTS)
    assert all(r.status == "preview" and r.applied == 0 for s in previews for r in s.policies)
    assert all(s.kind == "preview" for s in previews) and not any(s.kind == "preview" for s in runs if not s.dry_run)

    first = runs[0]
    assert first.started.startswith("2026-10-26T01:00:00") and first.user == "retention"
    assert first.host == "db1.shop.internal" and first.exit_code == 0 and first.status == "ok"
    accounts = first.policies[0]
    assert (accounts.policy, accounts.action, accounts.basis) == ("accounts", "anonymise", POLICIES[0]["basis"])
    assert accounts.cutoff == "2024-10-26T02:00:00+01:00"
    assert accounts.held == 3 and accounts.applied == accounts.due
    invoices = first.policies[1]
    assert invoices.deferred == 2 and invoices.deferred_reasons == {"orders": 2}
    assert invoices.cascaded == {"invoice_lines": invoices.applied * 3}
    assert first.purges[0]["result"] == "done"


def test_interrupted_run(runs: list) -> None:
    crashed = next(s for s in runs if s.status == "interrupted")
    assert crashed.run.startswith("20261106") and crashed.ended is None
    assert crashed.interrupted_by.startswith("20261107")
    accounts, invoices, correspondence = crashed.policies
    assert accounts.status == "ok" and accounts.applied == accounts.due
    # Its invoices batch never got a `committed`; the next run found it applied, so it counts.
    assert invoices.status == "incomplete" and invoices.due is None
    assert invoices.applied == 40 + (6 * 4) % 70 - 2
    assert correspondence.status == "not reached" and correspondence.applied is None
    assert crashed.recovered[0]["result"] == "applied"


def test_failed_and_blocked_runs(runs: list) -> None:
    failed = next(s for s in runs if s.status == "failed")
    assert failed.exit_code == 1 and [r.status for r in failed.policies] == ["ok", "failed", "not reached"]
    blocked = next(s for s in runs if s.status == "blocked")
    assert blocked.exit_code == 3 and blocked.policies[0].status == "blocked"


def test_filters(log_path: Path) -> None:
    week = summarise(read_entries(log_path), since=date(2026, 11, 2), until=date(2026, 11, 8), previews=True)
    assert len(week) == 7 + 1 and all("20261102" <= s.run[:8] <= "20261108" for s in week)
    assert len(summarise(read_entries(log_path), since=date(2026, 11, 2), until=date(2026, 11, 8))) == 7

    only = summarise(read_entries(log_path), policies=["invoices"], previews=True)
    assert len(only) == NIGHTS + len(PREVIEW_NIGHTS)
    assert all([r.policy for r in s.policies] == ["invoices"] for s in only)
    assert summarise(read_entries(log_path), policies=["nope"]) == []

    one = summarise(read_entries(log_path), run="20261110-0100")
    assert [s.run for s in one] == ["20261110-0100-r15"]
    assert summarise(read_entries(log_path), run="20261110-0100", since=date(2026, 11, 11)) == []


def test_render_text(runs: list) -> None:
    text = render_text(runs)
    assert "PREVIEW (dry run: nothing was changed)" in text
    assert "INTERRUPTED (never ended; found by run 20261107-0100-r12)" in text
    assert "FAILED (exit 1)" in text and "BLOCKED (exit 3)" in text
    assert "basis: Dutch tax law: 7 years (AWR art. 52)" in text
    assert re.search(r"accounts +shop\.accounts +anonymise +2024-10-26 02:00 +\d+ +3 +0 +0 +\d+ +ok", text)
    assert "2026-10-26 01:00 UTC" in text
    assert render_text([]).startswith("Chain not verified") and "No runs in the audit log" in render_text([])


def test_render_json(runs: list) -> None:
    data = json.loads(render_json(runs))
    assert len(data["runs"]) == len(runs)
    assert data["runs"][0]["policies"][0]["policy"] == "accounts"
    assert {"run", "started", "status", "exit_code", "dry_run", "purges"} <= data["runs"][0].keys()


def test_render_csv(runs: list) -> None:
    rows = list(csv.reader(io.StringIO(render_csv(runs))))
    assert tuple(rows[0][:15]) == (
        "run", "started", "dry_run", "policy", "database", "table", "action", "basis", "cutoff",
        "due", "held", "deferred", "applied", "anonymised", "status",
    )  # fmt: skip
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 + 3 * len(runs)  # one per policy per run, the interrupted one included
    record = dict(zip(rows[0], rows[1], strict=True))
    assert record["policy"] == "accounts" and record["dry_run"] == "false" and record["status"] == "ok"
    assert record["cutoff"] == "2024-10-26T02:00:00+01:00" and int(record["applied"]) > 0
    statuses = {dict(zip(rows[0], r, strict=True))["run_status"] for r in rows[1:]}
    assert statuses == {"ok", "failed", "blocked", "interrupted"}


def test_render_csv_defuses_formulas() -> None:
    from retention.reports.audit import PolicyRow, RunSummary

    runs = [RunSummary(run="r", policies=[PolicyRow(policy="p", basis="=HYPERLINK(1)")])]
    assert "'=HYPERLINK(1)" in render_csv(runs)


def html_page(log_path: Path, runs: list) -> str:
    return render_html(runs, verify(log_path), head(log_path))


def test_render_html_is_self_contained(log_path: Path, runs: list) -> None:
    page = html_page(log_path, runs)
    assert page.startswith("<!DOCTYPE html>")
    for external in ("http://", "https://", "src=", "<script", "<link", "@import", "url("):
        assert external not in page
    assert "<svg" in page and page.count("<rect") > NIGHTS  # the chart: bars and the night strip
    assert "@media print" in page
    assert "Chain intact" in page and head(log_path) in page
    assert "26 October 2026 – 24 November 2026" in page
    for policy in ("accounts", "invoices", "correspondence"):
        assert f"<title>{policy}, 2026-10-26:" in page
    assert "INTERRUPTED" in page and "FAILED" in page and "PREVIEW" in page


def test_render_html_escapes_and_shows_a_broken_chain(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with AuditLog(path) as log:
        log.append("run.start", "<r>", dry_run=False, user="<script>alert(1)</script>",
                   policies=[{"name": "a&b", "basis": '"quoted" <b>', "action": "delete"}])  # fmt: skip
        log.append("run.end", "<r>", status="ok", exit_code=0, duration_ms=1000)
    path.write_bytes(path.read_bytes().replace(b'"exit_code":0', b'"exit_code":1'))
    page = render_html(summarise(read_entries(path)), verify(path), head(path), title="Audit <Shop>")
    assert "<script>" not in page and "&lt;script&gt;" in page and "a&amp;b" in page
    assert "Audit &lt;Shop&gt;" in page
    assert "Chain BROKEN" in page and "line 2: hash mismatch (edited?)" in page


def test_html_screenshot(log_path: Path, runs: list, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed, and CI must run the screenshot test")
        pytest.skip("chromium not installed (apt-get install chromium)")
    page = tmp_path / "report.html"
    page.write_text(html_page(log_path, runs), encoding="utf-8")
    png = tmp_path / "report.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1280,1600",
         page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert png.exists() and png.stat().st_size > 10_000

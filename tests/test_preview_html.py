"""`run --dry-run --format html -o FILE`: one self-contained printable page a DPO signs, with
the numbers read back from the page (parsed, and rendered in headless Chromium) and compared
with plain SQL."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import AS_OF, SHOP_POLICIES, file_sha256, invoke, scalar, unchanged_witness
from test_run import build_shop, expected

if TYPE_CHECKING:
    from conftest import TestDatabase


class _Page(HTMLParser):
    """The page's numbers: ``data-count`` spans, outside or inside a ``data-policy`` section."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None, str | None, str | None]] = []
        self.counts: dict[tuple[str | None, str], list[int]] = {}
        self.fields: dict[str, str] = {}
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        policy = a.get("data-policy") or (self.stack[-1][1] if self.stack else None)
        if tag in ("meta", "br", "link", "img", "input"):
            return
        self.stack.append((tag, policy, a.get("data-count"), a.get("data-field")))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if not self.stack:
            return
        _tag, policy, count, fld = self.stack[-1]
        if count is not None:
            self.counts.setdefault((policy, count), []).append(int(data.replace(",", "")))
        if fld is not None:
            self.fields[fld] = data


def read_page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _check(page: _Page, db: TestDatabase, pf: Path) -> None:
    exp = expected(db.engine)
    deleted = len(exp.accounts_deleted) + len(exp.invoices_due) + len(exp.tickets_due)
    # Holds follow foreign keys (issue 17): an invoice of a held account is held too.
    held = len(exp.accounts_held) + len(exp.invoices_held) + len(exp.tickets_held)
    # The summary sentence and its card: the same number twice.
    assert page.counts[(None, "deleted")] == [deleted, deleted]
    assert page.counts[(None, "anonymised")] == [len(exp.accounts_deferred)] * 2
    assert page.counts[(None, "held")] == [held, held]
    assert page.counts[(None, "waiting")] == [0, 0]
    assert page.counts[("accounts", "due")] == [len(exp.accounts_due)]
    assert page.counts[("accounts", "to_delete")] == [len(exp.accounts_deleted)]
    assert page.counts[("accounts", "held")] == [len(exp.accounts_held)]
    assert page.counts[("accounts", "deferred")] == [len(exp.accounts_deferred)]
    assert page.counts[("accounts", "cascaded.orders")] == [len(exp.orders_deleted)]
    assert page.counts[("invoices", "to_delete")] == [len(exp.invoices_due)]
    assert page.counts[("invoices", "cascaded.invoice_lines")] == [len(exp.invoice_lines_deleted)]
    assert page.counts[("correspondence", "to_delete")] == [len(exp.tickets_due)]
    assert page.counts[("correspondence", "held")] == [len(exp.tickets_held)]
    # The re-identification check on the accounts left anonymised: the deferred ones, grouped
    # here by their values once generalised (postcode area, birth year) and those kept as they are.
    deferred = sorted(exp.accounts_deferred)
    year = "strftime('%Y', birth_date)" if db.name == "sqlite" else "EXTRACT(YEAR FROM birth_date)"
    groups = scalar(db.engine, f"SELECT MIN(n) FROM (SELECT COUNT(*) AS n FROM accounts WHERE id IN "
                               f"({', '.join(map(str, deferred))}) GROUP BY substr(postcode, 1, 4), {year}, "
                               "created_at, deregistered_at, legal_hold) g")
    assert page.counts[("accounts", "reid.rows")] == [len(deferred)]
    assert page.counts[("accounts", "reid.k")] == [groups]
    assert page.counts[("accounts", "reid.k_anonymity")] == [5]
    assert page.fields["policy_file_sha256"] == file_sha256(pf)
    assert page.fields["as_of"] == "2026-11-24T03:00:00+01:00"
    text = " ".join(" ".join(page.text).split())
    for policy in SHOP_POLICIES:
        assert policy["basis"] in text
    assert "deleted 24 months after the account was deregistered (deregistered_at)" in text
    for line in ("Sign-off", "Name", "Role", "Date", "Signature"):
        assert line in text


def _render(db: TestDatabase, tmp_path: Path) -> tuple[Path, Path]:
    pf = build_shop(db, tmp_path)
    out = tmp_path / "preview.html"
    before = unchanged_witness(db)
    result = invoke(["--policies", str(pf), "--log-format", "json", "run", "--dry-run", "--as-of", AS_OF,
                     "--format", "html", "-o", str(out)])
    assert result.exit_code == 0, result
    assert result.stdout == ""
    assert unchanged_witness(db) == before
    return pf, out


def test_html_preview_is_self_contained_and_its_numbers_equal_plain_sql(db: TestDatabase, tmp_path: Path) -> None:
    """The page (parsed) carries the summary, each policy's basis, rule and counts, the as-of
    moment, the policy file's SHA-256 and a sign-off block; no script, no external reference."""
    pf, out = _render(db, tmp_path)
    html = out.read_text(encoding="utf-8")
    page = read_page(html)
    _check(page, db, pf)
    assert not [t for t, _a in page.tags if t in ("script", "img", "link", "iframe")]
    assert "http://" not in html and "https://" not in html and "src=" not in html


def test_html_needs_dry_run(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    """`--format html` without --dry-run: exit 2, nothing touched, no file."""
    pf = build_shop(sqlite_db, tmp_path)
    before = unchanged_witness(sqlite_db)
    out = tmp_path / "x.html"
    result = invoke(["--policies", str(pf), "run", "--as-of", AS_OF, "--format", "html", "-o", str(out)])
    assert result.exit_code == 2 and "--dry-run" in result.stderr
    assert not out.exists() and unchanged_witness(sqlite_db) == before


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed, and CI must run the browser test")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return found


def test_html_preview_in_headless_chromium(sqlite_db: TestDatabase, tmp_path: Path) -> None:
    """Rendered by Chromium: a screenshot is made, and the DOM Chromium built gives back the same
    numbers as plain SQL."""
    chromium = _chromium()
    pf, out = _render(sqlite_db, tmp_path)
    common: list[Any] = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-component-update", "--no-first-run", "--disable-sync",
                         f"--user-data-dir={tmp_path / 'profile'}"]
    png = tmp_path / "preview.png"
    subprocess.run([*common, f"--screenshot={png}", "--window-size=1000,2400", out.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert png.exists() and png.stat().st_size > 10_000
    dom = subprocess.run([*common, "--dump-dom", out.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert "data-count" in dom
    _check(read_page(dom), sqlite_db, pf)

"""`run --metrics-file`: node exporter textfile metrics, parsed with prometheus_client's parser.

Counts are checked against the database with plain SQL; the file is replaced atomically and
written on failed nights too.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import pytest

from retention.demo import create_shop
from retention.reports import metrics as metrics_mod
from tests.helpers import SHOP_POLICIES, invoke, scalar, write_policies

parser = pytest.importorskip("prometheus_client.parser")


def _parse(path: Path) -> dict[str, Any]:
    """{sample name: value} for unlabelled samples, {(name, policy, action): value} for rows."""
    out: dict[Any, float] = {}
    types: dict[str, str] = {}
    for family in parser.text_string_to_metric_families(path.read_text(encoding="utf-8")):
        types[family.name] = family.type
        for sample in family.samples:
            if sample.labels:
                out[(sample.name, sample.labels["policy"], sample.labels["action"])] = sample.value
            else:
                out[sample.name] = sample.value
    out["types"] = types  # type: ignore[assignment]
    return out


@pytest.fixture
def shop(tmp_path: Path, sqlite_db: Any) -> tuple[Path, Any]:
    create_shop(sqlite_db.engine, accounts=150, seed=4, today=dt.date.today())
    policies = [{**p, "max_fraction": 1.0} for p in SHOP_POLICIES]
    return write_policies(tmp_path / "policies.yaml", sqlite_db.url, policies), sqlite_db


def test_a_run_writes_counts_that_match_the_database(tmp_path: Path, shop: tuple[Path, Any]) -> None:
    path, db = shop
    prom = tmp_path / "textfile" / "retention.prom"
    tickets = scalar(db.engine, "SELECT COUNT(*) FROM tickets")
    messages = scalar(db.engine, "SELECT COUNT(*) FROM ticket_messages")
    invoices = scalar(db.engine, "SELECT COUNT(*) FROM invoices")
    before = time.time()
    result = invoke(["-c", str(path), "run", "--metrics-file", str(prom), "--format", "json"], parse_json=True)
    assert result.exit_code == 0, result
    m = _parse(prom)
    assert m["types"]["retention_rows"] == "counter"
    assert m[("retention_rows_total", "correspondence", "deleted")] == tickets - scalar(
        db.engine, "SELECT COUNT(*) FROM tickets") > 0
    assert m[("retention_rows_total", "correspondence", "cascaded")] == messages - scalar(
        db.engine, "SELECT COUNT(*) FROM ticket_messages") > 0
    assert m[("retention_rows_total", "invoices", "deleted")] == invoices - scalar(
        db.engine, "SELECT COUNT(*) FROM invoices")
    anonymised = result.policy("accounts")["anonymised"]
    assert m[("retention_rows_total", "accounts", "anonymised")] == anonymised
    assert m["retention_exit_code"] == 0
    assert before <= m["retention_last_success_timestamp_seconds"] <= time.time()
    assert 0 < m["retention_run_duration_seconds"] < 120

    # The next night finds nothing: the counters stay, the success time moves on.
    time.sleep(0.01)
    again = invoke(["-c", str(path), "run", "--metrics-file", str(prom)])
    assert again.exit_code == 0
    m2 = _parse(prom)
    assert m2[("retention_rows_total", "correspondence", "deleted")] == m[
        ("retention_rows_total", "correspondence", "deleted")]
    assert m2["retention_last_success_timestamp_seconds"] > m["retention_last_success_timestamp_seconds"]
    assert [p.name for p in prom.parent.iterdir()] == ["retention.prom"]  # no temporary file left


def test_a_failed_night_writes_its_exit_code_and_keeps_the_last_success(tmp_path: Path,
                                                                       shop: tuple[Path, Any]) -> None:
    path, _ = shop
    prom = tmp_path / "retention.prom"
    assert invoke(["-c", str(path), "run", "--metrics-file", str(prom)]).exit_code == 0
    good = _parse(prom)
    path.write_text(path.read_text().replace("retain: 2 years", "retain: 2 lightyears"))
    bad = invoke(["-c", str(path), "run", "--metrics-file", str(prom)])
    assert bad.exit_code == 2
    m = _parse(prom)
    assert m["retention_exit_code"] == 2
    assert m["retention_last_success_timestamp_seconds"] == good["retention_last_success_timestamp_seconds"]
    assert m["retention_last_run_timestamp_seconds"] > good["retention_last_run_timestamp_seconds"]
    assert m[("retention_rows_total", "accounts", "anonymised")] == good[
        ("retention_rows_total", "accounts", "anonymised")]


def test_the_file_is_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prom = tmp_path / "retention.prom"
    metrics_mod.write_metrics(prom, [metrics_mod.RowCount("p", "shop", "deleted", 5)], exit_code=0, duration_s=1.0)
    old = prom.read_text()

    def crash(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        metrics_mod.write_metrics(prom, [metrics_mod.RowCount("p", "shop", "deleted", 7)], exit_code=0,
                                  duration_s=1.0)
    assert prom.read_text() == old
    assert [p.name for p in tmp_path.iterdir()] == ["retention.prom"]


def test_label_values_are_escaped_and_parse_back(tmp_path: Path) -> None:
    prom = tmp_path / "r.prom"
    odd = 'odd "name" \\ with\nnewline'
    metrics_mod.write_metrics(prom, [metrics_mod.RowCount(odd, "shop", "deleted", 3)], exit_code=0, duration_s=0.5)
    metrics_mod.write_metrics(prom, [metrics_mod.RowCount(odd, "shop", "deleted", 4)], exit_code=3, duration_s=0.5)
    m = _parse(prom)
    assert m[("retention_rows_total", odd, "deleted")] == 7
    assert m["retention_exit_code"] == 3


def test_metrics_file_with_dry_run_is_refused(tmp_path: Path, shop: tuple[Path, Any]) -> None:
    path, _ = shop
    result = invoke(["-c", str(path), "run", "--dry-run", "--metrics-file", str(tmp_path / "m.prom")])
    assert result.exit_code == 2 and "--metrics-file is for real runs" in result.stderr
    assert not (tmp_path / "m.prom").exists()

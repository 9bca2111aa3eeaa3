"""A fleet: the Indexed Job of jobs/kubernetes/fleet-cronjob.yaml, simulated.

Three databases (SQLite, PostgreSQL, MariaDB) in one policy file; the manifest's own
command runs three times in parallel as separate processes with JOB_COMPLETION_INDEX
0, 1 and 2, as the Job controller sets it. Each index works on its own database only,
keeps its own audit log (`audit.path: audit/{database}.jsonl`), and `audit show` with
the three logs gives the DPO one report.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from retention.demo import create_shop
from tests.helpers import SHOP_POLICIES, invoke, scalar

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "jobs" / "kubernetes" / "fleet-cronjob.yaml"
KINDS = ("sqlite", "postgresql", "mariadb")


def _container() -> dict[str, Any]:
    (cron,) = [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d and d["kind"] == "CronJob"]
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


def _tickets_pending(engine: Any, cutoff_local: str) -> int:
    # The correspondence policy in plain SQL: closed, not held, closed on or before the cut-off.
    return scalar(engine, "SELECT COUNT(*) FROM tickets WHERE status = 'closed' AND legal_hold = FALSE "
                          "AND closed_at IS NOT NULL AND closed_at <= :cut", cut=cutoff_local)


@pytest.mark.slow
def test_three_indices_run_their_own_database_in_parallel(tmp_path: Path, db_factory: Any) -> None:
    today = dt.date.today()
    dbs = {f"shop_{kind}": db_factory(kind) for kind in KINDS}
    for d in dbs.values():
        create_shop(d.engine, accounts=150, seed=9, today=today)
    tickets_before = {name: scalar(d.engine, "SELECT COUNT(*) FROM tickets") for name, d in dbs.items()}

    policies = []
    for name in dbs:
        for p in SHOP_POLICIES:
            policies.append({**p, "name": f"{p['name']}_{name}", "database": name})
    doc = {
        "version": 1, "timezone": "Europe/Amsterdam", "locale": "nl_NL",
        # URLs from the environment, as the Secret gives them.
        "databases": {name: {"url": f"${{{name.upper()}_URL}}", "purge": "none"} for name in dbs},
        "audit": {"path": "audit/{database}.jsonl"},
        "policies": policies,
    }
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")

    container = _container()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update({item["name"]: item["value"] for item in container["env"] if "value" in item})
    env.update({f"{name.upper()}_URL": d.url for name, d in dbs.items()})
    env["RETENTION_POLICIES"] = str(policy_file)
    env["HOME"] = str(tmp_path)
    script = container["args"][0]

    procs = [
        subprocess.Popen(["/bin/sh", "-c", script], env={**env, "JOB_COMPLETION_INDEX": str(i)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(len(dbs))
    ]
    outputs = [p.communicate(timeout=180) for p in procs]

    heads = {}
    for index, (name, d) in enumerate(dbs.items()):
        stdout, stderr = outputs[index]
        assert procs[index].returncode == 0, (name, stderr)
        (result,) = [json.loads(line) for line in stdout.splitlines()]
        logs = [json.loads(line) for line in stderr.splitlines()]
        assert {p["database"] for p in result["policies"]} == {name}
        assert len(result["policies"]) == 3
        (end,) = [e for e in logs if e["event"] == "run.end"]
        assert end["run"] == result["run"] and end["exit_code"] == 0
        # Checked against the database with its own SQL.
        corr = next(p for p in result["policies"] if p["name"] == f"correspondence_{name}")
        assert corr["applied"] > 0
        cutoff_local = corr["cutoff"][:19].replace("T", " ")
        assert _tickets_pending(d.engine, cutoff_local) == 0
        assert tickets_before[name] - scalar(d.engine, "SELECT COUNT(*) FROM tickets") == corr["applied"]
        # Its own audit log, whole, ending where the run said.
        log = tmp_path / "audit" / f"{name}.jsonl"
        verified = invoke(["-c", str(policy_file), "audit", "verify", "--log", str(log)])
        assert verified.exit_code == 0, verified.stdout
        head = invoke(["-c", str(policy_file), "audit", "head", "--log", str(log)]).stdout.strip()
        assert head == end["audit_head"]
        heads[name] = head
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        assert {e["run"] for e in entries} == {result["run"]}
    assert sorted(p.name for p in (tmp_path / "audit").glob("*.jsonl")) == sorted(f"{n}.jsonl" for n in dbs)

    # The DPO's view: the three logs as one, runs in time order.
    args = ["-c", str(policy_file), "audit", "show", "--format", "json"]
    for name in dbs:
        args += ["--log", str(tmp_path / "audit" / f"{name}.jsonl")]
    shown = invoke(args, parse_json=True)
    assert shown.exit_code == 0, shown.stderr
    runs = shown.data["runs"]
    assert len(runs) == 3
    assert [r["started"] for r in runs] == sorted(r["started"] for r in runs)
    by_db = {r["policies"][0]["database"]: r for r in runs}
    assert set(by_db) == set(dbs)
    assert all(r["status"] == "ok" for r in runs)


def test_a_per_database_audit_path_needs_a_database(tmp_path: Path, sqlite_db: Any) -> None:
    doc = {"version": 1, "databases": {"a": {"url": sqlite_db.url}}, "audit": {"path": "audit/{database}.jsonl"},
           "policies": [{**SHOP_POLICIES[2], "database": "a", "max_fraction": 1.0}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    create_shop(sqlite_db.engine, accounts=20, seed=1, today=dt.date.today())
    refused = invoke(["-c", str(path), "run", "--dry-run"])
    assert refused.exit_code == 2
    assert "contains {database}: run with --database NAME or --database-index N" in refused.stderr
    assert not (tmp_path / "audit").exists()
    head = invoke(["-c", str(path), "audit", "head"])
    assert head.exit_code == 2 and "--log PATH" in head.stderr
    ok = invoke(["-c", str(path), "run", "--database", "a"])
    assert ok.exit_code == 0, ok.stderr
    assert (tmp_path / "audit" / "a.jsonl").exists()


def test_audit_show_refuses_html_for_several_logs(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    result = invoke(["audit", "show", "--log", str(a), "--log", str(b), "--format", "html"])
    assert result.exit_code == 2 and "--format html shows one log" in result.stderr

"""The shipped jobs (jobs/cron, jobs/systemd, jobs/kubernetes) write JSON lines and nothing else.

Each job's exact command line is read out of its file, pointed at a demo shop in a temp
directory (paths swapped, `retention` from this venv, `logger`/`systemd-cat` stand-ins),
and run with sh; every line it writes to stdout and stderr must parse as JSON, on a good
night and on a night with a broken policy file (exit 2). Under systemd (JOURNAL_STREAM),
each line carries its syslog priority for journald.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from retention.demo import build_demo

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"
RETENTION = Path(sys.executable).parent / "retention"


@dataclass
class Night:
    rc: int
    lines: list[str]  # everything the job wrote where its logs go, line by line

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"not a JSON line: {line!r}\nall lines:\n" + "\n".join(self.lines))
        return out


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jobs-demo") / "demo.db"
    build_demo(path, accounts=300, seed=11, today=dt.date.today())
    return path


@pytest.fixture
def site(tmp_path: Path, demo_db: Path) -> dict[str, Path]:
    """A host in a directory: bin/ (retention, logger, systemd-cat), policies, env file, log dir."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "retention").symlink_to(RETENTION)
    syslog = tmp_path / "syslog"
    # logger: keep what it was given (tag, priority, message or stdin) in a file.
    (bin_ / "logger").write_text(f'#!/bin/sh\n{{ echo "logger $*"; [ -t 0 ] || cat; }} >>{syslog}\n')
    # systemd-cat -t TAG -p PRIO CMD...: run CMD with its output where systemd-cat's goes.
    (bin_ / "systemd-cat").write_text('#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift 2; done\nexec "$@"\n')
    for f in ("logger", "systemd-cat"):
        (bin_ / f).chmod(0o755)
    db = tmp_path / "shop.db"
    shutil.copyfile(demo_db, db)
    etc = tmp_path / "etc"
    etc.mkdir()
    policies = etc / "policies.yaml"
    text = (REPO / "policies.yaml").read_text(encoding="utf-8")
    policies.write_text(text.replace("path: var/audit/retention.jsonl", f"path: {tmp_path}/audit/retention.jsonl"),
                        encoding="utf-8")
    env = etc / "retention.env"
    env.write_text(f"SHOP_DATABASE_URL=sqlite:///{db}\nRETENTION_AUDIT_KEY=test-key-0123456789\n")
    for d in ("lib", "log", "audit"):
        (tmp_path / d).mkdir()
    return {"root": tmp_path, "bin": bin_, "policies": policies, "env": env, "syslog": syslog, "db": db}


def _base_env(site: dict[str, Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RETENTION_") and k not in ("JOURNAL_STREAM", "SHOP_DATABASE_URL")}
    env["PATH"] = f"{site['bin']}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _env_file(site: dict[str, Path]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in site["env"].read_text().splitlines() if line)


def _break(site: dict[str, Path]) -> None:
    site["policies"].write_text("version: 1\ndatabases: {shop: {url: 'sqlite:///x.db'}}\npolicies:\n"
                                "  - name: x\n    table: accounts\n    after: deregistered_at\n"
                                "    retain: 2 lightyears\n    action: delete\n", encoding="utf-8")


# -- cron ----------------------------------------------------------------------------------

def _cron_command() -> tuple[str, dict[str, str]]:
    text = (JOBS / "cron" / "retention").read_text(encoding="utf-8")
    (line,) = [ln for ln in text.splitlines() if re.match(r"^[0-9*]", ln)]
    command = line.split(None, 6)[6]  # five time fields, the user, then the command
    variables = dict(re.findall(r"^([A-Z_]+)=(.*)$", text, re.M))
    return command, variables


def _run_cron(site: dict[str, Path]) -> Night:
    command, variables = _cron_command()
    root = site["root"]
    for old, new in (("/etc/retention/retention.env", str(site["env"])),
                     ("/var/lib/retention", str(root / "lib")), ("/var/log/retention", str(root / "log"))):
        assert old in command
        command = command.replace(old, new)
    env = _base_env(site)
    env["RETENTION_POLICIES"] = str(site["policies"])
    assert variables["RETENTION_POLICIES"] == "/etc/retention/policies.yaml"
    proc = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    # Everything goes to the log file; cron would mail anything printed.
    assert proc.stdout == "" and proc.stderr == "", (proc.stdout, proc.stderr)
    return Night(proc.returncode, (root / "log" / "run.log").read_text().splitlines())


# -- systemd -------------------------------------------------------------------------------

def _unit_line(key: str) -> str:
    text = (JOBS / "systemd" / "retention.service").read_text(encoding="utf-8")
    (value,) = re.findall(rf"^{key}=(.*)$", text, re.M)
    return value.lstrip("-").replace("/usr/local/bin/retention", "retention").replace("/usr/bin/systemd-cat",
                                                                                       "systemd-cat")


def _run_systemd(site: dict[str, Path], journal: bool = False) -> Night:
    env = {**_base_env(site), **_env_file(site), "RETENTION_POLICIES": str(site["policies"])}
    assert "RETENTION_POLICIES=/etc/retention/policies.yaml" in (JOBS / "systemd" / "retention.service").read_text()
    out = site["root"] / "journal"
    lines: list[str] = []
    rc = 0
    for key in ("ExecStart", "ExecStopPost"):
        with open(out, "w") as sink:
            if journal:
                st = os.fstat(sink.fileno())
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            # systemd gives stdout and stderr the same journal stream.
            proc = subprocess.run(["sh", "-c", _unit_line(key)], env=env, stdout=sink, stderr=sink, timeout=120)
        lines += out.read_text().splitlines()
        if key == "ExecStart":
            rc = proc.returncode
    return Night(rc, lines)


# -- Kubernetes ----------------------------------------------------------------------------

def _run_kubernetes(site: dict[str, Path]) -> Night:
    docs = list(yaml.safe_load_all((JOBS / "kubernetes" / "cronjob.yaml").read_text(encoding="utf-8")))
    (cron,) = [d for d in docs if d and d["kind"] == "CronJob"]
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    env = {**_base_env(site), **_env_file(site)}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
    assert env["RETENTION_POLICIES"] == "/etc/retention/policies.yaml"
    env["RETENTION_POLICIES"] = str(site["policies"])
    env["HOME"] = str(site["root"])
    proc = subprocess.run(["/bin/sh", "-c", container["args"][0]], env=env, capture_output=True, text=True,
                          timeout=120)
    # `kubectl logs` interleaves both streams; each must be JSON lines on its own.
    return Night(proc.returncode, proc.stdout.splitlines() + proc.stderr.splitlines())


JOBS_RUNNERS = {"cron": _run_cron, "systemd": _run_systemd, "kubernetes": _run_kubernetes}


@pytest.mark.slow
@pytest.mark.parametrize("job", sorted(JOBS_RUNNERS))
def test_a_good_night_is_json_lines_only(job: str, site: dict[str, Path]) -> None:
    night = JOBS_RUNNERS[job](site)
    records = night.records()
    assert night.rc == 0, night.lines
    results = [r for r in records if "policies" in r and "level" not in r]
    assert len(results) == 1 and results[0]["dry_run"] is False
    run_id = results[0]["run"]
    logs = [r for r in records if "level" in r]
    assert all("event" in r for r in logs)
    ends = [r for r in logs if r["event"] == "run.end"]
    assert len(ends) == 1 and ends[0]["exit_code"] == 0 and ends[0]["status"] == "ok"
    assert ends[0]["run"] == run_id and ends[0]["audit_head"]
    assert all(r["run"] == run_id for r in logs if r.get("logger") == "retention.run")
    if job == "cron":
        # The head went to syslog instead, through logger.
        assert ends[0]["audit_head"] in site["syslog"].read_text()
    else:
        heads = [r for r in logs if r["event"] == "audit.head"]
        assert [h["head"] for h in heads] == [ends[0]["audit_head"]]


@pytest.mark.slow
@pytest.mark.parametrize("job", sorted(JOBS_RUNNERS))
def test_a_broken_policy_file_is_exit_2_and_a_json_error_line(job: str, site: dict[str, Path]) -> None:
    _break(site)
    night = JOBS_RUNNERS[job](site)
    records = night.records()
    assert night.rc == 2
    errors = [r for r in records if r.get("level") == "error"]
    assert errors and "key 'retain'" in errors[0]["message"] and errors[0]["exit_code"] == 2
    if job == "cron":
        assert "retention run exited 2" in site["syslog"].read_text()


@pytest.mark.slow
def test_under_systemd_each_line_carries_its_journald_priority(site: dict[str, Path]) -> None:
    good = _run_systemd(site, journal=True)
    assert good.rc == 0
    # Log lines (stderr) carry the prefix; the results line (stdout) is plain JSON, which
    # journald files at the unit's default priority (info).
    logged = [line for line in good.lines if line.startswith("<")]
    assert logged and all(re.match(r"^<6>\{", line) for line in logged), good.lines
    assert all(json.loads(line[3:])["level"] == "info" for line in logged)
    assert all(json.loads(line) for line in good.lines if not line.startswith("<"))
    _break(site)
    bad = _run_systemd(site, journal=True)
    assert bad.rc == 2
    errors = [line for line in bad.lines if line.startswith("<3>")]
    assert errors and json.loads(errors[0][3:])["level"] == "error"

"""docs/operations.md: every `sh` block marked `<!-- test -->` runs, in order, as one shell
session (`set -e`), in a scratch directory holding the shipped policies.yaml.

The server paths in the doc are swapped for directories inside the scratch directory
(PREFIXES below), and the logrotate snippet's owner `retention retention` for the user
running the test (logrotate refuses a user that does not exist). Blocks that cannot run
here are marked `<!-- not run: why -->`, and the reason must name where else they are
checked; a block with neither marker fails the test.
"""

from __future__ import annotations

import csv
import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "operations.md"
PREFIXES = ("/etc/retention", "/var/lib/retention", "/var/log/retention", "/etc/logrotate.d",
            "/var/lib/node_exporter")
BLOCK = re.compile(r"(?:<!-- (?P<marker>[^>]*) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def _blocks(lang: str) -> list[tuple[str | None, str]]:
    text = DOC.read_text(encoding="utf-8")
    return [(m["marker"], m["body"]) for m in BLOCK.finditer(text) if m["lang"] == lang]


def test_every_sh_block_is_run_or_says_why_not() -> None:
    blocks = _blocks("sh")
    assert blocks
    for marker, body in blocks:
        assert marker is not None, f"sh block without a marker:\n{body}"
        assert marker == "test" or (marker.startswith("not run: ") and "tests/" in marker), marker
    not_run = [body for marker, body in blocks if marker != "test"]
    assert len(not_run) <= 2, "only the service-manager and cluster steps may stay unrun"


def test_alert_rules_parse_and_name_metrics_the_run_writes() -> None:
    ((_, rules),) = _blocks("yaml")
    doc = yaml.safe_load(rules)
    exprs = [r["expr"] for g in doc["groups"] for r in g["rules"]]
    names = set(re.findall(r"retention_[a-z_]+", " ".join(exprs)))
    source = (REPO / "retention" / "reports" / "metrics.py").read_text(encoding="utf-8")
    assert names and all(f"# TYPE {n} " in source for n in names), names


@pytest.mark.slow
def test_the_documented_commands_run(tmp_path: Path) -> None:
    if shutil.which("logrotate") is None or shutil.which("jq") is None or shutil.which("openssl") is None:
        pytest.skip("logrotate, jq and openssl are needed to run docs/operations.md")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(REPO / "policies.yaml", work / "policies.yaml")
    root = tmp_path / "root"
    script = "\n".join(body for marker, body in _blocks("sh") if marker == "test")
    for prefix in PREFIXES:
        script = script.replace(prefix, f"{root}{prefix}")
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    script = script.replace("create 0640 retention retention", f"create 0640 {user} {group}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_") and k != "SHOP_DATABASE_URL"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(["sh", "-ex", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n" \
                                 f"{proc.stderr[-5000:]}"
    # What the commands say they do, they did.
    # One row per policy of the shipped policies.yaml (4 since issue 11), as a spreadsheet reads it.
    with (work / "preview-2027-01-01.csv").open(newline="", encoding="utf-8") as preview:
        assert sorted(row["policy"] for row in csv.DictReader(preview)) == \
            ["accounts", "correspondence", "invoices", "orders"]
    assert "rotating pattern" in proc.stdout
    assert "retention_exit_code 0" in proc.stdout
    audit = root / "var/lib/retention/audit"
    assert len(list(audit.glob("retention-until-*.jsonl"))) == 1 and (audit / "retention.jsonl").exists()
    assert sorted(p.name for p in (work / "var/audit/fleet").glob("*.jsonl")) == ["tenant_a.jsonl", "tenant_b.jsonl"]

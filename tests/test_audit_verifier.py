"""An inspector verifies the audit log without this project's code: docs/verify-audit-log.sh
(bash, jq, sha256sum, openssl) on real logs written by `retention run`, keyed and not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import SHOP_POLICIES, SHOP_TODAY, audit_path, invoke, run_cli, write_policies

from retention.audit.log import AuditLog
from retention.demo import create_shop

if TYPE_CHECKING:
    from conftest import TestDatabase

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "verify-audit-log.sh"
KEY = "inspector-can-check-this-ü"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("jq", "sha256sum", "openssl", "bash")),
    reason="jq, sha256sum, openssl and bash are needed (.ci/run installs jq)",
)


def verifier(log: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AUDIT_KEY"}
    if key is not None:
        env["AUDIT_KEY"] = key
    return subprocess.run(["bash", str(SCRIPT), str(log), *args], capture_output=True, text=True, env=env,
                          check=False)


def shop_log(db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyed: bool) -> Path:
    """A log written by real `retention run`s: a preview, a run that changes rows, an empty run."""
    create_shop(db.engine, accounts=150, seed=5, today=SHOP_TODAY)
    policy_file = write_policies(tmp_path / "policies.yaml", db.url, SHOP_POLICIES, purge="standard")
    if keyed:
        policy_file.write_text(policy_file.read_text().replace("audit:\n", "audit:\n  key_env: SHOP_AUDIT_KEY\n"))
        monkeypatch.setenv("SHOP_AUDIT_KEY", KEY)
    else:
        monkeypatch.delenv("SHOP_AUDIT_KEY", raising=False)
    assert run_cli(policy_file, "--dry-run").exit_code == 0
    first = run_cli(policy_file)
    assert first.exit_code == 0, first
    assert sum(p["applied"] for p in first.data["policies"]) > 0, first
    assert run_cli(policy_file).exit_code == 0
    head = invoke(["--policies", str(policy_file), "audit", "head"]).stdout.strip()
    log = audit_path(policy_file)
    assert head.startswith(f"{len(log.read_bytes().splitlines())}:")
    return log


def edit_a_count(log: Path) -> int:
    """What someone hiding a deletion does: lower the count of the first committed batch.
    Returns the 1-based line edited."""
    lines = log.read_bytes().splitlines(keepends=True)
    for number, raw in enumerate(lines, start=1):
        entry = json.loads(raw)
        if entry["event"] == "batch.committed":
            lines[number - 1] = raw.replace(f'"count":{entry["count"]},'.encode(),
                                            f'"count":{entry["count"] - 1},'.encode())
            assert lines[number - 1] != raw
            log.write_bytes(b"".join(lines))
            return number
    raise AssertionError("no batch.committed in the log")


@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
def test_a_real_log_verifies_and_an_edited_count_is_caught(
    db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyed: bool
) -> None:
    log = shop_log(db, tmp_path, monkeypatch, keyed)
    key = KEY if keyed else None
    ours = invoke(["audit", "verify", "--log", str(log)])
    lines = len(log.read_bytes().splitlines())
    theirs = verifier(log, key=key)
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    assert theirs.stdout.startswith(f"OK: {lines} entries, head {lines}:")
    head = theirs.stdout.split("head ")[1].strip()
    assert verifier(log, head, key=key).returncode == 0
    if keyed:  # without the key, or with another one, nothing verifies
        assert "hash mismatch" in verifier(log).stdout
        assert verifier(log, key="guess").returncode == 1
    else:
        assert ours.stdout.strip() == theirs.stdout.strip()

    original = log.read_bytes()
    edited = edit_a_count(log)
    caught = verifier(log, key=key)
    assert caught.returncode == 1
    assert caught.stdout.startswith(f"line {edited}: hash mismatch"), caught.stdout

    # Cutting lines off the end keeps a valid chain: only the head kept elsewhere shows it.
    log.write_bytes(b"".join(original.splitlines(keepends=True)[:-2]))
    assert verifier(log, key=key).returncode == 0
    cut = verifier(log, head, key=key)
    assert cut.returncode == 1 and "not found" in cut.stdout


def test_escapes_and_unicode_verify_and_a_reformatted_line_is_named(tmp_path: Path) -> None:
    """Strings with quotes, backslashes, control characters, DEL and non-ASCII hash the same for
    jq as for the writer; a line re-serialised with spaces is named as not canonical."""
    log = tmp_path / "log.jsonl"
    with AuditLog(log) as audit:
        audit.append("run.start", "r1", user="Zoë \"ops\" \\ \t\x01\x7f \u2028 \U0001f600", host="h")
        audit.append("batch", "r1", keys=["a\nb", 2**60, -3], columns=["é", "z", "A"])
        audit.append("run.end", "r1", status="ok", exit_code=0, duration_ms=12)
    assert verifier(log).returncode == 0, verifier(log).stdout
    lines = log.read_bytes().splitlines(keepends=True)
    lines[1] = json.dumps(json.loads(lines[1]), indent=None).encode() + b"\n"  # ", " and ": "
    log.write_bytes(b"".join(lines))
    out = verifier(log)
    assert out.returncode == 1 and out.stdout.startswith("line 2: not in canonical form"), out.stdout


def test_a_deleted_line_and_a_non_json_line(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    with AuditLog(log) as audit:
        for i in range(5):
            audit.append("batch.committed", "r", policy="p", batch=i, count=i)
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:2] + lines[3:]))
    assert verifier(log).stdout.startswith("line 3: seq 4 where 3 expected")
    log.write_bytes(b"".join(lines[:4]) + b"{not json\n")
    out = verifier(log)
    assert out.returncode == 1 and out.stdout.startswith("not valid JSON"), out.stdout

"""`audit show` checks the chain before it shows anything and says so in every format; a keyed
log without its key is "key missing", never "edited"; the `audit` commands need only the
policy file's `audit` section (no database URL or secret)."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import SHOP_POLICIES, SHOP_TODAY, audit_path, invoke, run_cli, unchanged_witness, write_policies

from retention.demo import create_shop

if TYPE_CHECKING:
    from conftest import TestDatabase

URL_VAR = "RT_TEST_SHOP_URL"
KEY_VAR = "RT_TEST_AUDIT_KEY"


def shop(db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, keyed: bool = False) -> Path:
    """A policy file whose database URL comes from the environment, as in production."""
    create_shop(db.engine, accounts=120, seed=9, today=SHOP_TODAY)
    policy_file = write_policies(tmp_path / "policies.yaml", db.url, SHOP_POLICIES)
    text = policy_file.read_text().replace(f"url: {db.url}", f"url: ${{{URL_VAR}}}")
    if keyed:
        text = text.replace("audit:\n", f"audit:\n  key_env: {KEY_VAR}\n")
        monkeypatch.setenv(KEY_VAR, "k3y")
    policy_file.write_text(text)
    monkeypatch.setenv(URL_VAR, db.url)
    return policy_file


def two_runs(policy_file: Path) -> Path:
    for _ in range(2):
        result = run_cli(policy_file)
        assert result.exit_code == 0, result
    return audit_path(policy_file)


def show(policy_file: Path, *args: str) -> tuple[int, str, str]:
    out = invoke(["--policies", str(policy_file), "audit", "show", *args])
    return out.exit_code, out.stdout, out.stderr


class _Verdict(HTMLParser):
    """The text of the page's verdict box (`.verify`) and its class."""

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.text, self.cls = 0, [], ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        cls = dict(attrs).get("class") or ""
        if self.depth:
            self.depth += 1
        elif tag == "section" and cls.startswith("verify"):
            self.depth, self.cls = 1, cls

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.text.append(data)


def verdict_box(page: str) -> tuple[str, str]:
    parser = _Verdict()
    parser.feed(page)
    return parser.cls, " ".join("".join(parser.text).split())


def edit_line(log: Path, event: str) -> int:
    """Change a number in the first line of ``event`` (without rehashing); its line number."""
    lines = log.read_bytes().splitlines(keepends=True)
    number = next(i for i, raw in enumerate(lines, start=1) if json.loads(raw)["event"] == event)
    lines[number - 1] = lines[number - 1].replace(b'"due":', b'"due":1')
    log.write_bytes(b"".join(lines))
    return number


@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
def test_every_format_states_an_intact_chain_and_whether_it_is_keyed(
    sqlite_db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyed: bool
) -> None:
    policy_file = shop(sqlite_db, tmp_path, monkeypatch, keyed=keyed)
    log = two_runs(policy_file)
    starts = [json.loads(line) for line in log.read_text().splitlines() if '"event":"run.start"' in line]
    assert {s["chain"] for s in starts} == {"hmac-sha256" if keyed else "sha256"}
    word = "keyed: HMAC-SHA-256" if keyed else "not keyed"

    code, text, _ = show(policy_file)
    assert code == 0 and text.splitlines()[0].startswith("Chain intact:") and word in text.splitlines()[0]
    code, out, _ = show(policy_file, "--format", "json")
    chain = json.loads(out)["chain"]
    assert code == 0 and chain["intact"] is True and chain["keyed"] is keyed and chain["checked"] is True
    code, out, _ = show(policy_file, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and rows and {r["verified"] for r in rows} == {"true"}
    assert all(r["chain"].startswith("Chain intact") and word in r["chain"] for r in rows)
    code, page, _ = show(policy_file, "--format", "html")
    cls, box = verdict_box(page)
    assert code == 0 and cls == "verify ok" and box.startswith("Chain intact")
    assert ("Keyed: every hash is an HMAC-SHA-256" if keyed else "Not keyed: plain SHA-256") in box


def test_a_broken_chain_is_stated_first_and_the_runs_after_it_marked(
    sqlite_db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edited count is not printed as fact: the verdict names the line, the report still
    renders, the runs from that line on are UNVERIFIED, the ones before are not, exit 1."""
    policy_file = shop(sqlite_db, tmp_path, monkeypatch)
    log = two_runs(policy_file)
    lines = log.read_text().splitlines()
    second_start = [i for i, line in enumerate(lines, start=1) if '"event":"run.start"' in line][1]
    # The second run's first policy.end: the first run stays verified.
    number = second_start + next(i for i, line in enumerate(lines[second_start:], start=1)
                                 if '"event":"policy.end"' in line)
    lines[number - 1] = lines[number - 1].replace('"due":', '"due":1')
    log.write_text("\n".join(lines) + "\n")

    code, text, err = show(policy_file)
    assert code == 1 and f"line {number}" in err
    assert text.splitlines()[0].startswith(f"Chain BROKEN at line {number}: hash mismatch")
    marked = [line for line in text.splitlines() if "  run " in line]
    assert len(marked) == 2 and "UNVERIFIED" not in marked[0] and "UNVERIFIED" in marked[1]

    code, out, _ = show(policy_file, "--format", "json")
    doc = json.loads(out)
    assert code == 1 and doc["chain"]["intact"] is False and doc["chain"]["line"] == number
    assert [r["verified"] for r in doc["runs"]] == [True, False]
    code, out, _ = show(policy_file, "--format", "csv")
    by_run = {r["run"]: r["verified"] for r in csv.DictReader(io.StringIO(out))}
    assert code == 1 and list(by_run.values()) == ["true", "false"]
    code, page, _ = show(policy_file, "--format", "html")
    cls, box = verdict_box(page)
    assert code == 1 and cls == "verify bad" and box.startswith("Chain BROKEN") and f"line {number}" in box
    assert page.count("UNVERIFIED") == 1


def test_expect_head_on_show_catches_a_truncated_log(
    sqlite_db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy_file = shop(sqlite_db, tmp_path, monkeypatch)
    log = two_runs(policy_file)
    head = invoke(["--policies", str(policy_file), "audit", "head"]).stdout.strip()
    assert show(policy_file, "--expect-head", head)[0] == 0
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:-3]))
    assert show(policy_file)[0] == 0  # the shorter chain is whole in itself
    code, text, _ = show(policy_file, "--expect-head", head)
    assert code == 1 and "not found: log truncated or rewritten" in text.splitlines()[0]
    assert all("UNVERIFIED" in line for line in text.splitlines() if "  run " in line)


def test_run_with_key_env_set_but_unset_variable_exits_2_and_touches_nothing(
    db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy_file = shop(db, tmp_path, monkeypatch, keyed=True)
    monkeypatch.delenv(KEY_VAR)
    before = unchanged_witness(db)
    result = run_cli(policy_file)
    assert result.exit_code == 2
    assert f"audit.key_env names ${KEY_VAR}, which is not set" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not audit_path(policy_file).exists() and not audit_path(policy_file).parent.exists()
    assert unchanged_witness(db) == before


def test_keyed_log_without_its_key_is_key_missing_not_edited(
    sqlite_db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy_file = shop(sqlite_db, tmp_path, monkeypatch, keyed=True)
    log = two_runs(policy_file)
    monkeypatch.delenv(KEY_VAR)
    out = invoke(["--policies", str(policy_file), "audit", "verify"])
    assert out.exit_code == 2 and "keyed" in out.stderr and "key is missing" in out.stderr
    assert "edited" not in out.stderr + out.stdout
    code, text, _ = show(policy_file)
    assert code == 2 and text.splitlines()[0].startswith("Chain NOT VERIFIED: the log is keyed")
    code, page, _ = show(policy_file, "--format", "html")
    assert code == 2 and verdict_box(page)[1].startswith("NOT VERIFIED: key missing")

    # Only the log, no policy file: its run.start entries say it is keyed.
    bare = invoke(["--policies", str(tmp_path / "none.yaml"), "audit", "verify", "--log", str(log)])
    assert bare.exit_code == 2 and "the log is keyed" in bare.stderr and "edited" not in bare.stderr
    # And with the key back, it verifies.
    monkeypatch.setenv(KEY_VAR, "k3y")
    assert invoke(["--policies", str(policy_file), "audit", "verify"]).exit_code == 0


def test_audit_commands_need_no_database_variable_nor_valid_policies(
    sqlite_db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An inspector with the policy file and the log, but no database secrets: every `audit`
    command works; a policy mistake elsewhere in the file does not stop them either."""
    policy_file = shop(sqlite_db, tmp_path, monkeypatch)
    two_runs(policy_file)
    monkeypatch.delenv(URL_VAR)
    assert invoke(["--policies", str(policy_file), "validate"]).exit_code == 2  # the variable matters elsewhere
    policy_file.write_text(policy_file.read_text().replace("retain: 7 years", "retain: 7 yeers"))
    for args in (["verify"], ["head"], ["show"], ["show", "--format", "html"]):
        out = invoke(["--policies", str(policy_file), "audit", *args])
        assert out.exit_code == 0, (args, out.stdout, out.stderr)


def test_a_bad_audit_section_is_a_located_error(tmp_path: Path) -> None:
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text("version: 1\naudit:\n  path: x.jsonl\n  key_envv: K\npolicies: []\n")
    out = invoke(["--policies", str(policy_file), "audit", "verify"])
    assert out.exit_code == 2
    assert f"{policy_file}:4: key 'audit.key_envv': unknown key; did you mean 'key_env'?" in out.stderr
    policy_file.write_text("version: 1\naudit:\n  path: ${NO_SUCH_AUDIT_DIR}/x.jsonl\npolicies: []\n")
    out = invoke(["--policies", str(policy_file), "audit", "show"])
    assert out.exit_code == 2 and "${NO_SUCH_AUDIT_DIR} is not set" in out.stderr


def test_an_archived_unkeyed_log_given_with_log_is_checked_not_called_keyed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With key_env configured and unset, `--log` of an older unkeyed log still verifies, and an
    edit in it is an edit: only a log whose first line fails without the key is "key missing"."""
    from retention.audit.log import AuditLog

    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(f"version: 1\naudit:\n  key_env: {KEY_VAR}\npolicies: []\n")
    monkeypatch.delenv(KEY_VAR, raising=False)
    archived = tmp_path / "2025.jsonl"
    with AuditLog(archived) as log:
        for i in range(5):
            log.append("batch.committed", "r", policy="p", batch=i, count=i)
    args = ["--policies", str(policy_file), "audit", "verify", "--log", str(archived)]
    assert invoke(args).exit_code == 0
    lines = archived.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"count":2', b'"count":9')
    archived.write_bytes(b"".join(lines))
    out = invoke(args)
    assert out.exit_code == 1 and out.stdout.startswith("line 3: hash mismatch")
    with AuditLog(keyed := tmp_path / "keyed.jsonl", key=b"k") as log:
        log.append("batch.committed", "r", policy="p", batch=1, count=1)
    out = invoke(["--policies", str(policy_file), "audit", "verify", "--log", str(keyed)])
    assert out.exit_code == 2 and "key is missing" in out.stderr

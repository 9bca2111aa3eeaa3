"""CLI ergonomics: -c/--config, global options after the command, -q, --database / --database-index.

Each test goes through the CLI (CliRunner) and checks the databases with its own SQL.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from retention.demo import create_shop
from retention.logs import configure_logging
from tests.helpers import AS_OF, SHOP_POLICIES, invoke, scalar, unchanged_witness, write_policies

TODAY = dt.date(2026, 11, 24)
# Accounts past their term (24 months before AS_OF), not held, still with personal data
# (anonymising sets phone to NULL; deleting removes the row), in plain SQL.
DUE_SQL = ("SELECT COUNT(*) FROM accounts WHERE deregistered_at IS NOT NULL "
           "AND deregistered_at <= '2024-11-24 03:00:00' AND legal_hold = FALSE AND phone IS NOT NULL")


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    yield
    configure_logging("json")


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def two_databases(tmp_path: Path, db_factory: Any) -> tuple[Path, Any, Any]:
    """One policy file, databases `alpha` and `beta` (SQLite each), the accounts policy on both."""
    a, b = db_factory("sqlite"), db_factory("sqlite")
    for d in (a, b):
        create_shop(d.engine, accounts=120, seed=5, today=TODAY)
    accounts = dict(SHOP_POLICIES[0])
    doc = {
        "version": 1, "timezone": "Europe/Amsterdam", "locale": "nl_NL",
        "databases": {"alpha": {"url": a.url, "purge": "none"}, "beta": {"url": b.url, "purge": "none"}},
        "audit": {"path": "audit/retention.jsonl"},
        "policies": [
            {**accounts, "name": "accounts_alpha", "database": "alpha", "max_fraction": 1.0},
            {**accounts, "name": "accounts_beta", "database": "beta", "max_fraction": 1.0},
        ],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path, a, b


def _shop_file(tmp_path: Path, sqlite_db: Any) -> Path:
    create_shop(sqlite_db.engine, accounts=120, seed=5, today=TODAY)
    return write_policies(tmp_path / "policies.yaml", sqlite_db.url, SHOP_POLICIES)


def test_c_and_config_are_aliases_of_policies(tmp_path: Path, sqlite_db: Any) -> None:
    path = _shop_file(tmp_path, sqlite_db)
    for flag in ("-c", "--config", "--policies"):
        before = invoke([flag, str(path), "validate"])
        after = invoke(["validate", flag, str(path)])
        assert before.exit_code == after.exit_code == 0, (flag, before.stderr, after.stderr)
        assert "3 policies OK" in before.stdout and before.stdout == after.stdout


def test_global_options_after_the_command_mean_the_same(tmp_path: Path, sqlite_db: Any) -> None:
    """`retention run --log-format json -c FILE` parses like `retention --log-format json -c FILE run`."""
    path = _shop_file(tmp_path, sqlite_db)
    result = invoke(["run", "--log-format", "json", "-c", str(path), "--dry-run", "--as-of", AS_OF,
                     "--format", "json"], parse_json=True)
    assert result.exit_code == 0, result
    events = _json_lines(result.stderr)
    assert [e["event"] for e in events][0] == "run.start"
    assert events[-1]["event"] == "run.end"
    assert {e["run"] for e in events} == {result.data["run"]}
    # A command-level option overrides the group's: console before, json after.
    both = invoke(["--log-format", "console", "run", "--log-format", "json", "-c", str(path), "--dry-run",
                   "--as-of", AS_OF, "--format", "json"], parse_json=True)
    assert _json_lines(both.stderr)[-1]["event"] == "run.end"


def test_errors_are_json_lines_under_log_format_json(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    result = invoke(["run", "--log-format", "json", "-c", str(missing)])
    assert result.exit_code == 2
    (line,) = _json_lines(result.stderr)
    assert line["level"] == "error" and line["event"] == "error" and line["exit_code"] == 2
    assert f"{missing}: policy file not found" in line["message"]
    # Without it the message stays the familiar text line.
    plain = invoke(["-c", str(missing), "run"])
    assert plain.stderr.startswith(f"error: {missing}: policy file not found")


def test_quiet_prints_nothing_on_a_good_night_and_the_error_on_a_bad_one(tmp_path: Path, sqlite_db: Any) -> None:
    path = _shop_file(tmp_path, sqlite_db)
    due = scalar(sqlite_db.engine, DUE_SQL)
    assert due > 0
    ok = invoke(["-q", "-c", str(path), "run", "--as-of", AS_OF])
    assert ok.exit_code == 0, ok.stderr
    assert ok.stdout == "" and ok.stderr == ""
    assert scalar(sqlite_db.engine, DUE_SQL) == 0  # it did run
    # -q after the command, under JSON logs: only the error line.
    bad = invoke(["run", "-q", "--log-format", "json", "-c", str(tmp_path / "nowhere.yaml")])
    assert bad.exit_code == 2 and bad.stdout == ""
    assert [e["level"] for e in _json_lines(bad.stderr)] == ["error"]


def test_database_limits_the_run_to_one_database(two_databases: tuple[Path, Any, Any]) -> None:
    path, a, b = two_databases
    due_b = scalar(b.engine, DUE_SQL)
    assert due_b > 0 and scalar(a.engine, DUE_SQL) == due_b
    untouched = unchanged_witness(a)
    result = invoke(["-c", str(path), "--log-format", "json", "run", "--database", "beta", "--as-of", AS_OF,
                     "--format", "json"], parse_json=True)
    assert result.exit_code == 0, result
    assert [p["name"] for p in result.data["policies"]] == ["accounts_beta"]
    assert scalar(b.engine, DUE_SQL) == 0
    assert unchanged_witness(a) == untouched


def test_database_index_counts_in_the_order_of_databases(two_databases: tuple[Path, Any, Any]) -> None:
    path, a, b = two_databases
    untouched = unchanged_witness(b)
    result = invoke(["-c", str(path), "run", "--database-index", "0", "--as-of", AS_OF, "--format", "json"],
                    parse_json=True)
    assert result.exit_code == 0, result
    assert [p["database"] for p in result.data["policies"]] == ["alpha"]
    assert scalar(a.engine, DUE_SQL) == 0
    assert unchanged_witness(b) == untouched


@pytest.mark.parametrize("args, message", [
    (["--database", "gamma"], "--database: unknown database 'gamma'; defined: alpha, beta"),
    (["--database-index", "2"], "--database-index 2: the policy file defines 2 database(s) (0..1): alpha, beta"),
    (["--database", "alpha", "--database-index", "0"], "give one of them"),
    (["--database", "alpha", "--policy", "accounts_beta"], "--policy 'accounts_beta': not on database 'alpha'"),
])
def test_a_wrong_database_choice_is_exit_2_naming_the_defined_ones(
        two_databases: tuple[Path, Any, Any], args: list[str], message: str) -> None:
    path, a, b = two_databases
    witnesses = unchanged_witness(a), unchanged_witness(b)
    for command in (["run", "--as-of", AS_OF], ["validate"]):
        if command == ["validate"] and "--policy" in args:
            continue
        result = invoke(["-c", str(path), *command, *args])
        assert result.exit_code == 2, (command, args, result.stderr)
        assert message in result.stderr
    assert (unchanged_witness(a), unchanged_witness(b)) == witnesses


def test_validate_with_database_checks_only_that_one(two_databases: tuple[Path, Any, Any]) -> None:
    path, a, _ = two_databases
    with a.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE accounts RENAME COLUMN deregistered_at TO gone_at")
    assert invoke(["-c", str(path), "validate"]).exit_code == 2
    only_beta = invoke(["-c", str(path), "validate", "--database", "beta"])
    assert only_beta.exit_code == 0, only_beta.stderr
    assert "1 policies OK" in only_beta.stdout and "accounts_beta" in only_beta.stdout
    assert "accounts_alpha" not in only_beta.stdout


def test_warnings_are_json_lines_under_log_format_json_and_gone_with_q(tmp_path: Path, sqlite_db: Any) -> None:
    path = _shop_file(tmp_path, sqlite_db)
    with sqlite_db.engine.begin() as conn:
        names = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tickets' "
                                     "AND sql LIKE '%closed_at%'").scalars().all()
        for name in names:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
    result = invoke(["validate", "-c", str(path), "--log-format", "json"])
    assert result.exit_code == 0, result.stderr
    lines = _json_lines(result.stderr)
    warnings = [e for e in lines if e["level"] == "warning"]
    assert warnings and warnings[0]["event"] == "warning"
    assert any("no index on tickets.closed_at" in w["message"] for w in warnings)
    text = invoke(["validate", "-c", str(path)])
    assert "warning: policy 'correspondence': no index on tickets.closed_at" in text.stderr
    quiet = invoke(["validate", "-c", str(path), "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_quiet_logging_keeps_errors_only() -> None:
    import io

    from retention.logs import get_logger

    stream = io.StringIO()
    configure_logging("json", stream=stream, quiet=True)
    log = get_logger("t")
    log.info("run.start")
    log.warning("lock.busy")
    log.error("run.end", exit_code=1)
    assert [e["event"] for e in _json_lines(stream.getvalue())] == ["run.end"]


def test_journald_priority_prefix_only_on_the_journal_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JOURNAL_STREAM names the stream by device:inode (systemd.exec(5)); another stream gets no prefix."""
    import os

    from retention.logs import get_logger

    journal, other = tmp_path / "journal", tmp_path / "other"
    with open(journal, "w") as j, open(other, "w") as o:
        st = os.fstat(j.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        for stream in (j, o):
            configure_logging("json", stream=stream)
            get_logger("t").info("run.start")
            get_logger("t").warning("lock.busy")
            get_logger("t").error("error", message="broken")
    assert [line[:3] for line in journal.read_text().splitlines()] == ["<6>", "<4>", "<3>"]
    assert [e["level"] for e in _json_lines(journal.read_text().replace("<6>", "").replace("<4>", "")
                                            .replace("<3>", ""))] == ["info", "warning", "error"]
    assert all(line.startswith("{") for line in other.read_text().splitlines())


@pytest.mark.parametrize("argv, message", [
    (["run", "--log-format", "json", "--bogus"], "No such option '--bogus'"),
    (["--log-format=json", "bogus"], "No such command 'bogus'"),
    (["--log-format", "json", "run", "--format", "xml"], "Invalid value for '--format'"),
    (["--log-format", "json", "audit", "show", "--bogus"], "No such option '--bogus'"),
])
def test_usage_errors_are_json_lines_under_log_format_json(argv: list[str], message: str) -> None:
    """A typo in a job's command line must not be the one non-JSON line of a night's log."""
    result = invoke(argv)
    assert result.exit_code == 2
    (line,) = _json_lines(result.stderr)
    assert line["level"] == "error" and line["event"] == "error" and message in line["message"]
    plain = invoke([a for a in argv if a not in ("--log-format", "json", "--log-format=json")])
    assert plain.exit_code == 2 and plain.stderr.startswith("Usage: ") and message in plain.stderr


def test_audit_show_policy_filter_is_not_taken_for_the_global_policies_option(tmp_path: Path, sqlite_db: Any) -> None:
    """`audit show --policy NAME` filters by policy; the global --policies FILE after the command
    still names the file (both once shared click's destination `policies`)."""
    pf = _shop_file(tmp_path, sqlite_db)
    done = invoke(["--policies", str(pf), "run", "--as-of", AS_OF, "--force", "--format", "json"])
    assert done.exit_code == 0, done
    before = invoke(["--policies", str(pf), "audit", "show", "--policy", "accounts", "--format", "json"])
    after = invoke(["audit", "show", "--policy", "accounts", "--policies", str(pf), "--format", "json"])
    assert before.exit_code == 0 and after.exit_code == 0, (before, after)
    for shown in (before, after):
        runs = json.loads(shown.stdout)["runs"]
        assert [p["policy"] for r in runs for p in r["policies"]] == ["accounts"]


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly_with_exit_1(tmp_path: Path, sqlite_db: Any) -> None:
    """`retention validate | head -1`: a closed stdout is not an "internal error" with a traceback
    hint; the command ends with exit 1 and no error of its own on stderr."""
    import os
    import subprocess
    import sys

    policies = _shop_file(tmp_path, sqlite_db)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        done = subprocess.run([sys.executable, "-m", "retention.cli", "--policies", str(policies), "validate"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr

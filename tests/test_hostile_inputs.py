"""Hostile and careless inputs, kept as data: every row of tests/data/hostile/cases.yaml passes.

Each case runs the CLI in process against an SQLite shop built here (see the table's header
for its tables), and checks the exit code, the message, what must never be printed (passwords),
that nothing crashed (no traceback, no "internal error"), that an exit 2 touched nothing (the
shop's rows and no audit log), and the rows left where the case says what is left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from retention.cli import main
from retention.errors import EXIT_INVALID

HOSTILE = Path(__file__).parent / "data" / "hostile"
TABLE: dict[str, Any] = yaml.safe_load((HOSTILE / "cases.yaml").read_text(encoding="utf-8"))
CASES: dict[str, dict[str, Any]] = TABLE["cases"]
AS_OF = "2026-11-24T03:00:00"
ALL_ACCOUNTS = [1, 2, 3]

SHOP = """
CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT, deregistered_at TIMESTAMP);
INSERT INTO accounts VALUES (1, 'a@example.nl', '2020-01-01 00:00:00'), (2, 'b@example.nl', NULL),
                            (3, 'c@example.nl', '2026-11-01 00:00:00');
CREATE TABLE pairs (a INTEGER, b INTEGER, ended_at TIMESTAMP, PRIMARY KEY (a, b));
INSERT INTO pairs VALUES (1, 1, '2020-01-01 00:00:00'), (1, 2, NULL);
CREATE TABLE loose (id INTEGER, ended_at TIMESTAMP);
INSERT INTO loose VALUES (1, '2020-01-01 00:00:00'), (2, NULL);
CREATE TABLE audited (id INTEGER PRIMARY KEY, ended_at TIMESTAMP);
INSERT INTO audited VALUES (1, '2020-01-01 00:00:00'), (2, NULL);
CREATE TABLE trail (id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT);
CREATE TRIGGER audited_deleted AFTER DELETE ON audited
  BEGIN INSERT INTO trail (what) VALUES ('deleted ' || old.id); END;
CREATE TABLE guarded (id INTEGER PRIMARY KEY, ended_at TIMESTAMP);
INSERT INTO guarded VALUES (1, '2020-01-01 00:00:00'), (2, NULL);
CREATE TRIGGER guarded_refuses BEFORE DELETE ON guarded
  BEGIN SELECT RAISE(ABORT, 'deleting guarded rows is forbidden'); END;
CREATE TABLE "we""ird;table" ("id" INTEGER PRIMARY KEY, "ended""at; --" TIMESTAMP, "e-mail" TEXT);
INSERT INTO "we""ird;table" VALUES (1, '2020-01-01 00:00:00', 'x'), (2, NULL, 'y');
"""


def _text(case: dict[str, Any], url: str) -> str:
    text = case["policy"].replace("{base}", TABLE["base"])
    for old, new in (case.get("edit") or {}).items():
        assert old in text, f"edit {old!r} matches nothing"
        text = text.replace(old, new)
    return text.replace("{url}", url).replace("{zeros}", "0" * 5000)


def _nested(path: Path) -> None:
    path.write_text("version: 1\nx: " + "[" * 5000 + "]" * 5000 + "\n")


def _bom(path: Path, url: str) -> None:
    path.write_bytes(b"\xef\xbb\xbf" + TABLE["base"].replace("{url}", url).encode())


GENERATED: dict[str, Callable[[Path, str], None]] = {
    "nested": lambda path, url: _nested(path),
    # Deterministic junk: every byte value, NULs and invalid UTF-8 sequences included.
    "junk": lambda path, url: path.write_bytes(bytes((i * 97 + 13) % 256 for i in range(4096))),
    "nul": lambda path, url: path.write_bytes(b"version: 1\x00\npolicies: []\n"),
    "latin1": lambda path, url: path.write_bytes(
        TABLE["base"].replace("{url}", url).replace("name: accounts", "name: accounts\n      description: café")
        .encode("latin-1")),
    "bom": _bom,
    "big": lambda path, url: path.write_text(TABLE["base"].replace("{url}", url) + "#" * (10 * 1024 * 1024) + "\n"),
    "directory": lambda path, url: path.mkdir(),
    "missing": lambda path, url: None,
}


def _setup(name: str, tmp_path: Path) -> None:
    if name == "dangling-audit-symlink":
        (tmp_path / "audit").mkdir(mode=0o750)
        (tmp_path / "audit" / "retention.jsonl").symlink_to(tmp_path / "planted" / "log.jsonl")
    else:
        raise AssertionError(f"unknown setup {name!r}")


def _rows(engine: sa.Engine, table: str) -> list[list[Any]]:
    quoted = '"' + table.replace('"', '""') + '"'
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM {quoted} ORDER BY 1")).all()
    if table == "we\"ird;table":
        return [[r[0], r[2]] for r in rows]
    if table in ("audited", "guarded"):
        return [[r[0]] for r in rows]
    return [list(r) for r in rows]


def _messages(stderr: str) -> list[str]:
    """The decoded `message` of each JSON log line: `--log-format json` escapes what a person reads."""
    found = []
    for line in stderr.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("message"), str):
            found.append(entry["message"])
    return found


def test_the_table_has_at_least_30_cases_each_with_an_outcome() -> None:
    assert len(CASES) >= 30
    for name, case in CASES.items():
        assert ("policy" in case) != ("file" in case), name
        assert case.get("exit", EXIT_INVALID) != EXIT_INVALID or case.get("says"), f"{name}: what must it say?"


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    db_path = tmp_path / "shop.db"
    engine = sa.create_engine(f"sqlite:///{db_path}")
    with engine.begin() as conn:
        conn.connection.driver_connection.executescript(SHOP)  # type: ignore[union-attr]
    url = f"sqlite:///{db_path}"
    policy = tmp_path / "policies.yaml"
    if "policy" in case:
        policy.write_text(_text(case, url), encoding="utf-8")
    elif case["file"].startswith("generated:"):
        GENERATED[case["file"].removeprefix("generated:")](policy, url)
    else:
        policy = HOSTILE / case["file"]
    if "setup" in case:
        _setup(case["setup"], tmp_path)
    env = {k: v for k, v in (case.get("env") or {}).items()}
    for k, v in env.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    args = case.get("args") or ["run", "--as-of", AS_OF]

    result = CliRunner().invoke(main, ["--policies", str(policy), "--log-format", "json", *args])
    shown = "\n".join([result.stdout, result.stderr, *_messages(result.stderr)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == case.get("exit", EXIT_INVALID), shown[-3000:]
    for text in case.get("says", []):
        assert text in shown, f"{text!r} not in:\n{shown[-3000:]}"
    for text in case.get("absent", []):
        assert text not in shown
    assert "Traceback" not in shown and "internal error" not in shown, shown[-3000:]

    accounts = [r[0] for r in _rows(engine, "accounts")]
    assert accounts == case.get("accounts", ALL_ACCOUNTS)
    for table, rows in (case.get("tables") or {}).items():
        assert _rows(engine, table) == rows, table
    if result.exit_code == EXIT_INVALID:
        assert not (tmp_path / "audit" / "retention.jsonl").is_file() or \
            (tmp_path / "audit" / "retention.jsonl").is_symlink()
        assert not (tmp_path / "planted").exists()
        assert not (tmp_path / "pwned").exists()
    engine.dispose()
    assert os.getcwd() == str(tmp_path)

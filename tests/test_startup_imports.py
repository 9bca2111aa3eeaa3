"""Start-up imports only what the command needs (issue 18: `--help` <= 0.15 s, a run with
nothing due <= 0.35 s). Each check runs a fresh interpreter and reads its `sys.modules`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from helpers import write_policies

HELP_NEVER = ["faker", "sqlalchemy", "sqlalchemy.dialects.postgresql", "psycopg", "pymysql", "pydantic",
              "structlog", "pendulum", "yaml"]
RUN_NEVER = ["faker", "sqlalchemy.dialects.postgresql", "sqlalchemy.dialects.mysql", "psycopg", "pymysql"]


def _modules_after(argv: list[str], cwd: Path | None = None) -> set[str]:
    code = (
        "import json, sys\n"
        "from retention.cli import main\n"
        f"try:\n    main({argv!r}, standalone_mode=False)\n"
        "except SystemExit:\n    pass\n"
        "sys.stdout.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.rsplit("MODULES ", 1)[1]))


def test_help_imports_no_engine_driver_model_or_faker() -> None:
    loaded = _modules_after(["--help"])
    assert "click" in loaded  # the check itself works: the CLI was imported
    assert sorted(m for m in HELP_NEVER if m in loaded) == []


def test_nothing_due_run_on_sqlite_imports_no_faker_and_no_server_driver(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE tickets (id INTEGER PRIMARY KEY, closed_at DATETIME)")
        conn.exec_driver_sql("INSERT INTO tickets VALUES (1, '2026-11-01 10:00:00')")
    engine.dispose()
    policy = write_policies(tmp_path / "policies.yaml", url, [
        {"name": "tickets", "table": "tickets", "after": "closed_at", "retain": "2 years", "action": "delete"}])
    loaded = _modules_after(["--policies", str(policy), "--log-format", "json", "run",
                             "--as-of", "2026-11-24T03:00:00", "--format", "json"])
    assert "sqlalchemy.dialects.sqlite" in loaded  # it did run
    assert sorted(m for m in RUN_NEVER if m in loaded) == []


def test_locale_check_without_faker_knows_the_same_locales() -> None:
    """The locale check reads Faker's package directory instead of importing it: same answer."""
    from faker.config import AVAILABLE_LOCALES

    from retention.anonymisation.strategies import _faker_has_locale

    assert all(_faker_has_locale(locale) for locale in AVAILABLE_LOCALES)
    assert not any(_faker_has_locale(x) for x in ["xx_YY", "nl_XX", "../nl_NL", "", "nl_NL/..", "address"])

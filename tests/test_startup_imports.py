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
    policy = _tickets_policy(tmp_path)
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


def test_nothing_due_run_with_the_shops_fakes_imports_no_faker(tmp_path: Path) -> None:
    """The fakes a policy names are checked at every start; for the common ones (first_name,
    last_name, email: the shop's) that needs no Faker. It is imported when a row is faked."""
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE accounts (id INTEGER PRIMARY KEY, deregistered_at DATETIME, "
                             "first_name TEXT NOT NULL, last_name TEXT NOT NULL, email TEXT, birth_date DATE, "
                             "street TEXT)")
        conn.exec_driver_sql(
            "INSERT INTO accounts VALUES (1, '2026-11-01 10:00:00', 'An', 'Jansen', 'a@x.nl', NULL, 'Dorpsstraat 1')")
    policy = write_policies(tmp_path / "policies.yaml", url, [
        {"name": "accounts", "table": "accounts", "after": "deregistered_at", "retain": "24 months",
         "action": "anonymise", "fields": {"first_name": "fake.first_name", "last_name": "fake.last_name",
                                           "email": "fake.email", "birth_date": "fake.date_of_birth",
                                           "street": "redact"},
         "reidentification": "warn"}])  # one row is never k-anonymous; not what is tested here
    loaded = _modules_after(["--policies", str(policy), "--log-format", "json", "run",
                             "--as-of", "2026-11-24T03:00:00", "--format", "json"])
    assert "faker" not in loaded
    with engine.connect() as conn:  # it ran, and found nothing to do
        assert conn.exec_driver_sql("SELECT first_name FROM accounts").scalar() == "An"
    # ... and once the row is due, it is faked: the import is only deferred.
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE accounts SET deregistered_at = '2020-01-01 10:00:00'")
    loaded = _modules_after(["--policies", str(policy), "--log-format", "json", "run", "--force",
                             "--as-of", "2026-11-24T03:00:00", "--format", "json"])
    assert "faker" in loaded
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT first_name != 'An' AND email != 'a@x.nl' AND street != 'Dorpsstraat 1' "
                                    "FROM accounts").scalar() == 1
    engine.dispose()


def test_the_fakes_known_without_faker_are_what_faker_gives_in_every_locale() -> None:
    """strategies._KNOWN_FAKES stands in for Faker at validation: each provider must exist in
    every locale Faker has, give a value without error, and of the listed type (a datetime is
    not taken for a date, a bool not for an int). A Faker release that breaks one fails here."""
    import datetime as dt
    import warnings

    from faker import Faker
    from faker.config import AVAILABLE_LOCALES

    from retention.anonymisation.strategies import _KNOWN_FAKES

    wrong = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some locales warn that their numbers are made up
        for locale in AVAILABLE_LOCALES:
            fake = Faker(locale)
            for provider, kind in _KNOWN_FAKES.items():
                try:
                    value = getattr(fake, provider)()
                except Exception as exc:  # noqa: BLE001 - any error is a wrong entry
                    wrong.append((locale, provider, repr(exc)[:60]))
                    continue
                exact = not (kind is dt.date and isinstance(value, dt.datetime)) and not (
                    kind is int and isinstance(value, bool))
                if not (isinstance(value, kind) and exact):
                    wrong.append((locale, provider, type(value).__name__))
    assert wrong == []


# The collector during start-up (cli/app.py, _startup_done): off while the command's modules are
# imported and the policy file loads, then what start-up made is frozen and collection resumes.
_GC_SPY = (
    "import gc, json, sys\n"
    "import {module} as target\n"
    "seen = []\n"
    "real = target.{function}\n"
    "def spy(*args, **kwargs):\n"
    "    seen.append({{'enabled': gc.isenabled(), 'frozen': gc.get_freeze_count()}})\n"
    "    return real(*args, **kwargs)\n"
    "target.{function} = spy\n"
    "sys.argv = ['retention', *{argv!r}]\n"
    "from retention.cli import main\n"
    "try:\n    main()\n"
    "except SystemExit as exc:\n    code = exc.code\n"
    "sys.stdout.write('\\nGC ' + json.dumps({{'seen': seen, 'code': code}}))\n"
)


def _gc_seen(module: str, function: str, argv: list[str], cwd: Path) -> dict:
    code = _GC_SPY.format(module=module, function=function, argv=argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.rsplit("GC ", 1)[1])


def _tickets_policy(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE tickets (id INTEGER PRIMARY KEY, closed_at DATETIME)")
        conn.exec_driver_sql("INSERT INTO tickets VALUES (1, '2026-11-01 10:00:00')")
    engine.dispose()
    return write_policies(tmp_path / "policies.yaml", url, [
        {"name": "tickets", "table": "tickets", "after": "closed_at", "retain": "2 years", "action": "delete"}])


def test_run_collects_garbage_again_once_started_with_start_up_frozen(tmp_path: Path) -> None:
    policy = _tickets_policy(tmp_path)
    out = _gc_seen("retention.engine.runner", "execute_run",
                   ["--policies", str(policy), "--log-format", "json", "run", "--as-of", "2026-11-24T03:00:00",
                    "--format", "json"], tmp_path)
    assert out["code"] == 0
    [seen] = out["seen"]
    assert seen["enabled"]
    assert seen["frozen"] > 10_000  # the imported modules, the policy model, ...


def test_a_command_without_a_policy_file_collects_garbage_in_its_body(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"")
    out = _gc_seen("retention.audit.log", "head", ["audit", "head", "--log", str(log)], tmp_path)
    assert out["code"] == 0
    [seen] = out["seen"]
    assert seen["enabled"]


def test_a_caller_passing_its_own_args_keeps_its_collector(tmp_path: Path) -> None:
    import gc

    from click.testing import CliRunner

    from retention.cli import main

    frozen = gc.get_freeze_count()
    assert gc.isenabled()
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen

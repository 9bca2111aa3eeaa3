"""Reading the policy file (retention.policy.loader): every mistake found, located and explained.

The invalid files are data: ``tests/data/policies/*.yaml``, each with its expected problems in
``tests/data/policies/expected.yaml`` (line, policy, key and message). Every one must fail
``retention validate`` with exit code 2 before any database is touched, with one line per
problem naming the file, line, policy and key, and no traceback. Valid files live in
``tests/data/policies/valid/``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from retention.cli import main
from retention.errors import EXIT_INVALID, PolicyFileError
from retention.policy import loader as config
from retention.policy.dates import Period

DATA = Path(__file__).parent / "data" / "policies"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((DATA / "expected.yaml").read_text(encoding="utf-8"))
CASES = sorted(EXPECTED)


def validate(path: Path | str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["--policies", str(path), "validate"], env=env)


def check_problem(line: str, path: Path, expected: dict[str, Any]) -> None:
    """One reported problem: ``file:line: policy 'x', key 'y': message``."""
    assert line.startswith(f"{path}:{expected['line']}: "), f"file and line: {line!r}"
    if "policy" in expected:
        assert f"policy '{expected['policy']}'" in line, f"policy: {line!r}"
    else:
        assert "policy '" not in line, f"no policy: {line!r}"
    if "key" in expected:
        assert f"key '{expected['key']}'" in line, f"key: {line!r}"
    wanted = expected["message"] if isinstance(expected["message"], list) else [expected["message"]]
    for text in wanted:
        assert text in line, f"{text!r} not in {line!r}"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory, without variables a case needs unset."""
    monkeypatch.chdir(tmp_path)
    for case in EXPECTED.values():
        for name in case.get("unset", []):
            monkeypatch.delenv(name, raising=False)


def test_every_invalid_file_has_expectations_and_every_expectation_a_file() -> None:
    files = {p.name for p in DATA.glob("*.yaml")} - {"expected.yaml"}
    assert files == set(EXPECTED)
    assert len(files) >= 20


@pytest.mark.parametrize("case", CASES)
def test_loading_an_invalid_file_raises_every_expected_problem_in_order(case: str) -> None:
    path = DATA / case
    with pytest.raises(PolicyFileError) as raised:
        config.load(path, env={})
    problems = raised.value.problems
    expected = EXPECTED[case]["problems"]
    assert len(problems) == len(expected), "\n".join(problems)
    for line, want in zip(problems, expected, strict=True):
        check_problem(line, path, want)


@pytest.mark.parametrize("case", CASES)
def test_validate_exits_2_naming_file_line_policy_and_key_without_traceback(case: str) -> None:
    path = DATA / case
    result = validate(path)
    assert result.exit_code == EXIT_INVALID, result.output
    assert result.stdout == "", "results go to stdout; there are none"
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line.removeprefix("error: ") for line in result.stderr.splitlines()]
    reported = [line for line in lines if line.startswith(f"{path}:")]
    expected = EXPECTED[case]["problems"]
    assert len(reported) == len(expected), result.stderr
    for line, want in zip(reported, expected, strict=True):
        check_problem(line, path, want)
    for text in EXPECTED[case].get("absent", []):
        assert text not in result.output


def test_all_mistakes_of_a_file_are_reported_at_once_one_line_each() -> None:
    path = DATA / "three-mistakes.yaml"
    result = validate(path)
    assert result.exit_code == EXIT_INVALID
    assert result.stderr.splitlines()[0] == "error:"
    assert len([line for line in result.stderr.splitlines() if line.startswith(f"{path}:")]) == 3


def test_a_missing_environment_variable_is_named_without_the_rest_of_the_url() -> None:
    result = validate(DATA / "missing-env-var.yaml")
    assert result.exit_code == EXIT_INVALID
    assert "RETENTION_TEST_UNSET_DB_HOST" in result.stderr
    assert "s3cret" not in result.output
    assert "psycopg" not in result.output


def test_an_unsafe_yaml_tag_is_an_error_and_is_never_executed(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # The tag would run `echo hi > unsafe-yaml-tag-ran.txt` in the working directory (tmp_path).
    with pytest.raises(PolicyFileError, match="only plain YAML"):
        config.load(DATA / "unsafe-yaml-tag.yaml")
    result = validate(DATA / "unsafe-yaml-tag.yaml")
    assert result.exit_code == EXIT_INVALID
    assert not (tmp_path / "unsafe-yaml-tag-ran.txt").exists()
    assert "hi" not in capfd.readouterr().out.split()


def test_a_missing_policy_file_is_exit_2_and_says_how_to_name_one(tmp_path: Path) -> None:
    result = validate(tmp_path / "nowhere.yaml")
    assert result.exit_code == EXIT_INVALID
    assert f"{tmp_path / 'nowhere.yaml'}: policy file not found" in result.stderr
    assert "--policies" in result.stderr and "RETENTION_POLICIES" in result.stderr


@pytest.mark.parametrize(("text", "message"), [("", "expected a mapping"), ("- a\n- b\n", "expected a mapping"),
                                               ("version: 1\n", "key 'databases': is required")])
def test_a_file_that_is_not_a_policy_mapping_is_exit_2(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(text, encoding="utf-8")
    result = validate(path)
    assert result.exit_code == EXIT_INVALID
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_the_policy_file_defaults_to_retention_policies_then_policies_yaml(tmp_path: Path) -> None:
    broken = tmp_path / "elsewhere.yaml"
    broken.write_text((DATA / "retain-typo.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    by_env = CliRunner().invoke(main, ["validate"], env={"RETENTION_POLICIES": str(broken)})
    assert by_env.exit_code == EXIT_INVALID
    assert f"{broken}:9: policy 'invoices', key 'retain'" in by_env.stderr
    write(tmp_path, (DATA / "unknown-action.yaml").read_text(encoding="utf-8"))
    by_cwd = CliRunner().invoke(main, ["validate"], env={"RETENTION_POLICIES": ""})
    assert by_cwd.exit_code == EXIT_INVALID
    assert "policies.yaml:10: policy 'accounts', key 'action'" in by_cwd.stderr


# --------------------------------------------------------------------------- valid files


def write(directory: Path, text: str, name: str = "policies.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """\
version: 1
databases:
  shop:
    url: "{url}"
{audit}policies:
  - name: invoices
    table: invoices
    after: issued_at
    retain: 7 years
    action: delete
"""


def test_the_contract_example_is_valid() -> None:
    model = config.load(DATA / "valid" / "contract-example.yaml", env={})
    assert [p.name for p in model.policies] == ["accounts", "invoices", "correspondence"]
    accounts = model.policy("accounts")
    assert accounts.basis == "Privacy statement, retention terms (account data)"
    assert accounts.retain == Period(24, "months")
    assert accounts.fields is not None and accounts.fields["phone"] is None
    assert accounts.exclude == {"legal_hold": True}
    assert model.policy("invoices").minimum == Period(7, "years")
    assert model.policy("invoices").align == "end_of_year"
    assert model.policy("correspondence").where == {"status": "closed"}
    assert model.monitor.url == ""


def test_every_key_is_read_with_its_value() -> None:
    model = config.load(DATA / "valid" / "every-key.yaml", env={"RETENTION_TEST_PING_ID": "f00"})
    assert model.timezone == "Europe/Brussels" and model.locale == "de_DE"
    assert model.databases["shop"].purge == "standard" and model.databases["crm"].purge == "none"
    assert model.audit.key_env == "MY_AUDIT_KEY"
    assert model.monitor.url == "https://hc.example.org/ping/f00"
    accounts, leads = model.policies
    assert accounts.basis == "Privacyverklaring, bewaartermijnen"
    assert accounts.key == "id" and accounts.marker == "anonymised_at"
    assert accounts.minimum == Period(1, "years") and accounts.align == "end_of_month"
    assert accounts.minimum_align == "end_of_month" and accounts.after_timezone == "UTC"
    assert accounts.fields == {
        "email": "fake.email", "phone": None, "city": "null", "street": "redact: [verwijderd]",
        "postcode": "generalise.postcode", "birth_date": "generalise.month",
    }  # fmt: skip
    assert accounts.exclude == {"legal_hold": True, "status": None}
    assert accounts.where == {"country": "NL"}
    assert accounts.max_fraction == 1 and accounts.batch_size == 500
    assert accounts.keep == {"created_at": "customer statistics per month",
                             "legal_hold": "false on every anonymised row"}
    assert (accounts.k_anonymity, accounts.reidentification) == (10, "warn")
    assert (leads.k_anonymity, leads.reidentification) == (5, "enforce")
    assert model.personal == {"invoices": ["customer_name", "billing_street"]}
    assert leads.database == "crm" and leads.retain == Period(90, "days")
    assert leads.cascade == ["lead_notes", "lead_note_attachments"]
    assert leads.on_referenced == "anonymise" and leads.fields == {"name": "redact"}


def test_defaults_of_the_optional_keys(tmp_path: Path) -> None:
    model = config.load(write(tmp_path, MINIMAL.format(url="sqlite:////srv/shop.db", audit="")), env={})
    assert model.timezone == "Europe/Amsterdam" and model.locale == "nl_NL"
    assert model.databases["shop"].purge == "thorough"
    assert model.audit.key_env is None and model.monitor.url is None
    (policy,) = model.policies
    assert policy.database is None and model.database_of(policy) == "shop"
    assert (policy.key, policy.minimum, policy.align, policy.fields) == (None, None, "none", None)
    assert (policy.exclude, policy.where, policy.cascade) == ({}, {}, [])
    assert (policy.on_referenced, policy.marker, policy.max_fraction, policy.batch_size) == ("defer", None, 0.5, 5000)
    assert policy.basis is None and policy.description is None


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("${RETENTION_TEST_DB}", {"RETENTION_TEST_DB": "sqlite:////srv/a.db"}, "sqlite:////srv/a.db"),
        ("${RETENTION_TEST_DB:-sqlite:////srv/b.db}", {}, "sqlite:////srv/b.db"),
        ("${RETENTION_TEST_DB:-sqlite:////srv/b.db}", {"RETENTION_TEST_DB": "sqlite:////srv/c.db"}, "sqlite:////srv/c.db"),
        # Empty counts as unset, as in the shell's ${VAR:-default}.
        ("${RETENTION_TEST_DB:-sqlite:////srv/b.db}", {"RETENTION_TEST_DB": ""}, "sqlite:////srv/b.db"),
        (
            "postgresql+psycopg://${RETENTION_TEST_USER}:${RETENTION_TEST_PASSWORD}@db:5432/shop",
            {"RETENTION_TEST_USER": "job", "RETENTION_TEST_PASSWORD": "p@ss"},
            "postgresql+psycopg://job:p@ss@db:5432/shop",
        ),
    ],
)
def test_environment_variables_are_expanded_in_database_urls(
    tmp_path: Path, url: str, env: dict[str, str], expected: str
) -> None:
    model = config.load(write(tmp_path, MINIMAL.format(url=url, audit="")), env=env)
    assert model.databases["shop"].url == expected


def test_environment_variables_are_expanded_in_audit_and_monitor_but_not_in_policies(tmp_path: Path) -> None:
    text = MINIMAL.format(url="sqlite:////srv/shop.db", audit="audit:\n  path: ${RETENTION_TEST_LOGS}/audit.jsonl\n")
    text += "    description: ${RETENTION_TEST_LOGS} stays as written\n"
    text = text.replace("policies:", "monitor:\n  url: ${RETENTION_TEST_PING:-}\npolicies:")
    model = config.load(write(tmp_path, text), env={"RETENTION_TEST_LOGS": "/var/log/retention"})
    assert model.audit.path == "/var/log/retention/audit.jsonl"
    assert model.monitor.url == ""
    assert model.policies[0].description == "${RETENTION_TEST_LOGS} stays as written"


def test_the_process_environment_is_used_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_TEST_DB", "sqlite:////srv/from-env.db")
    model = config.load(write(tmp_path, MINIMAL.format(url="${RETENTION_TEST_DB}", audit="")))
    assert model.databases["shop"].url == "sqlite:////srv/from-env.db"


def test_relative_sqlite_and_audit_paths_resolve_against_the_policy_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc" / "retention"
    path = write(conf, MINIMAL.format(url="sqlite:///var/shop.db", audit="audit:\n  path: var/audit/log.jsonl\n"))
    elsewhere = tmp_path / "cron-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = config.load(Path("..") / "etc" / "retention" / "policies.yaml", env={})
    assert model.databases["shop"].url == f"sqlite:///{conf.resolve()}/var/shop.db"
    assert Path(model.audit.path) == conf.resolve() / "var" / "audit" / "log.jsonl"
    assert config.load(path, env={}).databases["shop"].url == f"sqlite:///{conf.resolve()}/var/shop.db"


def test_the_default_audit_path_is_var_audit_next_to_the_policy_file(tmp_path: Path) -> None:
    model = config.load(write(tmp_path / "conf", MINIMAL.format(url="sqlite:///shop.db", audit="")), env={})
    assert Path(model.audit.path) == (tmp_path / "conf").resolve() / "var" / "audit" / "retention.jsonl"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////srv/shop.db", "sqlite:////srv/shop.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql+psycopg://job:s3cret@db/shop", "postgresql+psycopg://job:s3cret@db/shop"),
    ],
)
def test_absolute_paths_and_server_urls_are_kept_as_written(tmp_path: Path, url: str, expected: str) -> None:
    text = MINIMAL.format(url=url, audit="audit:\n  path: /var/log/retention/audit.jsonl\n")
    model = config.load(write(tmp_path, text), env={})
    assert model.databases["shop"].url == expected
    assert model.audit.path == "/var/log/retention/audit.jsonl"


def test_the_contract_default_url_resolves_next_to_the_policy_file(tmp_path: Path) -> None:
    model = config.load(DATA / "valid" / "contract-example.yaml", env={})
    assert model.databases["shop"].url == f"sqlite:///{(DATA / 'valid').resolve()}/var/demo.db"


def test_the_loaded_model_knows_its_file_its_hash_and_the_line_of_every_policy_key() -> None:
    path = DATA / "valid" / "contract-example.yaml"
    model = config.load(path, env={})
    assert model.source == str(path)
    assert model.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    lines = path.read_text(encoding="utf-8").splitlines()
    for key in ("accounts.retain", "invoices.cascade", "correspondence.where", "accounts.fields.email"):
        line = model.locations[key]
        assert lines[line - 1].strip().startswith(key.split(".")[-1] + ":"), (key, lines[line - 1])
    assert lines[model.locations["invoices"] - 1].strip() == "- name: invoices"

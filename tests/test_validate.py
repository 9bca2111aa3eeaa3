"""`retention validate` against real databases: SQLite, PostgreSQL and MariaDB.

Every check that needs the schema (tables, columns, keys, foreign keys, column types for
strategies) is exercised on the demo shop, with one policy file per case. A broken case
exits 2 and names ``file:line``, the policy and the key; nothing is written anywhere.

One demo shop per database kind is built for the whole module (validate only reads), so
the file stays fast on all three databases.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import ALL_DIALECTS, DatabaseFactory, TestDatabase

from retention.cli import main
from retention.demo import create_shop
from retention.errors import EXIT_INVALID, EXIT_OK

SHIPPED = Path(__file__).resolve().parent.parent / "policies.yaml"

# Like the shipped policies (policies.yaml at the repository root), for any database URL.
SHOP_POLICIES = """\
version: 1
timezone: Europe/Amsterdam
locale: nl_NL
databases:
  shop:
    url: "{url}"
    purge: thorough
audit:
  path: audit/retention.jsonl
policies:
  - name: accounts
    basis: Privacyverklaring, bewaartermijnen klantgegevens
    table: accounts
    after: deregistered_at
    retain: 24 months
    action: delete
    cascade: [orders]
    on_referenced: anonymise
    exclude: {{legal_hold: true}}
    keep: {{created_at: shop statistics, legal_hold: false on every anonymised row,
           anonymised_at: the marker of the marker tests}}
    fields:
      first_name: fake.first_name
      last_name: fake.last_name
      email: fake.email
      phone: null
      street: redact
      postcode: generalise.postcode
      city: null
      birth_date: generalise.year
  - name: invoices
    basis: Art. 52 AWR, fiscale bewaarplicht
    table: invoices
    after: issued_at
    retain: 7 years
    minimum: 7 years
    align: end_of_year
    action: delete
    cascade: [invoice_lines]
  - name: correspondence
    basis: Privacyverklaring, klantenservice
    table: tickets
    after: closed_at
    retain: 2 years
    where: {{status: closed}}
    exclude: {{legal_hold: true}}
    action: delete
    cascade: [ticket_messages]
"""

ACCOUNT_FIELDS = SHOP_POLICIES[SHOP_POLICIES.index("    fields:\n"):SHOP_POLICIES.index("  - name: invoices")]


@pytest.fixture(scope="module", params=ALL_DIALECTS, ids=ALL_DIALECTS)
def shop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, _servers: object
) -> Iterator[TestDatabase]:
    """The demo shop (300 accounts) in a fresh database of each kind, shared by this module."""
    factory = DatabaseFactory(tmp_path_factory.mktemp(f"shop-{request.param}"), _servers)  # type: ignore[arg-type]
    try:
        database = factory(request.param)
        create_shop(database.engine, accounts=300, seed=1, today=dt.date(2026, 11, 24))
        # A nullable datetime column to serve as an anonymisation `marker`.
        timestamp = "TIMESTAMP" if database.name == "postgresql" else "DATETIME"
        with database.engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE accounts ADD COLUMN anonymised_at {timestamp} NULL")
        database.dispose()
        yield database
    finally:
        factory.close()


def validate(path: Path, env: dict[str, str] | None = None) -> Result:
    # Default log format: errors as `error: ...` text lines (under --log-format json they are JSON).
    result = CliRunner().invoke(main, ["--policies", str(path), "validate"], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def edit(text: str, policy: str, old: str, new: str) -> str:
    """Replace the first ``old`` after ``- name: policy`` with ``new`` (the policy's own lines)."""
    start = text.index(f"  - name: {policy}\n")
    at = text.index(old, start)
    return text[:at] + new + text[at + len(old):]


def line_of(text: str, policy: str, marker: str) -> int:
    """The 1-based line of the first line after ``- name: policy`` that starts with ``marker``."""
    lines = text.splitlines()
    first = lines.index(f"  - name: {policy}")
    for number in range(first, len(lines)):
        if lines[number].strip().startswith(marker):
            return number + 1
    raise AssertionError(f"{marker!r} not found in policy {policy!r}")


def write(directory: Path, text: str, name: str = "policies.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- valid


def test_the_shop_policies_validate_with_a_summary_per_policy(shop: TestDatabase, tmp_path: Path) -> None:
    path = write(tmp_path, SHOP_POLICIES.format(url=shop.url))
    result = validate(path)
    assert result.exit_code == EXIT_OK, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: 3 policies OK"
    assert "accounts: delete shop.accounts (+ orders) 24 months after deregistered_at" in lines[1]
    assert "invoices: delete shop.invoices (+ invoice_lines) 7 years after issued_at from the end of year" in lines[2]
    assert "correspondence: delete shop.tickets (+ ticket_messages) 2 years after closed_at" in lines[3]
    assert "error" not in result.stderr.lower()


@pytest.mark.parametrize(
    "cascade",
    [
        # Two levels: invoice_lines hang under accounts through invoices; the order is free.
        "cascade: [invoice_lines, invoices, orders]",
        "cascade: [orders, tickets, ticket_messages, invoices, invoice_lines]",
    ],
    ids=["invoice_lines-through-invoices", "whole-account-tree"],
)
def test_a_cascade_through_several_levels_is_valid_when_no_table_of_it_has_its_own_policy(
        shop: TestDatabase, tmp_path: Path, cascade: str) -> None:
    """Only the accounts policy: a cascade into a table with a policy of its own is refused (rule 1)."""
    only_accounts = SHOP_POLICIES.format(url=shop.url).split("  - name: invoices")[0]
    path = write(tmp_path, edit(only_accounts, "accounts", "cascade: [orders]", cascade))
    result = validate(path)
    assert result.exit_code == EXIT_OK, result.output


@pytest.mark.parametrize(
    ("policy", "old", "new"),
    [
        # A unique column as the key, and a marker column instead of a redact witness.
        ("invoices", "table: invoices", "table: invoices\n    key: number"),
        # Only `null` fields: a row with all of them NULL is recognisably done.
        ("accounts", ACCOUNT_FIELDS, "    fields:\n      phone: null\n      city: null\n"
         "      first_name: \"redact: -\"\n      last_name: \"redact: -\"\n      email: \"redact: -\"\n"
         "      street: null\n      postcode: null\n      birth_date: null\n"),
    ],
    ids=["unique-key", "only-null-fields"],
)
def test_variants_the_schema_allows_are_valid(shop: TestDatabase, tmp_path: Path, policy: str, old: str,
                                              new: str) -> None:
    path = write(tmp_path, edit(SHOP_POLICIES.format(url=shop.url), policy, old, new))
    result = validate(path)
    assert result.exit_code == EXIT_OK, result.output


# --------------------------------------------------------------------------- broken: the database says no

# (id, policy, old text, new text, the line that carries the mistake, key, message parts)
BROKEN = [
    ("missing-table", "accounts", "table: accounts", "table: acounts", "table:", "table",
     ["table 'acounts' does not exist in the database"]),
    ("missing-after-column", "accounts", "after: deregistered_at", "after: deleted_at", "after:", "after",
     ["table 'accounts' has no column 'deleted_at'"]),
    ("after-not-a-date", "accounts", "after: deregistered_at", "after: email", "after:", "after",
     ["column 'email' is", "not a date or datetime"]),
    ("missing-column-in-fields", "accounts", "email: fake.email", "emial: fake.email", "emial:", "fields.emial",
     ["table 'accounts' has no column 'emial'"]),
    ("missing-column-in-exclude", "accounts", "exclude: {legal_hold: true}", "exclude: {on_hold: true}",
     "exclude:", "exclude.on_hold", ["table 'accounts' has no column 'on_hold'"]),
    ("missing-column-in-where", "correspondence", "where: {status: closed}", "where: {state: closed}", "where:",
     "where.state", ["table 'tickets' has no column 'state'"]),
    ("missing-cascade-table", "invoices", "cascade: [invoice_lines]", "cascade: [invoice_rows]", "cascade:",
     "cascade", ["table 'invoice_rows' does not exist"]),
    ("cascade-without-foreign-key", "accounts", "cascade: [orders]", "cascade: [orders, invoice_lines]",
     "cascade:", "cascade", ["table 'invoice_lines' has no foreign key to 'accounts'"]),
    ("cascade-upwards", "invoices", "cascade: [invoice_lines]", "cascade: [accounts]", "cascade:", "cascade",
     ["table 'accounts' has no foreign key to 'invoices'"]),
    ("cascade-into-a-table-with-its-own-policy", "accounts", "cascade: [orders]", "cascade: [orders, invoices]",
     "cascade:", "cascade", ["table 'invoices' has a policy of its own ('invoices')", "before their own term"]),
    ("key-not-unique", "accounts", "table: accounts", "table: accounts\n    key: email", "key:", "key",
     ["column 'email' of table 'accounts' is not unique"]),
    ("key-missing", "accounts", "table: accounts", "table: accounts\n    key: uuid", "key:", "key",
     ["table 'accounts' has no column 'uuid'"]),
    ("null-on-not-null", "accounts", "first_name: fake.first_name", "first_name: null", "first_name:",
     "fields.first_name", ["column 'first_name' is NOT NULL", "strategy 'null'"]),
    ("date-strategy-on-text", "accounts", "email: fake.email", "email: generalise.year", "email:", "fields.email",
     ["strategy 'generalise.year' needs a date or datetime column", "'email'"]),
    ("postcode-strategy-on-a-date", "accounts", "birth_date: generalise.year", "birth_date: generalise.postcode",
     "birth_date:", "fields.birth_date", ["strategy 'generalise.postcode' needs a text column"]),
    ("redact-on-a-date", "accounts", "birth_date: generalise.year", "birth_date: redact", "birth_date:",
     "fields.birth_date", ["strategy 'redact' needs a text column"]),
    ("fake-of-the-wrong-type", "accounts", "phone: null", "phone: fake.date_of_birth", "phone:", "fields.phone",
     ["fake.date_of_birth gives date values", "'phone' is text"]),
    # Not among the fakes known without Faker (strategies._KNOWN_FAKES): Faker's own sample decides.
    ("faker-sampled-fake-of-the-wrong-type", "accounts", "phone: null", "phone: fake.pyint", "phone:",
     "fields.phone", ["fake.pyint gives int values", "'phone' is text"]),
    ("anonymising-the-key", "accounts", "city: null", "id: null", "id:", "fields.id",
     ["the key column cannot be anonymised"]),
]


@pytest.mark.parametrize(("case", "policy", "old", "new", "marker", "key", "message"), BROKEN,
                         ids=[c[0] for c in BROKEN])
def test_a_schema_mistake_exits_2_naming_file_line_policy_and_key(
    shop: TestDatabase, tmp_path: Path, case: str, policy: str, old: str, new: str, marker: str, key: str,
    message: list[str],
) -> None:
    text = edit(SHOP_POLICIES.format(url=shop.url), policy, old, new)
    path = write(tmp_path, text)
    result = validate(path)
    assert result.exit_code == EXIT_INVALID, result.output
    assert result.stdout == ""
    prefix = f"{path}:{line_of(text, policy, marker)}: policy '{policy}', key '{key}': "
    lines = [line.removeprefix("error: ") for line in result.stderr.splitlines()]
    matching = [line for line in lines if line.startswith(prefix)]
    assert matching, f"no line starts with {prefix!r}:\n{result.stderr}"
    for part in message:
        assert part in matching[0], f"{part!r} not in {matching[0]!r}"


def test_anonymised_rows_must_be_recognisable_by_a_redact_field_null_fields_or_a_marker(
    shop: TestDatabase, tmp_path: Path
) -> None:
    fields = """    fields:
      first_name: fake.first_name
      last_name: fake.last_name
      email: fake.email
      phone: fake.phone_number
      street: fake.street_name
      postcode: fake.postcode
      city: fake.city
      birth_date: generalise.year
"""
    text = edit(SHOP_POLICIES.format(url=shop.url), "accounts", ACCOUNT_FIELDS, fields)
    result = validate(write(tmp_path, text))
    assert result.exit_code == EXIT_INVALID
    assert f":{line_of(text, 'accounts', 'fields:')}: policy 'accounts', key 'fields': cannot tell an anonymised " \
           "row from one still to do" in result.stderr
    assert "`marker`" in result.stderr

    # With a nullable datetime `marker` column the same fields are fine.
    marked = edit(text, "accounts", "on_referenced: anonymise", "on_referenced: anonymise\n    marker: anonymised_at")
    result = validate(write(tmp_path, marked))
    assert result.exit_code == EXIT_OK, result.output


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("created_at", "column 'created_at' must be a nullable datetime column"),  # NOT NULL
        ("legal_hold", "column 'legal_hold' must be a nullable datetime column"),  # a boolean
        ("email", "'email' is also in `fields`; the marker needs a column of its own"),
        ("deregistered_at", "'deregistered_at' is the `after` column"),
        ("anonymized_at", "table 'accounts' has no column 'anonymized_at'"),
    ],
)
def test_a_marker_must_be_a_nullable_datetime_column_of_its_own(
    shop: TestDatabase, tmp_path: Path, marker: str, message: str
) -> None:
    text = edit(SHOP_POLICIES.format(url=shop.url), "accounts", "on_referenced: anonymise",
                f"on_referenced: anonymise\n    marker: {marker}")
    path = write(tmp_path, text)
    result = validate(path)
    assert result.exit_code == EXIT_INVALID
    assert f"{path}:{line_of(text, 'accounts', 'marker:')}: policy 'accounts', key 'marker': {message}" in result.stderr


def test_every_schema_mistake_is_reported_at_once(shop: TestDatabase, tmp_path: Path) -> None:
    text = SHOP_POLICIES.format(url=shop.url)
    text = edit(text, "accounts", "after: deregistered_at", "after: email")
    text = edit(text, "invoices", "cascade: [invoice_lines]", "cascade: [orders]")
    text = edit(text, "correspondence", "table: tickets", "table: tickets_archive")
    path = write(tmp_path, text)
    result = validate(path)
    assert result.exit_code == EXIT_INVALID
    reported = [line for line in result.stderr.splitlines() if line.startswith(f"{path}:")]
    assert [line.split(": ", 2)[1] for line in reported] == [
        # deregistered_at is no longer the `after` column, so it is a column left unaccounted for
        "policy 'accounts', key 'after'", "policy 'accounts', key 'keep'",
        "policy 'invoices', key 'cascade'", "policy 'correspondence', key 'table'",
    ], result.stderr


# --------------------------------------------------------------------------- unreachable, read-only


def test_an_unreachable_database_exits_2_with_the_password_hidden(tmp_path: Path) -> None:
    url = "postgresql+psycopg://u:s3cret@127.0.0.1:1/x"
    result = validate(write(tmp_path, SHOP_POLICIES.format(url=url)))
    assert result.exit_code == EXIT_INVALID, result.output
    assert "postgresql+psycopg://u:***@127.0.0.1:1/x" in result.stderr
    assert "s3cret" not in result.output
    assert result.stdout == ""


def test_an_unreachable_database_from_the_environment_keeps_its_password_hidden(tmp_path: Path) -> None:
    text = SHOP_POLICIES.format(url="${RETENTION_TEST_SHOP_URL}")
    env = {"RETENTION_TEST_SHOP_URL": "mysql+pymysql://job:s3cret@127.0.0.1:1/shop"}
    result = validate(write(tmp_path, text), env=env)
    assert result.exit_code == EXIT_INVALID, result.output
    assert "mysql+pymysql://job:***@127.0.0.1:1/shop" in result.stderr
    assert "s3cret" not in result.output


def _files(directory: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_validate_writes_nothing_neither_database_nor_audit_log(shop: TestDatabase, tmp_path: Path) -> None:
    if shop.name != "sqlite":
        pytest.skip("the database file is only visible on SQLite; servers are read-only sessions")
    database = Path(shop.engine.url.database or "")
    before = _files(database.parent)
    conf = tmp_path / "conf"
    ok = validate(write(conf, SHOP_POLICIES.format(url=shop.url)))
    broken = validate(write(conf, edit(SHOP_POLICIES.format(url=shop.url), "accounts", "after: deregistered_at",
                                       "after: email"), name="broken.yaml"))
    assert (ok.exit_code, broken.exit_code) == (EXIT_OK, EXIT_INVALID), ok.output + broken.output
    assert _files(database.parent) == before, "the database file (or a journal next to it) changed"
    assert sorted(p.name for p in conf.iterdir()) == ["broken.yaml", "policies.yaml"], "no audit log, no lock file"


def test_validate_does_not_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    result = validate(write(tmp_path, SHOP_POLICIES.format(url="sqlite:///missing.db")))
    assert result.exit_code == EXIT_INVALID
    assert not (tmp_path / "missing.db").exists()


# --------------------------------------------------------------------------- the shipped file


@pytest.mark.skipif(not SHIPPED.exists(), reason="policies.yaml is not in the repository yet")
def test_the_shipped_policies_validate_against_the_demo_database(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    demo = CliRunner().invoke(main, ["demo", "--path", "tmp/demo.db", "--accounts", "500"])
    assert demo.exit_code == EXIT_OK, demo.output
    url = f"sqlite:///{tmp_path / 'tmp' / 'demo.db'}"
    result = validate(SHIPPED, env={"SHOP_DATABASE_URL": url, "RETENTION_POLICIES": ""})
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.startswith(f"{SHIPPED}: ")
    lines = result.stdout.splitlines()
    assert lines[0] == f"{SHIPPED}: 4 policies OK"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["accounts", "orders", "invoices", "correspondence"]
    # Item 7 of issue 11: the shipped file leaves no rows and no linked table without an end.
    assert "outside every policy's `where`" not in result.stderr
    assert "covered by no policy" not in result.stderr

"""Every column of an anonymised row is accounted for (`fields`, key, `after`, `marker` or `keep`).

An anonymise policy (or a delete policy's `on_referenced: anonymise`) that leaves a column of
its table unnamed is refused by `validate` and `run` (exit 2, nothing touched), naming the file,
line, policy and every column left. A column named in `exclude` or `where` is not accounted for
by that alone. The docs' example and the shipped policy file pass.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
import yaml
from helpers import invoke, run_cli, unchanged_witness, write_policies

from retention.demo import build_demo

if TYPE_CHECKING:
    from conftest import TestDatabase

ROOT = Path(__file__).resolve().parent.parent


def create_clients(engine: sa.Engine) -> None:
    md = sa.MetaData()
    clients = sa.Table(
        "clients", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("left_at", sa.DateTime, nullable=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("city", sa.String(100), nullable=True),
        sa.Column("segment", sa.String(20), nullable=True),
        sa.Column("on_hold", sa.Boolean, nullable=False),
        sa.Column("anonymised_at", sa.DateTime, nullable=True),
    )
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(clients.insert(), [
            {"id": i, "left_at": dt.datetime(2020, 1, i), "name": f"Client {i}", "city": "Utrecht",
             "segment": "retail", "on_hold": False, "anonymised_at": None} for i in range(1, 7)
        ])


def clients_policy(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "clients", "table": "clients", "after": "left_at", "retain": "24 months", "action": "anonymise",
        "fields": {"name": "redact", "city": None, "left_at": "generalise.year"}, "exclude": {"on_hold": True},
        "marker": "anonymised_at",
        "keep": {"segment": "the same for every client of this shop", "on_hold": "false on anonymised rows"},
        "max_fraction": 1.0,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None or k in ("fields",)}


def problem_lines(text: str, path: Path) -> list[str]:
    lines = [line.removeprefix("error: ") for line in text.splitlines()]
    return [line for line in lines if line.startswith(f"{path}:")]


def test_every_column_accounted_for_validates_and_runs(db: TestDatabase, tmp_path: Path) -> None:
    create_clients(db.engine)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [clients_policy()])
    assert invoke(["--policies", str(pf), "validate"]).exit_code == 0
    result = run_cli(pf, "--force")  # all six clients are due: --force passes the 100 % guard
    assert result.exit_code == 0, result
    assert result.policy("clients")["applied"] == 6


@pytest.mark.parametrize(("change", "left"), [
    ({"keep": {"on_hold": "false on anonymised rows"}}, ["segment"]),
    # Naming on_hold in `exclude` does not account for it: it stays in the anonymised row.
    ({"keep": {"segment": "one segment"}}, ["on_hold"]),
    ({"fields": {"name": "redact"}, "keep": {"on_hold": "false"}}, ["city", "segment"]),
    # Without a marker, the marker column is a column like any other.
    ({"marker": None}, ["anonymised_at"]),
], ids=["unlisted", "exclude-is-not-enough", "two-columns", "unused-marker-column"])
def test_a_column_left_unaccounted_for_is_refused_naming_it(db: TestDatabase, tmp_path: Path,
                                                          change: dict[str, Any], left: list[str]) -> None:
    create_clients(db.engine)
    pf = write_policies(tmp_path / "policies.yaml", db.url, [clients_policy(**change)])
    before = unchanged_witness(db)
    for argv in (["--policies", str(pf), "validate"], ["--policies", str(pf), "run", "--as-of", "2026-11-24"]):
        result = invoke(argv)
        assert result.exit_code == 2, result
        lines = problem_lines(result.stderr, pf)
        assert len(lines) == 1, result.stderr
        line = lines[0]
        text = pf.read_text(encoding="utf-8").splitlines()
        key = "keep" if "keep" in clients_policy(**change) else "fields"
        number = next(i + 1 for i, t in enumerate(text) if t.strip().startswith(f"{key}:"))
        assert line.startswith(f"{pf}:{number}: policy 'clients', key '{key}': "), line
        for column in left:
            assert f"'{column}'" in line, line
        named = re.findall(r"'(\w+)'", line.split("not accounted for")[0].split(": ", 2)[2])
        assert sorted(set(named) - {"clients"}) == sorted(left), line
        if "on_hold" in left:
            assert "`exclude` or `where`" in line
    assert unchanged_witness(db) == before


def test_the_anonymise_instead_path_is_checked_too(db: TestDatabase, tmp_path: Path) -> None:
    """A delete policy with `on_referenced: anonymise` anonymises some rows: all columns must be named."""
    create_clients(db.engine)
    policy = clients_policy(action="delete", on_referenced="anonymise", keep={"on_hold": "false"})
    pf = write_policies(tmp_path / "policies.yaml", db.url, [policy])
    result = invoke(["--policies", str(pf), "validate"])
    assert result.exit_code == 2, result
    assert "'segment'" in result.stderr and "not accounted for" in result.stderr
    # A plain delete policy removes the whole row: nothing to account for.
    plain = {k: v for k, v in policy.items() if k not in ("fields", "keep", "marker", "on_referenced")}
    pf = write_policies(tmp_path / "policies.yaml", db.url, [plain])
    assert invoke(["--policies", str(pf), "validate"]).exit_code == 0


@pytest.mark.parametrize(("keep", "fields", "key", "message"), [
    ({"segment": "x", "on_hold": "x", "country": "x"}, None, "keep.country", "table 'clients' has no column 'country'"),
    ({"segment": "x", "on_hold": "x"}, {"name": "redact", "city": None, "left_at": None}, "fields.left_at",
     "the `after` column can only be generalised"),
])
def test_keep_columns_exist_and_the_after_column_is_only_generalised(
        db: TestDatabase, tmp_path: Path, keep: dict[str, str], fields: dict[str, Any] | None, key: str,
        message: str) -> None:
    create_clients(db.engine)
    policy = clients_policy(keep=keep, **({"fields": fields} if fields else {}))
    pf = write_policies(tmp_path / "policies.yaml", db.url, [policy])
    result = invoke(["--policies", str(pf), "validate"])
    assert result.exit_code == 2, result
    assert f"policy 'clients', key '{key}': {message}" in result.stderr
    # Generalising the after column is allowed: the row stays past its term.
    fine = clients_policy(fields={"name": "redact", "city": None, "left_at": "generalise.month"})
    pf = write_policies(tmp_path / "policies.yaml", db.url, [fine])
    assert invoke(["--policies", str(pf), "validate"]).exit_code == 0


def docs_example() -> str:
    text = (ROOT / "docs" / "policy-file.md").read_text(encoding="utf-8")
    section = text[text.index("## A complete example"):]
    return section[section.index("```yaml\n") + 8:section.index("\n```", section.index("```yaml\n"))]


@pytest.mark.parametrize("source", ["docs-example", "shipped"])
def test_the_docs_example_and_the_shipped_file_account_for_every_column(tmp_path: Path, source: str) -> None:
    """The docs' example anonymises, so it must list every column; the shipped file deletes
    (accounts with detach) and anonymises nothing, and must validate all the same."""
    demo = tmp_path / "var" / "demo.db"
    build_demo(demo, accounts=200, seed=42, today=dt.date(2026, 11, 24))
    text = docs_example() if source == "docs-example" else (ROOT / "policies.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    anonymising = [p for p in doc["policies"] if p["action"] == "anonymise" or p.get("on_referenced") == "anonymise"]
    assert bool(anonymising) == (source == "docs-example")
    path = tmp_path / "policies.yaml"
    path.write_text(text, encoding="utf-8")
    result = invoke(["--policies", str(path), "validate"])
    assert result.exit_code == 0, result

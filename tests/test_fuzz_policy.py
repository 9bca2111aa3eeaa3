"""Fuzzing the policy loader (issue 14, item 9): whatever the file, the outcome is 0 or 2.

Hypothesis writes YAML-ish text, raw bytes, and mutations of a valid file (values replaced by
anything JSON or YAML can hold, keys dropped or added, characters flipped); each is loaded the
way `retention validate` loads it (``config.load``, then the database checks against a small
SQLite shop when the file loads). The only outcomes allowed are a model (exit 0) or an
:class:`InvalidInput` (exit 2): any other exception is what users saw as "internal error",
exit 1. A sample goes through the CLI as well, to see the exit codes themselves.

Examples are derandomised, so CI runs the same ones every time; raise the counts in
``EXAMPLES`` (or drop ``derandomize``) locally to explore further.
"""

from __future__ import annotations

import copy
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retention.cli import main
from retention.engine.validation import connect_and_check
from retention.errors import EXIT_INVALID, EXIT_OK, InvalidInput
from retention.policy import loader as config


def _fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# 1,100 examples in all (the pure-Python YAML parser takes ~5 ms for the valid file on an idle
# core, so the whole file stays well under 30 s), plus a sample through the CLI.
EXAMPLES = {"yaml_ish": 300, "bytes": 200, "mutations": 300, "edits": 300, "cli": 40}

VALID: dict[str, Any] = {
    "version": 1,
    "timezone": "Europe/Amsterdam",
    "databases": {"shop": {"url": "sqlite:///shop.db", "purge": "none", "connect_timeout": 5}},
    "audit": {"path": "audit/retention.jsonl"},
    "monitor": {"url": "${FUZZ_MONITOR_URL:-}"},
    "policies": [
        {"name": "accounts", "table": "accounts", "after": "deregistered_at", "retain": "24 months",
         "action": "anonymise", "fields": {"email": "fake.email", "name": "redact", "born": "generalise.year"},
         "exclude": {"legal_hold": True}, "max_fraction": 0.5,
         # an anonymise policy accounts for every column (issue 14): the hold flag stays as it is
         "keep": {"legal_hold": "false on every anonymised row (held rows are never anonymised)"}},
        {"name": "orders", "table": "orders", "after": "placed_at", "retain": "7 years", "minimum": "7 years",
         "align": "end_of_year", "action": "delete", "where": {"status": "closed"}, "batch_size": 100},
    ],
}

TOKENS = [
    "version", "1", ":", ": ", " ", "\n", "  ", "    ", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "&b ", "*b",
    "<<: ", "!!str ", "!!python/object:os.system ", "!custom ", "'", '"', "#", "---\n", "...\n", "? ", "|\n",
    ">\n", "policies", "databases", "shop", "url", "sqlite:///shop.db", "${X}", "${X:-y}", "${", "retain",
    "24 months", "9999 years", "-1 days", "0 days", "name", "table", "after", "action", "delete", "anonymise",
    "fields", "exclude", "where", "cascade", "minimum", "align", "end_of_year", "max_fraction", ".nan", ".inf",
    "-.inf", "1e999", "0x1F", "0o17", "2024-99-99", "2024-02-29", "null", "~", "true", "yes", "\t", "\x00",
    "é", "\ufeff", "\u2028", "\\", "%YAML 1.1\n", "%TAG ! tag:x:\n", "1" * 40, "batch_size", "key", "timezone",
    "Mars/Olympus", "locale", "xx_XX", "fake.email", "fake.__class__", "redact: X", "generalise.year",
]


def _shop(directory: Path) -> None:
    conn = sqlite3.connect(directory / "shop.db")
    conn.executescript("""
        CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT, name TEXT, born DATE,
                               legal_hold BOOLEAN, deregistered_at TIMESTAMP);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT, placed_at TIMESTAMP);
    """)
    conn.commit()
    conn.close()


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        _shop(directory)
        yield directory


def _outcome(path: Path) -> int:
    """The exit code `validate` would give, from the same calls; anything else propagates."""
    try:
        model = config.load(path, env={})
        connected = connect_and_check(model, readonly=True)
        connected.dispose()
    except InvalidInput:
        return EXIT_INVALID
    return EXIT_OK


yaml_ish = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4)), max_size=60).map("".join)


@_fuzz(EXAMPLES["yaml_ish"])
@given(text=yaml_ish)
def test_yaml_ish_text_exits_0_or_2(text: str, workdir: Path) -> None:
    path = workdir / "policies.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    assert _outcome(path) in (EXIT_OK, EXIT_INVALID)


@_fuzz(EXAMPLES["bytes"])
@given(data=st.binary(max_size=300))
def test_raw_bytes_exit_2(data: bytes, workdir: Path) -> None:
    path = workdir / "policies.yaml"
    path.write_bytes(data)
    assert _outcome(path) in (EXIT_OK, EXIT_INVALID)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**20, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["24 months", "9999 years", "0 days", "-3 weeks", "1 yeer", "delete", "anonymise", "redact",
                     "null", "fake.email", "end_of_month", "none", "thorough", "accounts", "orders", "shop",
                     "email", "deregistered_at", "status", "${UNSET}", "sqlite:///missing.db", "1e999"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


PATHS = [p for p in _paths(VALID) if p]


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        where = draw(st.sampled_from(PATHS))
        parent: Any = doc
        try:
            for key in where[:-1]:
                parent = parent[key]
            last = where[-1]
            kind = draw(st.sampled_from(["replace", "delete", "add"]))
            if kind == "replace":
                parent[last] = draw(values)
            elif kind == "delete" and isinstance(parent, dict):
                del parent[last]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=10))] = draw(values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced the way there
    return doc


@_fuzz(EXAMPLES["mutations"])
@given(doc=mutated())
def test_mutations_of_a_valid_file_exit_0_or_2(doc: dict[str, Any], workdir: Path) -> None:
    path = workdir / "policies.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8", errors="surrogatepass")
    assert _outcome(path) in (EXIT_OK, EXIT_INVALID)


@_fuzz(EXAMPLES["edits"])
@given(edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3), st.sampled_from(TOKENS)), min_size=1,
                      max_size=4))
def test_character_edits_of_a_valid_file_exit_0_or_2(edits: list[tuple[float, int, str]], workdir: Path) -> None:
    text = yaml.safe_dump(VALID, sort_keys=False)
    for at, cut, insert in edits:
        i = int(at * len(text))
        text = text[:i] + insert + text[i + cut:]
    path = workdir / "policies.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    assert _outcome(path) in (EXIT_OK, EXIT_INVALID)


def test_the_valid_file_itself_passes(workdir: Path) -> None:
    """The fuzzing starts from a file that validates: mutations test the checks, not a typo."""
    path = workdir / "policies.yaml"
    path.write_text(yaml.safe_dump(VALID), encoding="utf-8")
    assert _outcome(path) == EXIT_OK


@_fuzz(EXAMPLES["cli"])
@given(doc=mutated())
def test_through_the_cli_validate_exits_0_or_2_without_a_traceback(doc: dict[str, Any], workdir: Path) -> None:
    path = workdir / "cli.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8", errors="surrogatepass")
    result = CliRunner().invoke(main, ["--policies", str(path), "--log-format", "json", "validate"])
    assert result.exit_code in (EXIT_OK, EXIT_INVALID), result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


def test_at_least_1000_examples_fuzz_the_loader() -> None:
    assert sum(n for kind, n in EXAMPLES.items() if kind != "cli") >= 1000

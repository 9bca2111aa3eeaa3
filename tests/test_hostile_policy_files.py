"""Hostile policy files are refused fast (issue 14, item 5): size, depth, aliases, calendar range.

Each case is timed and its memory measured around ``config.load`` itself (the CLI's start-up
is not the loader's cost), and checked through the CLI for exit 2 with file and line.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from retention.cli import main
from retention.errors import EXIT_INVALID, PolicyFileError
from retention.policy import dates
from retention.policy import loader as config

HOSTILE = Path(__file__).parent / "data" / "hostile"

VALID_HEAD = """version: 1
databases: {shop: {url: "sqlite:///shop.db"}}
policies:
  - name: accounts
    table: accounts
    after: deregistered_at
    action: delete
"""


def _timed_refusal(path: Path) -> tuple[str, float, int]:
    """(message, seconds, peak bytes allocated) of loading a file that must be refused.

    Timed without tracemalloc (it slows allocation-heavy code several times), then measured.
    """
    t0 = time.perf_counter()
    with pytest.raises(PolicyFileError) as caught:
        config.load(path, env={})
    elapsed = time.perf_counter() - t0
    tracemalloc.start()
    try:
        with pytest.raises(PolicyFileError):
            config.load(path, env={})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return str(caught.value), elapsed, peak


def _cli(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--policies", str(path), "validate"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stderr


def _billion_laughs(tmp: Path) -> Path:
    return HOSTILE / "billion-laughs.yaml"


def _nested_flow(tmp: Path) -> Path:
    path = tmp / "deep.yaml"
    path.write_text("version: 1\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    return path


def _nested_mappings(tmp: Path) -> Path:
    path = tmp / "deep-map.yaml"
    path.write_text("version: 1\nx: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n")
    return path


def _nested_block(tmp: Path) -> Path:
    path = tmp / "deep-block.yaml"
    path.write_text("version: 1\nx:\n" + "".join(" " * i + "- \n" for i in range(1, 1000)) + " " * 1000 + "- 1\n")
    return path


def _alias_deepens(tmp: Path) -> Path:
    """Each level nests the previous one: 40 levels deep each, 80 on the second line once expanded."""
    lines = ["version: 1", "l0: &l0 " + "[" * 40 + "1" + "]" * 40]
    lines += [f"l{i}: &l{i} " + "[" * 40 + f"*l{i - 1}" + "]" * 40 for i in range(1, 10)]
    path = tmp / "alias-deepens.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _recursive_alias(tmp: Path) -> Path:
    path = tmp / "recursive.yaml"
    path.write_text("version: 1\nx: &a [1, {k: *a}]\n")
    return path


CASES: dict[str, tuple[Callable[[Path], Path], int, str]] = {
    # name: (file, line reported, message fragment)
    "billion laughs": (_billion_laughs, 9, "once YAML aliases are expanded"),
    "5,000 nested flow sequences": (_nested_flow, 2, "nested more than 64 levels deep"),
    "5,000 nested flow mappings": (_nested_mappings, 2, "nested more than 64 levels deep"),
    "1,000 nested block sequences": (_nested_block, 66, "nested more than 64 levels deep"),
    "aliases that nest each other": (_alias_deepens, 3, "levels deep once YAML aliases are expanded"),
    "an alias inside its own anchor": (_recursive_alias, 2, "recursive alias"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_yaml_is_refused_in_well_under_a_second_with_bounded_memory(case: str, tmp_path: Path) -> None:
    make, line, fragment = CASES[case]
    path = make(tmp_path)
    message, elapsed, peak = _timed_refusal(path)
    assert message.startswith(f"{path}:{line}: refused: "), message
    assert fragment in message
    assert elapsed < 1.0, f"{case}: {elapsed:.2f} s"
    assert peak < 50 * 1024 * 1024, f"{case}: {peak / 1e6:.0f} MB"
    code, stderr = _cli(path)
    assert code == EXIT_INVALID
    assert fragment in stderr and "Traceback" not in stderr and "RecursionError" not in stderr


def test_a_10_mb_file_is_refused_by_its_size_before_it_is_parsed(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(VALID_HEAD + "    retain: 1 year\n" + "#" * (10 * 1024 * 1024) + "\n")

    def no_parsing(*_args: object) -> None:
        raise AssertionError("a file over the size limit reached the YAML parser")

    monkeypatch.setattr(config._GuardedLoader, "__init__", no_parsing)
    t0 = time.perf_counter()
    with pytest.raises(PolicyFileError) as caught:
        config.load(path, env={})
    elapsed, message = time.perf_counter() - t0, str(caught.value)
    assert message == f"{path}: refused: larger than 1024 kB (a policy file is a few kB; this is not one, " \
                      "or it was overwritten)"
    assert elapsed < 0.5


def test_a_file_just_under_the_size_limit_is_read(tmp_path: Path) -> None:
    """The limit refuses junk, not a long but real file: 1 MB of comments and policies loads."""
    path = tmp_path / "long.yaml"
    body = VALID_HEAD + "    retain: 1 year\n"
    path.write_text(body + "#" * (config.MAX_BYTES - len(body) - 1) + "\n")
    assert path.stat().st_size == config.MAX_BYTES
    assert config.load(path, env={}).policies[0].name == "accounts"


def test_aliases_of_a_reasonable_size_still_work(tmp_path: Path) -> None:
    """Anchors and merge keys share settings between policies; only their explosion is refused."""
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "version: 1\ndatabases: {shop: {url: 'sqlite:///shop.db'}}\npolicies:\n"
        "  - &first {name: p0, table: t0, after: deregistered_at, action: delete, retain: 2 years}\n"
        + "".join(f"  - {{<<: *first, name: p{i}, table: t{i}}}\n" for i in range(1, 200))
    )
    model = config.load(path, env={})
    assert [p.table for p in model.policies] == [f"t{i}" for i in range(200)]
    assert all(str(p.retain) == "2 years" for p in model.policies)


def test_a_second_document_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(VALID_HEAD + "    retain: 1 year\n---\nversion: 1\n")
    with pytest.raises(PolicyFileError, match=r"two\.yaml:9: invalid YAML: but found another document"):
        config.load(path, env={})


@pytest.mark.parametrize(("value", "fragment"), [
    ("9999 years", "'9999 years' is longer than 1000 years: it cannot be computed in the calendar"),
    ("1001 years", "'1001 years' is longer than 1000 years"),
    ("12001 months", "'12001 months' is longer than 1000 years"),
    ("365243 days", "'365243 days' is longer than 1000 years"),
    ("99999999999999999999999999 days", "is longer than 1000 years"),
    ("-99999999999999999999999999 days", "a retention period must be positive"),
])
def test_a_retain_the_calendar_cannot_compute_is_a_validation_error(value: str, fragment: str,
                                                                    tmp_path: Path) -> None:
    """`retain: 9999 years` used to pass validate and then kill every run with ValueError."""
    path = tmp_path / "p.yaml"
    path.write_text(VALID_HEAD + f"    retain: {value}\n")
    with pytest.raises(PolicyFileError) as caught:
        config.load(path, env={})
    assert fragment in str(caught.value)
    assert str(caught.value).startswith(f"{path}:8: policy 'accounts', key 'retain': ")


@pytest.mark.parametrize("align", ["none", "end_of_month", "end_of_year"])
@pytest.mark.parametrize("period", ["1000 years", "12000 months", "52177 weeks", "365242 days"])
@pytest.mark.parametrize("as_of", ["1500-01-01", "8000-12-31T23:59:59"])
def test_the_longest_period_computes_at_the_ends_of_the_as_of_range(period: str, align: str, as_of: str) -> None:
    moment = dates.parse_as_of(as_of, "Europe/Amsterdam")
    cut = dates.cutoff(moment, dates.parse_period(period), align, "Europe/Amsterdam")  # type: ignore[arg-type]
    assert cut.local.year < moment.year
    assert dates.expires_at(cut.local, dates.parse_period(period), align).year <= moment.year  # type: ignore[arg-type]


@pytest.mark.parametrize("as_of", ["1499-12-31", "8001-01-01", "0001-01-01", "9999-12-31"])
def test_an_as_of_outside_the_computable_range_is_refused(as_of: str) -> None:
    with pytest.raises(dates.PeriodError, match=f"--as-of: year {int(as_of[:4])} is out of range"):
        dates.parse_as_of(as_of, "Europe/Amsterdam")


@pytest.mark.parametrize(("value", "fragment"), [
    (".nan", "is not a number (.nan)"),
    (".NaN", "is not a number (.nan)"),
    (".inf", "is infinite"),
    ("-.inf", "is infinite"),
    ("true", "expected a share of the table between 0 and 1, like 0.5, got true"),
])
def test_max_fraction_that_is_no_share_says_so(value: str, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(VALID_HEAD + f"    retain: 1 year\n    max_fraction: {value}\n")
    with pytest.raises(PolicyFileError) as caught:
        config.load(path, env={})
    assert str(caught.value).startswith(f"{path}:9: policy 'accounts', key 'max_fraction': {fragment}")


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("    retain: 1 year\n    x: 2024-99-99\n", 9, "cannot read this value (month must be in 1..12)"),
    ("    retain: 1 year\n    x: " + "9" * 5000 + "\n", 9, "cannot read this value (Exceeds the limit"),
    ("    retain: 1 year\n    ? [a, b]\n    : 1\n", 9, "found unhashable key"),
])
def test_values_python_cannot_build_are_located_yaml_errors(text: str, line: int, fragment: str,
                                                            tmp_path: Path) -> None:
    """These reached the user as `internal error: ValueError` / `TypeError`, exit 1."""
    path = tmp_path / "p.yaml"
    path.write_text(VALID_HEAD + text)
    with pytest.raises(PolicyFileError) as caught:
        config.load(path, env={})
    assert str(caught.value).startswith(f"{path}:{line}: invalid YAML: ")
    assert fragment in str(caught.value)

"""The bytes the audit log hashes (CONTRACT.md section 4): canonical JSON that `jq -cS` and
RFC 8785 reproduce, integers only (durations in milliseconds), nothing that could round."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import SHOP_POLICIES, SHOP_TODAY, audit_path, run_cli, write_policies

from retention.audit.log import AuditLog, canonical, verify
from retention.demo import create_shop

if TYPE_CHECKING:
    from conftest import TestDatabase

JQ = shutil.which("jq")
needs_jq = pytest.mark.skipif(JQ is None, reason="jq not installed (.ci/run installs it)")

# Everything a string in the log could hold that a serialiser might treat differently.
TRICKY = {
    "z": 1, "Z": 2, "é": 3, "ä": 4, "\U0001f600": 5, "\uffff": 6, "a b": 7, "": 8,
    "text": "quote \" backslash \\ slash / tab \t newline \n cr \r bell \x07 nul \x00 del \x7f "
            "unit-sep \x1f nbsp \xa0 ls \u2028 ps \u2029 emoji \U0001f600 dutch ij",
    "nested": {"b": [1, -2, 0, True, False, None, "x"], "a": {}}, "list": [],
    "big": 9007199254740991, "neg": -9007199254740991,
}


def jq_bytes(data: bytes, program: str = ".") -> bytes:
    assert JQ is not None
    return subprocess.run([JQ, "-cS", program], input=data, capture_output=True, check=True).stdout


def no_floats(text: str) -> Any:
    def refuse(value: str) -> Any:
        raise AssertionError(f"a non-integer number in the audit log: {value}")

    return json.loads(text, parse_float=refuse, parse_constant=refuse)


@needs_jq
def test_canonical_bytes_are_what_jq_cS_prints() -> None:
    """Sorted by code point, no whitespace, escapes only where JSON needs them (DEL included,
    as jq does), UTF-8 as is: the same bytes as `jq -cS`, so an inspector can recompute them."""
    ours = canonical(TRICKY)
    # jq reads the object from a different serialisation (ASCII escapes, indented, reversed keys).
    other = json.dumps(dict(reversed(TRICKY.items())), indent=3, ensure_ascii=True).encode()
    assert jq_bytes(other) == ours + b"\n"
    assert b"\\u007f" in ours and "\u2028".encode() in ours and "é".encode() in ours
    assert b" " not in canonical({"a": [1, 2], "b": {"c": None}})


def test_canonical_key_order_is_code_point_order() -> None:
    """Python's str order is code point order; RFC 8785 sorts by UTF-16 units, which only differs
    for keys beyond U+FFFF against keys from U+E000: no key of the log is either."""
    keys = list(json.loads(canonical({k: 0 for k in ["b", "B", "é", "a", "_", "aa", "a_"]})))
    assert keys == sorted(keys, key=lambda k: [ord(c) for c in k]) == ["B", "_", "a", "a_", "aa", "b", "é"]


def test_a_float_cannot_reach_the_log(tmp_path: Path) -> None:
    """A float would be printed differently by different serialisers (1.0, 1, 1e0): refused,
    nothing written."""
    path = tmp_path / "log.jsonl"
    with AuditLog(path) as log:
        for value in (1.5, 1.0, float("nan"), {"inner": [0.25]}):
            with pytest.raises(TypeError, match="integers only"):
                log.append("run.end", "r", duration=value)
        log.append("run.end", "r", duration_ms=1500)
    assert len(path.read_bytes().splitlines()) == 1 and verify(path).ok


def test_values_that_could_round_are_written_exactly(tmp_path: Path) -> None:
    """Integers beyond 2**53 (a 64-bit key) become decimal strings, which jq and RFC 8785 keep
    exact; integral Decimals are integers, other Decimals their text, dates ISO text."""
    with AuditLog(tmp_path / "log.jsonl") as log:
        entry = log.append("batch", "r", keys=[2**53 - 1, 2**53, -(2**63), Decimal("12"), Decimal("1.50")],
                           cutoff=date(2024, 2, 29))
    assert entry["keys"] == [2**53 - 1, "9007199254740992", "-9223372036854775808", 12, "1.50"]
    assert entry["cutoff"] == "2024-02-29"


def _shop(db: TestDatabase, tmp_path: Path, key_env: str | None = None) -> Path:
    create_shop(db.engine, accounts=150, seed=11, today=SHOP_TODAY)
    policy_file = write_policies(tmp_path / "policies.yaml", db.url, SHOP_POLICIES, purge="standard")
    if key_env:
        text = policy_file.read_text().replace("audit:\n", f"audit:\n  key_env: {key_env}\n")
        policy_file.write_text(text)
    return policy_file


@needs_jq
def test_a_real_log_is_canonical_and_holds_integers_only(db: TestDatabase, tmp_path: Path) -> None:
    """Every line `retention run` writes (preview and real run, batches, purge, ends) is its own
    `jq -cS` rendering, byte for byte, and no number in it has a fraction: durations are ms."""
    policy_file = _shop(db, tmp_path)
    assert run_cli(policy_file, "--dry-run").exit_code == 0
    real = run_cli(policy_file)
    assert real.exit_code == 0, real
    log = audit_path(policy_file)
    lines = log.read_bytes().splitlines(keepends=True)
    assert jq_bytes(log.read_bytes()) == b"".join(lines)
    entries = [no_floats(line.decode()) for line in lines]
    events = {e["event"] for e in entries}
    assert {"run.start", "policy.end", "batch", "batch.committed", "purge", "run.end"} <= events
    for e in entries:
        if e["event"] in ("policy.end", "run.end", "purge"):
            assert type(e["duration_ms"]) is int and e["duration_ms"] >= 0 and "duration_s" not in e

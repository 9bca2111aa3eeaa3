"""The audit log's chain: what it proves, what breaks it, and where verify says it broke."""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from retention.audit import log as audit
from retention.audit.log import (
    GENESIS,
    AuditLog,
    canonical,
    file_sha256,
    head,
    open_intents,
    read_entries,
    unfinished_runs,
    verify,
)
from retention.errors import AuditError, UsageError

KEY = b"s3cret-audit-key"


def ticking_clock(start: datetime = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)):
    state = {"now": start}

    def clock() -> datetime:
        state["now"] += timedelta(seconds=1, microseconds=250)
        return state["now"]

    return clock


def write_log(path: Path, n: int = 10, key: bytes | None = None) -> list[dict]:
    with AuditLog(path, key=key, clock=ticking_clock()) as log:
        return [log.append("policy.end", "run-1", policy=f"p{i}", applied=i * 10, status="ok") for i in range(n)]


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rechain(entries: list[dict], key: bytes | None = None) -> bytes:
    """What a forger does: renumber and rehash everything after an insertion."""
    out, prev = [], GENESIS
    for seq, entry in enumerate(entries, start=1):
        body = {k: v for k, v in entry.items() if k != "hash"} | {"seq": seq, "prev": prev}
        data = canonical(body)
        digest = hmac.new(key, data, hashlib.sha256).hexdigest() if key else hashlib.sha256(data).hexdigest()
        out.append(canonical(body | {"hash": digest}) + b"\n")
        prev = digest
    return b"".join(out)


# -- round trip ---------------------------------------------------------------------------


def test_append_read_verify_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "retention.jsonl"
    written = write_log(path, 5)
    assert [e["seq"] for e in written] == [1, 2, 3, 4, 5]
    assert written[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(written, written[1:], strict=False))
    assert list(read_entries(path)) == written
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", written[0]["ts"])

    # The line is the canonical JSON, and its hash is plain SHA-256 over it without `hash`.
    first = lines_of(path)[0]
    assert first == canonical(written[0]) + b"\n"
    body = {k: v for k, v in written[0].items() if k != "hash"}
    assert written[0]["hash"] == hashlib.sha256(canonical(body)).hexdigest()

    result = verify(path)
    assert result.ok and result.entries == 5 and result.line is None
    assert result.message() == f"OK: 5 entries, head 5:{written[-1]['hash']}"
    assert head(path) == result.head == f"5:{written[-1]['hash']}"
    assert (path.stat().st_mode & 0o777) == 0o640 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path, 3)
    with AuditLog(path) as log:
        assert log.head == head(path)
        entry = log.append("run.end", "run-1", status="ok", exit_code=0, duration_ms=1500)
        assert log.head == f"4:{entry['hash']}"
    assert entry["seq"] == 4
    assert verify(path).ok


def test_empty_log(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with AuditLog(path) as log:
        assert log.head == f"0:{GENESIS}"
    assert head(path) == f"0:{GENESIS}"
    assert verify(path).message() == f"OK: 0 entries, head 0:{GENESIS}"
    assert open_intents(path) == [] and unfinished_runs(path) == []


def test_append_many_is_one_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    path = tmp_path / "log.jsonl"
    with AuditLog(path) as log:
        items = [("batch.committed", "r", {"policy": "p", "batch": i, "count": 5}) for i in range(50)]
        entries = log.append_many(items)
    assert len(calls) == 1
    assert [e["seq"] for e in entries] == list(range(1, 51))
    assert verify(path).ok


def test_values_are_stored_as_json(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with AuditLog(path) as log:
        entry = log.append("x", "r", cutoff=date(2024, 1, 31), keys=[Decimal(7), Decimal("1.5")], tables={"b", "a"})
    assert entry["cutoff"] == "2024-01-31" and entry["keys"] == [7, "1.5"] and entry["tables"] == ["a", "b"]
    assert next(read_entries(path)) == entry
    assert verify(path).ok


def test_reserved_field_names_are_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "log.jsonl") as log, pytest.raises(ValueError, match="reserved"):
        log.append("x", "r", seq=99)


def test_hmac_mode(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    written = write_log(path, 4, key=KEY)
    body = {k: v for k, v in written[0].items() if k != "hash"}
    assert written[0]["hash"] == hmac.new(KEY, canonical(body), hashlib.sha256).hexdigest()
    assert verify(path, key=KEY).ok
    assert verify(path).message() == "line 1: hash mismatch (edited?)"
    assert verify(path, key=b"wrong").message() == "line 1: hash mismatch (edited, or not written with this key?)"
    with pytest.raises(AuditError, match="line 4: hash mismatch.*refusing to append"):
        AuditLog(path, key=b"wrong").open()


# -- tampering ----------------------------------------------------------------------------


def test_edited_byte_is_a_hash_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path)
    lines = lines_of(path)
    assert b'"applied":40' in lines[4]
    lines[4] = lines[4].replace(b'"applied":40', b'"applied":41')
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert not result.ok and result.line == 5
    assert result.message() == "line 5: hash mismatch (edited?)"
    assert result.entries == 4


def test_reformatted_line_is_not_canonical(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path)
    lines = lines_of(path)
    lines[2] = lines[2].replace(b'"applied":', b'"applied": ')  # same values, other bytes
    path.write_bytes(b"".join(lines))
    assert verify(path).message() == "line 3: not in canonical form (reformatted or edited?)"


def test_deleted_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path)
    lines = lines_of(path)
    del lines[3]
    path.write_bytes(b"".join(lines))
    assert verify(path).message() == "line 4: seq 5 where 4 expected (line deleted or moved?)"


def test_swapped_lines(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path)
    lines = lines_of(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"".join(lines))
    assert verify(path).message() == "line 3: seq 4 where 3 expected (line deleted or moved?)"


def test_replaced_line_with_its_own_valid_hash(tmp_path: Path) -> None:
    # A self-consistent line (right seq, hash over itself) that does not link to line 5.
    path = tmp_path / "log.jsonl"
    write_log(path)
    lines = lines_of(path)
    body = {k: v for k, v in json.loads(lines[5]).items() if k != "hash"} | {"prev": "f" * 64}
    lines[5] = canonical(body | {"hash": hashlib.sha256(canonical(body)).hexdigest()}) + b"\n"
    path.write_bytes(b"".join(lines))
    assert verify(path).message() == "line 6: prev does not match the hash of line 5 (line replaced?)"


def test_non_json_and_truncated_lines(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path)
    lines = lines_of(path)
    lines[5] = lines[5][:40] + b"\n"
    path.write_bytes(b"".join(lines))
    assert verify(path).message() == "line 6: not valid JSON (edited or truncated?)"

    path.write_bytes(b"".join(lines_of(path)[:5]) + b"garbage\n")
    assert verify(path).message() == "line 6: not valid JSON (edited or truncated?)"


def test_incomplete_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path)
    path.write_bytes(path.read_bytes()[:-1])  # a crash between write and newline
    assert verify(path).message() == "line 10: incomplete line (no newline at the end: truncated write?)"


def test_truncated_tail_is_only_caught_with_expect_head(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path)
    recorded = head(path)
    path.write_bytes(b"".join(lines_of(path)[:7]))

    # The chain that is left is whole: without a recorded head nothing is wrong.
    plain = verify(path)
    assert plain.ok and plain.message().startswith("OK: 7 entries, head 7:")

    checked = verify(path, expect_head=recorded)
    assert not checked.ok
    assert checked.message() == "head 10 not found: log truncated or rewritten (it ends at seq 7)"

    # An older recorded head is still in the log: fine.
    assert verify(path, expect_head=plain.head).ok
    assert verify(path, expect_head=f"0:{GENESIS}").ok


def test_inserted_line_with_recomputed_chain_without_key(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    entries = write_log(path)
    recorded = head(path)
    forged = dict(entries[4], policy="forged", applied=0)
    path.write_bytes(rechain(entries[:5] + [forged] + entries[5:]))

    # Without a key the chain cannot tell: anyone can recompute SHA-256.
    assert verify(path).ok
    # The head recorded elsewhere can: seq 10 now has another hash.
    result = verify(path, expect_head=recorded)
    assert result.message() == "line 10: head 10 not found: its hash differs: log truncated or rewritten"


def test_inserted_line_with_recomputed_chain_with_key(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    entries = write_log(path, key=KEY)
    forged = dict(entries[4], policy="forged", applied=0)
    original = lines_of(path)
    rewritten = rechain(entries[:5] + [forged] + entries[5:]).splitlines(keepends=True)  # no key
    assert rewritten[:5] != original[:5]  # a keyed hash differs from a plain one even unchanged
    # The forger keeps the untouched lines and rewrites from the insertion on.
    path.write_bytes(b"".join(original[:5] + rewritten[5:]))
    assert verify(path, key=KEY).message() == "line 6: hash mismatch (edited, or not written with this key?)"


def test_expect_head_must_be_seq_colon_hash(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path, 2)
    with pytest.raises(UsageError, match="SEQ:HASH"):
        verify(path, expect_head="12")


def test_missing_log_does_not_verify(tmp_path: Path) -> None:
    result = verify(tmp_path / "nope.jsonl")
    assert not result.ok and "cannot read" in result.message()


# -- open() refuses to make things worse -------------------------------------------------


def test_open_refuses_an_incomplete_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path, 3)
    with path.open("ab") as f:
        f.write(b'{"seq":4,"ts":"2026-')
    with pytest.raises(AuditError) as err:
        AuditLog(path).open()
    message = str(err.value)
    assert str(path) in message and "line 4" in message and "refusing to append" in message
    assert "incomplete" in message


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        (b"not json at all\n", "not valid JSON"),
        (b'{"seq":4}\n', "field 'ts' missing"),
        (b"\n", "empty line"),
    ],
)
def test_open_refuses_an_invalid_last_line(tmp_path: Path, tail: bytes, problem: str) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path, 3)
    with path.open("ab") as f:
        f.write(tail)
    with pytest.raises(AuditError, match=rf"line 4: {problem}.*refusing to append"):
        AuditLog(path).open()


def test_open_refuses_an_edited_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path, 3)
    path.write_bytes(path.read_bytes().replace(b'"applied":20', b'"applied":0'))
    with pytest.raises(AuditError, match="line 3: hash mismatch"):
        AuditLog(path).open()


def test_open_reads_a_last_line_bigger_than_the_tail_block(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with AuditLog(path) as log:
        log.append("batch", "r", state="intent", batch=1, keys=list(range(60_000)))
    assert path.stat().st_size > 4 * audit._TAIL_BLOCK
    with AuditLog(path) as log:
        assert log.head.startswith("1:")
        log.append("batch.committed", "r", batch=1, count=60_000)
    assert head(path).startswith("2:") and verify(path).ok


def test_open_on_an_unwritable_location(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a directory")
    with pytest.raises(AuditError, match=r"file\.txt.*[Nn]ot a directory"):
        AuditLog(blocker / "log.jsonl").open()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_open_in_a_read_only_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(AuditError, match="[Pp]ermission denied"):
            AuditLog(locked / "log.jsonl").open()
    finally:
        locked.chmod(0o700)


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with AuditLog(path) as log:
        log.append("run.start", "a")
        with pytest.raises(AuditError, match="in use"):
            AuditLog(path).open()
    with AuditLog(path) as log:  # released on close
        log.append("run.end", "a")


def test_failed_write_leaves_no_half_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path, 2)
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 20:
            return real_write(fd, bytes(data[:20]))
        raise OSError(errno.ENOSPC, "No space left on device")

    with AuditLog(path) as log:
        monkeypatch.setattr(os, "write", half_then_full)
        with pytest.raises(AuditError, match="disk full"):
            log.append("run.end", "run-1", status="ok")
        monkeypatch.undo()
        assert log.head.startswith("2:")
    assert verify(path).ok
    with AuditLog(path) as log:
        assert log.append("run.end", "run-1", status="ok")["seq"] == 3
    assert verify(path).ok


# -- what the next run needs to know ------------------------------------------------------


def test_open_intents(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with AuditLog(path) as log:
        for run in ("r1", "r2"):
            for batch in (1, 2, 3):
                log.append("batch", run, policy="p", state="intent", batch=batch, keys=[batch], count=1)
        log.append("batch.committed", "r1", policy="p", batch=1, count=1)
        log.append("batch.committed", "r1", policy="p", batch=3, count=1)
        log.append("batch.committed", "r2", policy="p", batch=2, count=1)
        # The committed of another run's batch 1 does not close r2's batch 1.
        log.append("batch.recovered", "r3", policy="p", of_run="r2", batch=3, result="applied", detail="")
    assert [(e["run"], e["batch"]) for e in open_intents(path)] == [("r1", 2), ("r2", 1)]


def test_unfinished_runs(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with AuditLog(path) as log:
        log.append("run.start", "done", dry_run=False)
        log.append("run.end", "done", status="ok", exit_code=0, duration_ms=1000)
        log.append("run.start", "crashed", dry_run=False)
        log.append("run.start", "preview", dry_run=True)
        log.append("run.start", "found", dry_run=False)
        log.append("run.interrupted", "later", interrupted_run="found", started="2026-11-24T01:00:00+00:00")
    assert [e["run"] for e in unfinished_runs(path)] == ["crashed", "preview"]


def test_file_sha256(tmp_path: Path) -> None:
    policy = tmp_path / "policies.yaml"
    policy.write_bytes(b"version: 1\n")
    assert file_sha256(policy) == hashlib.sha256(b"version: 1\n").hexdigest()


def test_read_entries_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path, 3)
    with path.open("ab") as f:
        f.write(b"oops\n")
    with pytest.raises(AuditError, match="line 4"):
        list(read_entries(path))
    assert len(list(read_entries(path, strict=False))) == 3

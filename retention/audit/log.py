"""The audit log: append-only JSON lines, each chained to the one before by a hash.

Every line is the canonical JSON (sorted keys, no spaces, UTF-8) of one entry; its
``hash`` is SHA-256, or HMAC-SHA-256 when a key is configured, over the canonical JSON
of the entry without ``hash``, and its ``prev`` is the previous line's ``hash``. So an
edited, deleted, moved or truncated line breaks the chain at a line we can name.

What the chain cannot catch on its own: without a key anyone can recompute every hash
after an edit, and anyone can cut lines off the end. Both are caught by comparing with
a head (``SEQ:HASH``) recorded somewhere the job cannot rewrite, see :func:`verify`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retention.errors import EXIT_INVALID, AuditError, UsageError

GENESIS = "0" * 64
RESERVED = frozenset({"seq", "ts", "run", "event", "prev", "hash"})
# Refuse to start below this much free space: a run that cannot audit must not touch data.
MIN_FREE_BYTES = 1 << 20
_TAIL_BLOCK = 64 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DECODER = json.JSONDecoder()
_FIELD_TYPES = (("seq", int), ("ts", str), ("run", str), ("event", str), ("prev", str), ("hash", str))


def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes that are hashed (without ``hash``) and written (with it): CONTRACT.md section 4.

    UTF-8, keys sorted by code point, no whitespace, only ``"``, ``\\`` and control characters
    escaped (short forms where JSON has them, else ``\\u00xx`` in lower case), integers only.
    That is byte for byte what ``jq -cS`` prints, and RFC 8785 for every value but U+007F, which
    jq escapes and RFC 8785 does not (a raw DEL can only be inside a string, so the replace is safe).
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("\x7f", "\\u007f").encode("utf-8")


def compute_hash(body: dict[str, Any], key: bytes | None = None) -> str:
    """The hash of an entry without its ``hash`` field."""
    return _digest(canonical(body), key)


# Integers beyond this are not exact in IEEE doubles, which jq and RFC 8785 (I-JSON) use:
# such a value (a 64-bit key) is written as its decimal string so that every verifier agrees.
SAFE_INT = (1 << 53) - 1


def _exact_ints(values: list[Any] | tuple[Any, ...]) -> bool:
    """Every item is exactly an int (no bool, no subclass) that a double holds exactly: then the
    list is already its own log value."""
    return bool(values) and set(map(type, values)) == {int} and min(values) >= -SAFE_INT and max(values) <= SAFE_INT


def to_log_value(value: Any, where: str = "") -> Any:
    """``value`` as the log holds it: JSON values with integers as the only numbers.

    Dates become ISO 8601 text, sets sorted lists, paths text, integral Decimals integers
    and other Decimals their text. A float is an error, not rounded: a duration is written in
    milliseconds, a count is an int, and a fraction has no place in the log (CONTRACT.md
    section 4), so a float here is a bug that must not silently change what is hashed.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -SAFE_INT <= value <= SAFE_INT else str(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"audit entry{where}: key {k!r} is not a string")
            out[k] = to_log_value(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        if _exact_ints(value):
            # A batch's keys: the same values, without a call and a path text per key (0.4 s of
            # a 1M-account delete on PostgreSQL under cProfile).
            return list(value)
        return [to_log_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return [to_log_value(v, where) for v in sorted(value, key=str)]
    if isinstance(value, float):
        raise TypeError(f"audit entry{where}: {value!r} is a float; the log holds integers only "
                        "(durations in milliseconds)")
    if hasattr(value, "isoformat"):  # datetime, date, time, pendulum
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value).__name__ == "Decimal":
        if value.is_finite() and value == value.to_integral_value():
            return to_log_value(int(value), where)
        return str(value)
    raise TypeError(f"audit entry{where}: a value of type {type(value).__name__} is not a JSON value")


class AuditPathRefused(AuditError):
    """The audit path is a symbolic link, or sits where others can swap it: a setup to fix, exit 2."""

    exit_code = EXIT_INVALID


def _refuse_unsafe_path(path: Path) -> None:
    """Refuse a symlink as the log (dangling or not: following one made us create its target),
    and a parent directory anyone may write to without the sticky bit (anyone could swap the log)."""
    if path.is_symlink():
        target = os.readlink(path)
        state = "" if path.exists() else ", which does not exist"
        raise AuditPathRefused(
            f"audit log {path}: is a symbolic link (to {target}{state}); refusing to follow it: "
            "set audit.path to the real file"
        )
    mode = path.parent.stat().st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise AuditPathRefused(
            f"audit log {path}: its directory {path.parent} is writable by everyone (and not sticky), "
            "so anyone could replace the log; use a directory only the job can write to"
        )


def _fail(path: Path, what: str, exc: OSError) -> AuditError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (disk full)"
    return AuditError(f"audit log {path}: {what}: {reason}")


def _read_tail(fd: int, size: int) -> tuple[bytes, int]:
    """The last line (with its newline, if any) and its offset, read backwards in growing
    blocks: a log grows for years, and every run and `audit head` reads its end."""
    buf, pos, block = b"", size, _TAIL_BLOCK
    while True:
        start = max(0, pos - block)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        # The final byte is normally the last line's own newline: look before it.
        cut = buf.rfind(b"\n", 0, len(buf) - 1)
        if cut != -1:
            return buf[cut + 1 :], pos + cut + 1
        if pos == 0:
            return buf, 0
        block *= 2


def _count_lines_before(fd: int, offset: int) -> int:
    # Only on the error path, to name the line number of a broken tail.
    step = 1 << 20
    return sum(os.pread(fd, min(step, offset - pos), pos).count(b"\n") for pos in range(0, offset, step))


def _digest(data: bytes, key: bytes | None) -> str:
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _parse(text: bytes) -> Any:
    # raw_decode on a str skips json.loads' encoding sniffing and whitespace scans: verify
    # spends most of its time here. Anything unusual goes through json.loads to be sure.
    try:
        s = text.decode("utf-8")
        obj, end = _DECODER.raw_decode(s)
        if end == len(s):
            return obj
    except ValueError:
        pass
    return json.loads(text)


def _check_line(raw: bytes, key: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """(entry if it parsed, problem or None): complete, JSON, fields, hash, canonical form."""
    if not raw.endswith(b"\n"):
        return None, "incomplete line (no newline at the end: truncated write?)"
    text = raw[:-1]
    if not text.strip():
        return None, "empty line"
    try:
        entry = _parse(text)
    except ValueError:
        return None, "not valid JSON (edited or truncated?)"
    if type(entry) is not dict:
        return None, "not a JSON object"
    for name, kind in _FIELD_TYPES:
        if type(entry.get(name)) is not kind:  # `type is`, so that True is not a seq
            return entry, f"field '{name}' missing or of the wrong type"
    digest = entry["hash"]
    if not _HEX64.fullmatch(digest):
        return entry, "field 'hash' is not 64 hex digits (edited?)"
    # Fast path, half the cost of re-serialising: the line minus its hash member is byte
    # for byte what was hashed. It can only pass a non-canonical line that someone hashed
    # on purpose, which needs the key or, without one, is a forgery the chain cannot tell
    # from a canonical one anyway (see verify).
    member = b',"hash":"' + digest.encode("ascii") + b'"'
    at = text.find(member)
    unique = at != -1 and text.find(member, at + 1) == -1
    if unique and hmac.compare_digest(_digest(text[:at] + text[at + len(member) :], key), digest):
        return entry, None
    # Slow path, exactly as the contract defines the hash, to say what is wrong.
    body = {k: v for k, v in entry.items() if k != "hash"}
    if not hmac.compare_digest(_digest(canonical(body), key), digest):
        if key is None:
            return entry, "hash mismatch (edited?)"
        return entry, "hash mismatch (edited, or not written with this key?)"
    # The values hash right, so the bytes around them were changed (spaces, escapes...).
    if canonical(entry) != text:
        return entry, "not in canonical form (reformatted or edited?)"
    return entry, None


class AuditLog:
    """An audit log opened for appending. Use as a context manager, or open()/close()."""

    def __init__(
        self, path: Path, key: bytes | None = None, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.path = Path(path)
        self.key = key
        # Injectable so tests and demos can write a history of nights without waiting for them.
        self._clock = clock or (lambda: datetime.now(UTC))
        self._fd: int | None = None
        self._seq, self._prev = 0, GENESIS

    def open(self) -> AuditLog:
        if self._fd is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise AuditError(f"audit log {self.path}: {self.path.parent} is not a directory") from None
        except OSError as exc:
            raise _fail(self.path, f"cannot create directory {self.path.parent}", exc) from None
        _refuse_unsafe_path(self.path)
        try:
            # O_NOFOLLOW: a symlink put there after the check above is refused too (ELOOP).
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise AuditPathRefused(f"audit log {self.path}: is a symbolic link; refusing to follow it") from None
            raise _fail(self.path, "cannot open for writing", exc) from None
        try:
            self._lock_and_check_space(fd)
            self._seq, self._prev = self._read_state(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _lock_and_check_space(self, fd: int) -> None:
        # Two writers would fork the chain; the run lock should prevent it, this makes sure.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            msg = f"audit log {self.path}: in use by another retention run; refusing to append"
            raise AuditError(msg) from None
        try:
            st = os.fstatvfs(fd)
        except OSError:  # not every file system reports it; the write itself will tell
            return
        free = st.f_bavail * st.f_frsize
        if st.f_blocks and free < MIN_FREE_BYTES:
            raise AuditError(f"audit log {self.path}: disk full ({free} bytes free); refusing to start")

    def _read_state(self, fd: int) -> tuple[int, str]:
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return 0, GENESIS
            raw, offset = _read_tail(fd, size)
        except OSError as exc:
            raise _fail(self.path, "cannot read", exc) from None
        entry, problem = _check_line(raw, self.key)
        if problem is not None:
            line = _count_lines_before(fd, offset) + 1
            raise AuditError(
                f"audit log {self.path}, line {line}: {problem}; refusing to append "
                f"(run `retention audit verify`, then repair or move the log aside)"
            )
        assert entry is not None
        return entry["seq"], entry["hash"]

    @property
    def head(self) -> str:
        if self._fd is None:
            raise RuntimeError("AuditLog.head before open()")
        return f"{self._seq}:{self._prev}"

    def _build(self, seq: int, prev: str, event: str, run: str, fields: dict[str, Any]) -> tuple[dict, bytes]:
        clash = RESERVED & fields.keys()
        if clash:
            raise ValueError(f"audit event {event!r}: reserved field name(s) {sorted(clash)}")
        ts = self._clock().astimezone(UTC).isoformat(timespec="microseconds")
        body = {**fields, "seq": seq, "ts": ts, "run": run, "event": event, "prev": prev}
        # Normalised first, so the hash and the returned entry are exactly what a reader sees.
        body = to_log_value(body, f" {event!r}")
        entry = {**body, "hash": compute_hash(body, self.key)}
        return entry, canonical(entry) + b"\n"

    def append(self, event: str, run: str, **fields: Any) -> dict[str, Any]:
        return self.append_many([(event, run, fields)])[0]

    def append_many(self, items: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Append several entries with one write and one fsync."""
        if self._fd is None:
            raise RuntimeError("AuditLog.append before open()")
        seq, prev = self._seq, self._prev
        entries, lines = [], []
        for event, run, fields in items:
            seq += 1
            entry, line = self._build(seq, prev, event, run, fields)
            prev = entry["hash"]
            entries.append(entry)
            lines.append(line)
        if not entries:
            return []
        self._write(b"".join(lines))
        self._seq, self._prev = seq, prev
        return entries

    def _write(self, data: bytes) -> None:
        fd = self._fd
        assert fd is not None
        start = -1
        try:
            start = os.fstat(fd).st_size
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError as exc:
            # Cut a half-written line off again, or the next run would refuse to append.
            with contextlib.suppress(OSError):
                if start >= 0:
                    os.ftruncate(fd, start)
                    os.fsync(fd)
            raise _fail(self.path, "cannot write", exc) from None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing releases the flock

    def __enter__(self) -> AuditLog:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every line, streamed: for scans that skip most lines unparsed."""
    path = Path(path)
    try:
        f = path.open("rb", buffering=1 << 20)
    except OSError as exc:
        raise _fail(path, "cannot read", exc) from None
    with f:
        yield from enumerate(f, start=1)


def read_numbered(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, entry) for every line that is a JSON object; others are skipped (a
    report over a damaged log still shows what can be read, and says where it broke)."""
    path = Path(path)
    try:
        f = path.open("rb")
    except OSError as exc:
        raise _fail(path, "cannot read", exc) from None
    with f:
        for number, raw in enumerate(f, start=1):
            try:
                entry = _parse(raw.rstrip(b"\r\n"))
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield number, entry


def read_entries(path: Path, *, strict: bool = True) -> Iterator[dict[str, Any]]:
    """Entries one line at a time. A line that is not a JSON object raises AuditError
    naming it; with ``strict=False`` it is skipped (reports over a damaged log)."""
    return _scan(Path(path), b"", strict)


def read_matching(path: Path, needle: bytes) -> Iterator[dict[str, Any]]:
    """The entries whose line contains ``needle`` (e.g. ``b'"event":"purge"'``), unparsed lines
    skipped: a fast scan of a long log for one kind of event."""
    return _scan(Path(path), needle, strict=False)


def _scan(path: Path, needle: bytes, strict: bool = True) -> Iterator[dict[str, Any]]:
    # Lines are canonical JSON, so an event name appears verbatim: lines without the
    # needle are skipped unparsed, which makes the per-run scans a fraction of a parse.
    try:
        f = path.open("rb")
    except OSError as exc:
        raise _fail(path, "cannot read", exc) from None
    with f:
        for number, raw in enumerate(f, start=1):
            if needle not in raw:
                continue
            try:
                entry = _parse(raw.rstrip(b"\r\n"))
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                yield entry
            elif strict:
                raise AuditError(f"audit log {path}, line {number}: not a valid entry")


# What `run.start` records in `chain`: how the hashes of that run's lines were computed.
CHAIN_PLAIN = "sha256"
CHAIN_KEYED = "hmac-sha256"


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    head: str
    line: int | None
    reason: str | None
    # Checked with a key (HMAC-SHA-256) or without (SHA-256).
    keyed: bool = False
    # The log records that it is keyed (run.start `chain`), but no key was given: it could not
    # be checked, which is not the same as edited.
    key_missing: bool = False
    # What the last run.start read says about the chain (None in logs from before the field).
    recorded_chain: str | None = None

    def message(self) -> str:
        if self.ok:
            return f"OK: {self.entries} entries, head {self.head}"
        if self.line is not None:
            return f"line {self.line}: {self.reason}"
        return str(self.reason)

    def verdict(self) -> str:
        """One line for a person: intact (keyed or not), broken at line N, or not checkable."""
        if self.ok:
            how = ("keyed: HMAC-SHA-256, checked with the key" if self.keyed
                   else "not keyed: plain SHA-256, so compare the head with one kept elsewhere")
            return f"Chain intact: {self.entries:,} entries, head {self.head} ({how})"
        if self.key_missing:
            return f"Chain NOT VERIFIED: {self.reason}"
        where = f" at line {self.line}" if self.line is not None else ""
        return f"Chain BROKEN{where}: {self.reason}"


def parse_head(text: str) -> tuple[int, str]:
    seq, sep, digest = text.strip().partition(":")
    digest = digest.lower()
    if not sep or not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise UsageError(f"expected head as SEQ:HASH (e.g. 42:<64 hex digits>), got {text!r}")
    return int(seq), digest


def verify(path: Path, key: bytes | None = None, expect_head: str | None = None) -> VerifyResult:
    """Check the chain from the first line to the last and name the first line that breaks it.

    Without a key, a line inserted or edited with every later hash recomputed verifies
    OK, and so does a log with lines cut off its end: only ``expect_head`` (a ``SEQ:HASH``
    recorded earlier, outside the job's reach) catches those. With a key, rewriting needs
    the key, but cutting off the end still needs ``expect_head`` to be seen.

    A keyed log checked without its key fails on its first line; when the log records that it
    is keyed (``run.start`` ``chain``), the result says the key is missing instead of "edited".
    """
    path = Path(path)
    want = parse_head(expect_head) if expect_head else None
    seq, prev, line = 0, GENESIS, 0
    head_seen = want is None or (want[0] == 0 and want[1] == GENESIS)
    recorded: str | None = None

    def broken(reason: str, at: int | None, key_missing: bool = False) -> VerifyResult:
        return VerifyResult(False, seq, f"{seq}:{prev}", at, reason, key is not None, key_missing, recorded)

    try:
        f = path.open("rb")
    except OSError as exc:
        return broken(f"cannot read {path}: {exc.strerror or exc}", None)
    with f:
        try:
            for raw in f:
                line += 1
                entry, problem = _check_line(raw, key)
                if entry is not None and entry.get("event") == "run.start" and isinstance(entry.get("chain"), str):
                    recorded = entry["chain"]
                if problem is not None:
                    if key is None and recorded == CHAIN_KEYED and problem.startswith("hash mismatch"):
                        return broken("the log is keyed (HMAC-SHA-256, as its run.start records) and no key "
                                      "was given: set the environment variable that audit.key_env names",
                                      line, key_missing=True)
                    if key is not None and recorded == CHAIN_PLAIN and problem.startswith("hash mismatch"):
                        problem += " (this run.start records a chain written without a key)"
                    return broken(problem, line)
                assert entry is not None
                if entry["seq"] != seq + 1:
                    problem = f"seq {entry['seq']} where {seq + 1} expected (line deleted or moved?)"
                elif entry["prev"] != prev:
                    problem = f"prev does not match the hash of line {line - 1} (line replaced?)"
                elif want is not None and entry["seq"] == want[0] and entry["hash"] != want[1]:
                    problem = f"head {want[0]} not found: its hash differs: log truncated or rewritten"
                if problem is not None:
                    return broken(problem, line)
                seq, prev = entry["seq"], entry["hash"]
                if want is not None and seq == want[0]:
                    head_seen = True
        except OSError as exc:
            return broken(f"cannot read {path}: {exc.strerror or exc}", line + 1)
    if not head_seen:
        assert want is not None
        return broken(f"head {want[0]} not found: log truncated or rewritten (it ends at seq {seq})", None)
    return VerifyResult(True, seq, f"{seq}:{prev}", None, None, key is not None, False, recorded)


def head(path: Path) -> str:
    """``SEQ:HASH`` of the last entry, reading only the tail. The hash is not re-checked
    here (that needs the key, and the whole chain): that is what verify is for."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return f"0:{GENESIS}"
            raw, _ = _read_tail(f.fileno(), size)
    except OSError as exc:
        raise _fail(path, "cannot read", exc) from None
    try:
        entry = json.loads(raw)
        return f"{int(entry['seq'])}:{entry['hash']}"
    except (ValueError, TypeError, KeyError):
        msg = f"audit log {path}: the last line is not a valid entry (run `retention audit verify`)"
        raise AuditError(msg) from None


def open_intents(path: Path) -> list[dict[str, Any]]:
    """``batch`` intents neither committed nor recovered, oldest first. Streams the log,
    holding only the unmatched ones: this runs at the start of every run."""
    pending: dict[tuple[str, Any], dict[str, Any]] = {}
    if not Path(path).exists():
        return []
    for entry in _scan(Path(path), b'"event":"batch'):
        event = entry.get("event")
        if event == "batch" and entry.get("state") == "intent":
            pending[(entry.get("run"), entry.get("batch"))] = entry
        elif event == "batch.committed":
            pending.pop((entry.get("run"), entry.get("batch")), None)
        elif event == "batch.recovered":
            pending.pop((entry.get("of_run"), entry.get("batch")), None)
    return list(pending.values())


def unfinished_runs(path: Path) -> list[dict[str, Any]]:
    """``run.start`` entries with neither a ``run.end`` nor a ``run.interrupted`` naming them."""
    started: dict[Any, dict[str, Any]] = {}
    if not Path(path).exists():
        return []
    for entry in _scan(Path(path), b'"event":"run.'):
        event = entry.get("event")
        if event == "run.start":
            started[entry.get("run")] = entry
        elif event == "run.end":
            started.pop(entry.get("run"), None)
        elif event == "run.interrupted":
            started.pop(entry.get("interrupted_run"), None)
    return list(started.values())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

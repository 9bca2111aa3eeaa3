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
    """The bytes that are hashed (without ``hash``) and written (with it)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compute_hash(body: dict[str, Any], key: bytes | None = None) -> str:
    """The hash of an entry without its ``hash`` field."""
    return _digest(canonical(body), key)


def _json_default(value: Any) -> Any:
    # The engine hands us dates, Decimals and paths; the log only ever holds JSON values.
    if hasattr(value, "isoformat"):  # datetime, date, time, pendulum
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value).__name__ == "Decimal":
        return int(value) if value == value.to_integral_value() else str(value)
    raise TypeError(f"audit entry value of type {type(value).__name__} is not JSON-serialisable")


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
        # Round-trip through JSON so the hash and the returned entry are exactly what a reader sees.
        body = json.loads(json.dumps(body, default=_json_default, ensure_ascii=False))
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


def read_entries(path: Path, *, strict: bool = True) -> Iterator[dict[str, Any]]:
    """Entries one line at a time. A line that is not a JSON object raises AuditError
    naming it; with ``strict=False`` it is skipped (reports over a damaged log)."""
    return _scan(Path(path), b"", strict)


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


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    head: str
    line: int | None
    reason: str | None

    def message(self) -> str:
        if self.ok:
            return f"OK: {self.entries} entries, head {self.head}"
        if self.line is not None:
            return f"line {self.line}: {self.reason}"
        return str(self.reason)


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
    """
    path = Path(path)
    want = parse_head(expect_head) if expect_head else None
    seq, prev, line = 0, GENESIS, 0
    head_seen = want is None or (want[0] == 0 and want[1] == GENESIS)

    def broken(reason: str, at: int | None) -> VerifyResult:
        return VerifyResult(False, seq, f"{seq}:{prev}", at, reason)

    try:
        f = path.open("rb")
    except OSError as exc:
        return broken(f"cannot read {path}: {exc.strerror or exc}", None)
    with f:
        try:
            for raw in f:
                line += 1
                entry, problem = _check_line(raw, key)
                if problem is not None:
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
    return VerifyResult(True, seq, f"{seq}:{prev}", None, None)


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

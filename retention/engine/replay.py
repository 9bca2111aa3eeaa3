"""Replay the recorded erasures after a restore from backup.

A restore brings back the rows of every subject erased since the backup was taken. The
nightly run re-applies retention terms by itself; subject erasures it cannot know. The audit
log (kept apart from the database and its backups) holds each erasure's keys per policy in
its ``erase.start`` entry, never a value: ``retention replay`` erases those keys again through
the same :func:`retention.engine.erase.apply`, with tonight's keep rules (a statutory minimum
that ended since the erasure no longer keeps the row; one still running keeps it). Each
replayed erasure is framed by ``replay.start``/``replay.end`` naming the request and the
erasure it repeats (``of_run``), and one ``replay`` entry (CONTRACT.md section 4) records the
whole replay, also one that found nothing to repeat. A key no longer in the database simply matches nothing.

Only erasures are replayed, not earlier replays (they repeat erasures that are themselves in
the log) and not the batches of nightly runs (the next run does those again).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pendulum

from retention.audit import log as audit
from retention.engine import erase as eraser
from retention.engine import holds
from retention.engine.validation import connect_and_check
from retention.errors import EXIT_OK, UsageError
from retention.policy.model import PolicyFile


@dataclass
class Replayed:
    of_run: str
    request: str
    ts: str
    result: eraser.EraseResult | None = None
    skipped: list[str] = field(default_factory=list)


@dataclass
class ReplayResult:
    dry_run: bool
    since: str | None
    erasures: list[Replayed] = field(default_factory=list)
    exit_code: int = EXIT_OK
    # The id of the `replay` entry (a real replay only).
    run: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "since": self.since, "exit_code": self.exit_code, "run": self.run,
                "erasures": [{"of_run": e.of_run, "request": e.request, "erased_at": e.ts, "skipped": e.skipped,
                              "result": e.result.as_json() if e.result else None} for e in self.erasures]}


def recorded(path: Path, since: dt.datetime | None) -> list[dict[str, Any]]:
    """The ``erase.start`` entries of the log, oldest first, at or after ``since`` (UTC)."""
    if not path.exists():
        return []
    out = []
    for entry in audit.read_entries(path):
        if entry.get("event") != "erase.start":
            continue
        if since is not None and dt.datetime.fromisoformat(entry["ts"]) < since:
            continue
        out.append(entry)
    return out


def replay(model: PolicyFile, *, since: pendulum.DateTime | None = None, dry_run: bool = False,
           as_of: pendulum.DateTime | None = None, audit_key: bytes | None = None) -> ReplayResult:
    from retention.engine.runner import resolve_as_of

    moment = resolve_as_of(as_of, model.timezone, dry_run)
    since_utc = since.in_timezone("UTC") if since is not None else None
    result = ReplayResult(dry_run, since.isoformat() if since is not None else None)
    entries = recorded(Path(model.audit.path), since_utc)
    known = {p.name: p for p in model.policies}
    for entry in entries:
        item = Replayed(str(entry["run"]), str(entry.get("request", "")), str(entry.get("ts", "")))
        result.erasures.append(item)
        keys = {}
        for name, ks in (entry.get("keys") or {}).items():
            if name not in known:
                item.skipped.append(f"policy {name!r} is no longer in the policy file: its keys {ks} not replayed")
                continue
            keys[name] = list(ks)
        if not keys:
            continue
        databases = {model.database_of(known[n]) for n in keys}
        if len(databases) != 1:
            raise UsageError(f"erasure {item.of_run}: its policies are now on several databases; replay it by hand")
        database = databases.pop()
        mine = [p for p in model.policies if model.database_of(p) == database]
        connected = connect_and_check(model, mine, readonly=dry_run)
        try:
            # Recorded erasures passed their bound (or were forced) when they were made.
            item.result = eraser.apply(
                model, connected, keys, moment, request=item.request, policy=str(entry.get("policy", "")),
                key=str(entry.get("key", "")), dry_run=dry_run, force=True, audit_key=audit_key,
                extra={"of_run": item.of_run, "erased_at": item.ts}, event="replay")
        finally:
            connected.dispose()
        result.exit_code = max(result.exit_code, item.result.exit_code)
    if not dry_run:
        # The contract's `replay` event: that a replay was done, also when there was nothing to
        # replay (the evidence a restore was followed up), with the erasures it repeated.
        with audit.AuditLog(Path(model.audit.path), audit_key).open() as log_:
            result.run = holds.new_id()
            log_.append("replay", result.run, since=result.since, as_of=moment.isoformat(),
                        erasures=[{"of_run": e.of_run, "request": e.request,
                                   "replay_run": e.result.run if e.result else None,
                                   "status": e.result.status if e.result else "skipped"} for e in result.erasures],
                        exit_code=result.exit_code)
    return result


def render_text(result: ReplayResult) -> list[str]:
    if not result.erasures:
        since = f" since {result.since}" if result.since else ""
        return [f"no erasures recorded in the audit log{since}: nothing to replay"]
    lines = ["PREVIEW (dry run): nothing was changed" if result.dry_run else "REPLAYED"]
    for item in result.erasures:
        lines.append(f"# request {item.request} (erasure {item.of_run}, {item.ts})")
        lines += [f"  ! {s}" for s in item.skipped]
        if item.result is not None:
            lines += ["  " + line for line in eraser.render_text(item.result)[1:]]
    return lines

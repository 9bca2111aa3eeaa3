"""`retention audit verify|head|show|find`: reading the audit log, never a database."""


from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from retention.cli.app import (
    _audit_key,
    _exit,
    _global_options,
    _guard,
    _State,
    main,
)
from retention.errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, RetentionError, UsageError


@main.group()
@_global_options()
def audit() -> None:
    """Read and check the audit log (verify, head, show, find).

    These commands read only the `audit` section of the policy file (or --log): no
    database URL or secret needs to be set.
    """


@dataclass
class _AuditSource:
    path: Path
    key: bytes | None
    # The variable audit.key_env names, when it is configured and unset: the log is keyed and
    # cannot be checked here; that is not the same as "edited".
    missing_key_env: str | None = None
    # Given with --log: perhaps an archived log from before the key, so it is checked first.
    explicit: bool = False


def _audit_source(state: _State, log: str | None) -> _AuditSource:
    from retention.policy import loader

    if log:
        path = Path(log)
        try:
            env_name = loader.load_audit(state.policy_path).key_env
        except RetentionError:
            # --log without a usable policy file: the conventional variable, if it is set; if
            # not, verify still tells a keyed log by what its run.start entries record.
            env_name = "RETENTION_AUDIT_KEY" if os.environ.get("RETENTION_AUDIT_KEY") else None
    else:
        section = loader.load_audit(state.policy_path)
        if "{database}" in section.path:
            raise UsageError(f"audit.path {section.path!r} has one log per database: name it with --log PATH")
        env_name, path = section.key_env, Path(section.path)
    if not path.exists():
        raise UsageError(f"audit log {path} does not exist")
    key = _audit_key(env_name, required=False)
    return _AuditSource(path, key, env_name if env_name and key is None else None, explicit=bool(log))


def _key_missing(source: _AuditSource) -> Any:
    from retention.audit import log as audit_mod

    seq, _, digest = audit_mod.head(source.path).partition(":")
    reason = (f"the log is keyed (audit.key_env: ${source.missing_key_env}) and the key is missing: "
              f"${source.missing_key_env} is not set, so the chain cannot be checked here")
    return audit_mod.VerifyResult(False, int(seq), f"{seq}:{digest}", None, reason, False, True, None)


def _verify(source: _AuditSource, expect_head: str | None) -> Any:
    from retention.audit import log as audit_mod

    if source.missing_key_env and source.explicit:
        result = audit_mod.verify(source.path, None, expect_head)
        # Lines that verify without a key make it an unkeyed log, and a later mismatch an edit.
        first_line_keyed = result.line == 1 and (result.reason or "").startswith("hash mismatch")
        if not (result.key_missing or first_line_keyed):
            return result
    if source.missing_key_env:
        # Checking without the key would pass a log rewritten without one: not checkable here.
        return _key_missing(source)
    return audit_mod.verify(source.path, source.key, expect_head)


def _verdict_exit(result: Any) -> int:
    if result.ok:
        return EXIT_OK
    return EXIT_INVALID if result.key_missing else EXIT_FAILED


def _verify_all(sources: list[_AuditSource]) -> Any:
    """Several logs (a fleet) as one verdict: intact only when every chain is; otherwise the
    first failing log's reason, with no line (so no run is vouched for)."""
    from retention.audit import log as audit_mod

    results = [(s.path, _verify(s, None)) for s in sources]
    for path, result in results:
        if not result.ok:
            return audit_mod.VerifyResult(False, result.entries, result.head, None, f"{path}: {result.message()}",
                                          result.keyed, result.key_missing, result.recorded_chain)
    return audit_mod.VerifyResult(True, sum(r.entries for _, r in results), ", ".join(r.head for _, r in results),
                                  None, None, all(r.keyed for _, r in results))


def _merged_entries(paths: list[Path]) -> Iterator[dict[str, Any]]:
    """The entries of several audit logs (a fleet: one per database), in time order.

    A stable sort on the entries' UTC timestamps: each log's own order is kept, and the
    runs of different databases interleave as they happened.
    """
    from retention.audit import log as audit_mod

    entries = [e for path in paths for e in audit_mod.read_entries(path)]
    yield from sorted(entries, key=lambda e: str(e.get("ts", "")))


@audit.command("verify")
@click.option("--log", "log", metavar="PATH", help="Audit log file. Default: audit.path of the policy file.")
@click.option("--expect-head", metavar="SEQ:HASH", help="A head recorded elsewhere that the log must still contain.")
@_global_options()
@click.pass_obj
@_guard
def audit_verify(state: _State, log: str | None, expect_head: str | None) -> None:
    """Check the hash chain from the first entry to the last.

    Exit 0 when whole; 1 naming the first line that breaks it; 2 when the log is keyed
    and the key is not set. Without a key, a log rewritten with a recomputed chain only
    fails against a head kept elsewhere (--expect-head); with audit.key_env set, the HMAC
    catches it. docs/verify-audit-log.sh does the same check with jq and sha256sum.
    """
    source = _audit_source(state, log)
    result = _verify(source, expect_head)
    click.echo(result.message() if result.ok or not result.key_missing else f"error: {result.reason}",
               err=result.key_missing)
    _exit(_verdict_exit(result))


@audit.command("head")
@click.option("--log", "log", metavar="PATH", help="Audit log file. Default: audit.path of the policy file.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one line {timestamp, level, event: audit.head, head, log}, fit for a JSON log stream.")
@_global_options()
@click.pass_obj
@_guard
def audit_head(state: _State, log: str | None, fmt: str) -> None:
    """Print SEQ:HASH of the last entry, to keep where the job cannot rewrite it."""
    import datetime as dt

    from retention.audit import log as audit_mod

    path = _audit_source(state, log).path
    head = audit_mod.head(path)
    if fmt == "json":
        now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        click.echo(json.dumps({"timestamp": now, "level": "info", "event": "audit.head", "head": head,
                               "log": str(path)}))
    else:
        click.echo(head)


@audit.command("show")
@click.option("--log", "logs", metavar="PATH", multiple=True,
              help="Audit log file (repeatable: several logs, e.g. one per database of a fleet, shown as one, "
                   "runs in time order). Default: audit.path of the policy file.")
@click.option("--since", metavar="DATE", help="Only runs on or after DATE.")
@click.option("--until", metavar="DATE", help="Only runs on or before DATE.")
@click.option("--policy", "policies", multiple=True, metavar="NAME", help="Only this policy (repeatable).")
@click.option("--run", "run_id", metavar="ID", help="Only this run.")
@click.option("--previews", is_flag=True,
              help="Also show recorded previews (dry runs); never counted in the totals or the latest cut-off.")
@click.option("--expect-head", metavar="SEQ:HASH", help="A head recorded elsewhere that the log must still contain.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv", "html"]), default="text",
              show_default=True)
@_global_options()
@click.pass_obj
@_guard
def audit_show(state: _State, logs: tuple[str, ...], since: str | None, until: str | None,
               policies: tuple[str, ...], run_id: str | None, previews: bool, expect_head: str | None,
               fmt: str) -> None:
    """The audit log for people: enforcement runs, policies, counts, cut-offs.

    The chain is verified first and its verdict comes first in every format; a broken
    chain still renders, the runs from the break on marked UNVERIFIED, and the exit
    code is 1 (2 when the log is keyed and the key is not set). `--format html` writes
    one self-contained page to stdout (redirect it to a file).
    """
    import datetime as dt

    from retention.audit import log as audit_mod
    from retention.reports import audit as auditreport

    if len(logs) > 1 and fmt == "html":
        raise UsageError("--format html shows one log (its chain verified); for several --log use text, json "
                         "or csv, or one page per log")
    if len(logs) > 1 and expect_head:
        raise UsageError("--expect-head names the head of one log; give one --log with it")
    sources = [_audit_source(state, log) for log in logs] if logs else [_audit_source(state, None)]
    source = sources[0]

    def day(text: str | None, opt: str) -> dt.date | None:
        if text is None:
            return None
        try:
            return dt.date.fromisoformat(text[:10])
        except ValueError:
            raise UsageError(f"{opt}: expected a date like 2026-11-24, got {text!r}") from None

    first, last = day(since, "--since"), day(until, "--until")
    if len(sources) == 1:
        verification = _verify(source, expect_head)
        entries: Iterator[tuple[int, dict[str, Any]]] = audit_mod.read_numbered(source.path)
    else:
        verification = _verify_all(sources)
        entries = ((0, e) for e in _merged_entries([s.path for s in sources]))
    runs = auditreport.summarise(entries, since=first, until=last,
                                 policies=policies, run=run_id, previews=previews)
    auditreport.mark_verified(runs, verification)
    if fmt == "html":
        page = auditreport.render_html(runs, verification, audit_mod.head(source.path), since=first, until=last)
        click.echo(page, nl=False)
    else:
        render = {"text": auditreport.render_text, "json": auditreport.render_json,
                  "csv": auditreport.render_csv}[fmt]
        click.echo(render(runs, verification), nl=False)
    if not verification.ok:
        click.echo(f"error: {verification.verdict()}", err=True)
    _exit(_verdict_exit(verification))


@audit.command("find")
@click.option("--policy", "policy", required=True, metavar="NAME", help="The policy whose key it is.")
@click.option("--key", "key", required=True, metavar="KEY", help="The row's key (primary key or the policy's key).")
@click.option("--table", "table", metavar="TABLE", help="Only batches on this table.")
@click.option("--log", "log", metavar="PATH", help="Audit log file. Default: audit.path of the policy file.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
@_guard
def audit_find(state: _State, policy: str, key: str, table: str | None, log: str | None, fmt: str) -> None:
    """Every run and batch that touched one key: when, what, under which rule and basis.

    \b
    Example:
      retention audit find --policy accounts --key 4711
    """
    import json

    from retention.audit import find as finder

    result = finder.find(_audit_source(state, log).path, policy, key, table)
    if fmt == "json":
        click.echo(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    else:
        for line in finder.render_text(result):
            click.echo(line)

"""Data-subject rights: `retention hold add|list|lift`, `erase` and `replay` (docs/rights.md)."""


from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from retention.cli.app import (
    _as_of,
    _audit_key,
    _database_options,
    _exit,
    _for_database,
    _global_options,
    _guard,
    _pick_database,
    _State,
    main,
)


@main.group()
@_global_options()
def hold() -> None:
    """The hold registry: keep one row (and the rows linked to it) past its term until a date.

    For a restriction request (art. 18 GDPR) or a legal hold. See docs/rights.md.
    """


def _audit_writer(state: _State, model: Any) -> Any:
    from retention.audit import log as audit_mod

    return audit_mod.AuditLog(Path(model.audit.path),
                              _audit_key(model.audit.key_env, required=True, where=f"{state.policy_path}: "))


@hold.command("add")
@click.option("--policy", "policy", required=True, metavar="NAME", help="The policy whose row is held.")
@click.option("--key", "key", required=True, metavar="KEY", help="The row's key (the policy's key column).")
@click.option("--reason", "reason", required=True, metavar="TEXT",
              help="Why (kept in the database only, never in the audit log).")
@click.option("--until", "until", required=True, metavar="DATE",
              help="The hold ends at the start of DATE (YYYY-MM-DD) in the file's time zone.")
@click.option("--by", "by", metavar="NAME", help="Who placed it (in the audit log).")
@_global_options()
@click.pass_obj
@_guard
def hold_add(state: _State, policy: str, key: str, reason: str, until: str, by: str | None) -> None:
    """Hold one row of a policy, and the rows of other policies linked to it.

    \b
    Example:
      retention hold add --policy accounts --key 4711 --reason "claim 2026-113" --until 2027-06-01 --by dpo
    """
    from retention.engine import holds

    model = state.load()
    database = model.database_of(next((p for p in model.policies if p.name == policy), model.policies[0]))
    model = _for_database(model, database)
    database, placed = holds.place(model, _audit_writer(state, model), policy, key, reason, until, by)
    if not state.quiet:
        click.echo(f"hold {placed.id} added: {placed.policy} key {placed.key} ({database}.{placed.table_name}) "
                   f"held until {placed.until.isoformat()}")


@hold.command("list")
@click.option("--expired", "expired", is_flag=True, help="Also the holds that have expired or were lifted.")
@click.option("--database", "database", metavar="NAME", help="Only this database.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_global_options()
@click.pass_obj
@_guard
def hold_list(state: _State, expired: bool, database: str | None, fmt: str) -> None:
    """The registry's holds: active ones, or with --expired all of them."""
    from retention.engine import holds

    model = state.load()
    rows = holds.listing(model, _pick_database(model, database, None), expired)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("no holds" if expired else "no active holds")
    for r in rows:
        by = f" by {r['by']}" if r["by"] else ""
        click.echo(f"{r['id']:>5}  {r['state']:<8} {r['database']}.{r['table']} key {r['key']} "
                   f"(policy {r['policy']}) until {r['until']}{by}: {r['reason']}")


@hold.command("lift")
@click.argument("hold_id", type=int, metavar="ID")
@click.option("--database", "database", metavar="NAME", help="The hold's database (when the file has several).")
@_global_options()
@click.pass_obj
@_guard
def hold_lift(state: _State, hold_id: int, database: str | None) -> None:
    """End a hold now: its rows are due again at the next run if their term has passed."""
    from retention.engine import holds

    model = state.load()
    database = _pick_database(model, database, None)
    if database is None and len(model.databases) == 1:
        database = next(iter(model.databases))
    model = _for_database(model, database)
    database, lifted = holds.lift_hold(model, _audit_writer(state, model), hold_id, database)
    if not state.quiet:
        click.echo(f"hold {lifted.id} lifted: {lifted.policy} key {lifted.key} ({database}.{lifted.table_name})")


@main.command()
@click.option("--policy", "policy", required=True, metavar="NAME", help="The policy of the subject's start row.")
@click.option("--key", "key", required=True, metavar="KEY", help="The start row's key (e.g. the account id).")
@click.option("--request", "request", required=True, metavar="REF",
              help="The request's reference (in the audit log; no personal data).")
@click.option("--match", "matches", multiple=True, metavar="TABLE.COLUMN[=VALUE]",
              help="Also the rows of TABLE whose COLUMN equals VALUE, or without =VALUE the start row's "
                   "COLUMN (guest tickets by e-mail: --match tickets.email). Repeatable.")
@click.option("--dry-run", is_flag=True, help="Preview: per table what goes, what stays and why; nothing written.")
@click.option("--force", is_flag=True, help="Go ahead although more than 1,000 rows would change.")
@click.option("--as-of", "as_of", metavar="DATE",
              help="Weigh the statutory minimums as of DATE (default now; future dates only with --dry-run).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_global_options()
@click.pass_obj
@_guard
def erase(state: _State, policy: str, key: str, request: str, matches: tuple[str, ...], dry_run: bool,
          force: bool, as_of: str | None, fmt: str) -> None:
    """Erase one data subject now (art. 17 GDPR) through the policies, keeping what the law keeps.

    \b
    Examples:
      retention erase --policy accounts --key 4711 --request AVG-2026-031 --match tickets.email --dry-run
      retention erase --policy accounts --key 4711 --request AVG-2026-031 --match tickets.email
    """
    from retention.engine import erase as eraser

    model = state.load()
    start = next((p for p in model.policies if p.name == policy), None)
    model = _for_database(model, model.database_of(start) if start else None)
    moment = _as_of(as_of, model.timezone)
    result = eraser.erase(model, policy_name=policy, key=key, request=request, matches=matches, dry_run=dry_run,
                          force=force, as_of=moment,
                          audit_key=_audit_key(model.audit.key_env, required=not dry_run,
                                               where=f"{state.policy_path}: "))
    _show(state, result, fmt, eraser.render_text)
    if result.message and result.exit_code:
        state.say("error" if not dry_run else "warning", result.message)
    _exit(result.exit_code)


@main.command()
@click.option("--since", "since", metavar="DATE",
              help="Only erasures recorded at or after DATE (the backup's date; local time of the file).")
@click.option("--dry-run", is_flag=True, help="Preview: what each erasure would remove again; nothing written.")
@click.option("--as-of", "as_of", metavar="DATE", help="Weigh the statutory minimums as of DATE (default now).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_database_options
@_global_options()
@click.pass_obj
@_guard
def replay(state: _State, since: str | None, dry_run: bool, as_of: str | None, fmt: str, database: str | None,
           database_index: int | None) -> None:
    """After a restore from backup: erase again every subject the audit log says was erased.

    \b
    Example:
      retention replay --since 2026-11-20 --dry-run
    """
    from retention.engine import replay as replayer

    model = state.load()
    model = _for_database(model, _pick_database(model, database, database_index))

    result = replayer.replay(model, since=_as_of(since, model.timezone, "--since"), dry_run=dry_run,
                             as_of=_as_of(as_of, model.timezone),
                             audit_key=_audit_key(model.audit.key_env, required=not dry_run,
                                                  where=f"{state.policy_path}: "))
    _show(state, result, fmt, replayer.render_text)
    _exit(result.exit_code)


def _show(state: _State, result: Any, fmt: str, render_text: Callable[[Any], Iterable[str]]) -> None:
    """An erasure's or a replay's result on stdout: JSON, or its text lines (none with -q)."""
    if fmt == "json":
        click.echo(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    elif not state.quiet:
        for line in render_text(result):
            click.echo(line)

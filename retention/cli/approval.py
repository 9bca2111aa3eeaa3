"""Plan, approve, apply: `retention plan`, `plan show` and `approve` (docs/approval.md)."""


from __future__ import annotations

import json
import time
from pathlib import Path

import click

from retention.cli.app import (
    _as_of,
    _audit_key,
    _database_options,
    _for_database,
    _global_options,
    _guard,
    _pick_database,
    _State,
    main,
)
from retention.errors import UsageError


@main.group(invoke_without_command=True)
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), metavar="PLAN",
              help="Write the plan to PLAN (gzip'd when it ends in .gz).")
@click.option("--policy", "policy_names", multiple=True, metavar="NAME", help="Only this policy (repeatable).")
@click.option("--as-of", "as_of", metavar="DATE",
              help="Plan as if now were DATE (ISO 8601; may be ahead): the run still applies only what "
                   "is due when it runs.")
@_database_options
@_global_options()
@click.pass_context
def plan(ctx: click.Context, output: str | None, policy_names: tuple[str, ...], as_of: str | None,
         database: str | None, database_index: int | None) -> None:
    """Write the keys tonight's run would change, for a person to approve (read-only).

    \b
    Examples:
      retention plan -o night.plan                 every policy, as of now
      retention plan show night.plan               read it (--format html: printable)
      retention approve night.plan --by "A. de Vries" --role DPO
      retention run --plan night.plan              apply exactly that
    """
    if ctx.invoked_subcommand is not None:
        return
    _plan_write(output, policy_names, as_of, database, database_index)


@_guard
def _plan_write(output: str | None, policy_names: tuple[str, ...], as_of: str | None, database: str | None,
                database_index: int | None) -> None:
    from retention.approval import apply
    from retention.approval import plan as planfile
    from retention.reports import plan as report

    state: _State = click.get_current_context().ensure_object(_State)
    if not output:
        raise UsageError("retention plan: give the file to write with -o PLAN (or: retention plan show PLAN)")
    model = state.load()
    chosen = _pick_database(model, database, database_index)
    model = _for_database(model, chosen)
    moment = _as_of(as_of, model.timezone)
    started = time.monotonic()
    doc = apply.make(model, as_of=moment, policy_names=policy_names, database=chosen)
    path = Path(output)
    planfile.write(path, doc)
    if not state.quiet:
        click.echo(report.render_text(doc, planfile.content_sha256(doc), path), nl=False)
        click.echo(f"written to {path} ({path.stat().st_size} bytes, {time.monotonic() - started:.1f} s); "
                   f"approve it with: retention approve {path} --by NAME", err=True)


@plan.command("show")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "html", "json"]), default="text", show_default=True,
              help="text, a printable HTML page, or the counts as JSON (no keys).")
@click.option("--keys", "show_keys", type=click.IntRange(min=0), default=10, show_default=True, metavar="N",
              help="Show the first N keys of each fate (text and html).")
@_global_options()
@click.pass_obj
@_guard
def plan_show(state: _State, plan_path: str, fmt: str, show_keys: int) -> None:
    """Show a plan: its moment, rules, databases, counts, keys and approvals."""
    from retention.approval import plan as planfile
    from retention.reports import plan as report

    path = Path(plan_path)
    doc = planfile.read(path)
    sha = planfile.content_sha256(doc)
    if fmt == "html":
        click.echo(report.render_html(doc, sha, path, show_keys), nl=False)
    elif fmt == "json":
        click.echo(json.dumps(report.as_json(doc, sha), indent=2, ensure_ascii=False))
    else:
        click.echo(report.render_text(doc, sha, path, show_keys), nl=False)


@main.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--by", "by", required=True, metavar="NAME", help="Who approves (recorded in the audit log).")
@click.option("--role", "role", metavar="ROLE", help="In which role (e.g. DPO).")
@click.option("--note", "note", metavar="TEXT", help="Why, or on what conditions.")
@_global_options()
@click.pass_obj
@_guard
def approve(state: _State, plan_path: str, by: str, role: str | None, note: str | None) -> None:
    """Approve a plan: the audit log records its SHA-256, the approver and the counts.

    \b
    Example:
      retention approve night.plan --by "A. de Vries" --role DPO --note "backlog 2024, checked"
    """
    from retention.approval import apply
    from retention.approval import plan as planfile

    if not by.strip():
        raise UsageError("--by: give the approver's name")
    path = Path(plan_path)
    doc = planfile.read(path)
    model = state.load()
    if doc["policy_file_sha256"] != model.source_sha256:
        from retention.approval import PlanRefused

        raise PlanRefused(f"plan {path} was made from another version of {model.source} (SHA-256 "
                          f"{doc['policy_file_sha256'][:12]}, now {model.source_sha256[:12]}): make a new plan")
    paths = list(dict.fromkeys(Path(_for_database(model, name).audit.path) for name in doc["databases"]))
    key = _audit_key(model.audit.key_env, required=True, where=f"{state.policy_path}: ")
    done = apply.approve(path, doc, paths, key, by=by, role=role, note=note)
    if not state.quiet:
        counts = apply.summary_counts(doc)
        what = "; ".join(f"{n}: " + ", ".join(f"{v} to {f}" for f, v in c.items() if v) for n, c in counts.items())
        click.echo(f"approved {path} (SHA-256 {done['plan']}) by {by}{f' ({role})' if role else ''}: "
                   f"{what or 'nothing to change'}")

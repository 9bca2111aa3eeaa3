"""`retention validate`, `run` (and its preview) and `explain`."""


from __future__ import annotations

import json
import sys
import time
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
    _ping_failure,
    _progress_factory,
    _State,
    _until_load,
    _width,
    main,
)
from retention.errors import EXIT_FAILED, UsageError


@main.command()
@_database_options
@_global_options()
@click.pass_obj
@_guard
@_until_load
def validate(state: _State, database: str | None, database_index: int | None) -> None:
    """Check the policy file against every database it names. Writes nothing.

    Parses the file, connects to each database, reflects the named tables and checks
    every table, column, key, strategy and foreign-key relation. Warnings (missing
    indexes, settings that keep copies of removed data) do not fail the check.
    """
    from retention.engine.runner import select_policies
    from retention.engine.validation import connect_and_check, lifetime_warnings

    model = state.load()
    selected = select_policies(model, (), _pick_database(model, database, database_index))
    connected = connect_and_check(model, selected, readonly=True, survey=True)
    try:
        for warning in [*connected.warnings, *lifetime_warnings(model, connected)]:
            state.say("warning", warning)
        if state.quiet:
            return
        click.echo(f"{model.source}: {len(selected)} policies OK")
        for p in selected:
            align = "" if p.align == "none" else f" from the {p.align.replace('_', ' ')}"
            children = f" (+ {', '.join(p.cascade)})" if p.cascade else ""
            click.echo(f"  {p.name}: {p.action} {model.database_of(p)}.{p.table}{children} "
                       f"{p.retain} after {p.after}{align}")
        # Tables whose expired partitions go whole (engine/partitions.py).
        import pendulum

        from retention.engine import partitions
        from retention.engine.runner import make_plans

        plans = make_plans(model, selected, connected, pendulum.now(model.timezone))
        for line in partitions.report(plans, connected.engines):
            click.echo(f"  {line}")
        # The re-identification check as tonight's run would find it (writes nothing).
        from retention.engine.runner import reidentification_report
        from retention.reports.run import reidentification_lines

        for plan, reid in reidentification_report(model, connected):
            click.echo(f"  {plan.policy.name}: " + "\n    ".join(reidentification_lines(reid.as_dict())))
            if not reid.passed:
                what = ("it runs anyway (reidentification: warn)" if plan.policy.reidentification == "warn"
                        else "a real run blocks it (exit 3)")
                state.say("warning", f"policy '{plan.policy.name}': {reid.failure()}; {what}")
    finally:
        connected.dispose()


@main.command()
@click.option("--dry-run", is_flag=True, help="Preview: same selection and counts, nothing written to any database.")
@click.option("--policy", "policy_names", multiple=True, metavar="NAME", help="Only this policy (repeatable).")
@click.option("--as-of", "as_of", metavar="DATE",
              help="Evaluate as if now were DATE (ISO 8601; a date means its start). Future dates only with --dry-run.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv", "html"]), default="text",
              show_default=True, help="Result format (html: with --dry-run, a printable preview to sign).")
@click.option("-o", "--output", "output", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write the result to FILE instead of stdout.")
@click.option("--keys", "keys_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="With --dry-run: every past-term key and its fate to FILE (CSV: policy,table,key,fate,reason).")
@click.option("--force", is_flag=True,
              help="Run policies that a safety guard would block (max_fraction, whole table, rate).")
@click.option("--accept-policy-change", "accept_changes", multiple=True, metavar="NAME",
              help="Accept this policy's rule change since its last real run (repeatable; audited).")
@click.option("--record", is_flag=True,
              help="With --dry-run: append one `preview` entry (counts, no keys) to the audit log.")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), metavar="PLAN",
              help="Apply an approved plan: only its keys that are still due, only its policies "
                   "(retention plan / approve).")
@click.option("--plan-max-age", "plan_max_age", default="7d", show_default=True, metavar="AGE",
              help="Refuse a plan made longer ago than AGE (e.g. 7d, 36h, 90m).")
@click.option("--metrics-file", "metrics_file", type=click.Path(dir_okay=False), metavar="PATH",
              help="Write Prometheus metrics (node exporter textfile format) to PATH, atomically; "
                   "also on a failed night. Not with --dry-run.")
@_database_options
@_global_options()
@click.pass_obj
@_guard
@_until_load
def run(state: _State, dry_run: bool, policy_names: tuple[str, ...], as_of: str | None, fmt: str,
        output: str | None, keys_file: str | None, force: bool, accept_changes: tuple[str, ...], record: bool,
        plan_path: str | None, plan_max_age: str, metrics_file: str | None, database: str | None,
        database_index: int | None) -> None:
    """Enforce the policies (or preview them with --dry-run).

    \b
    Examples:
      retention run --dry-run                      what would go tonight
      retention run --dry-run --as-of 2027-01-01   what goes by 1 January
      retention run --dry-run --format html -o preview.html   a printable preview to sign
      retention run --dry-run --keys keys.csv      every key and its fate
      retention --log-format json run --format json   the nightly job
      retention run --database-index 2             the third database only (a fleet)
      retention run --plan night.plan              exactly what a person approved

    A dry run takes no lock and writes nothing (not even to the audit log, unless --record).
    """
    if metrics_file and dry_run:
        raise UsageError("--metrics-file is for real runs: a --dry-run changes nothing to count")
    if record and not dry_run:
        raise UsageError("--record goes with --dry-run (a real run is always in the audit log)")
    if fmt == "html" and not dry_run:
        raise UsageError("--format html is the printable preview: use it with --dry-run")
    if keys_file and not dry_run:
        raise UsageError("--keys goes with --dry-run (the audit log lists the keys a real run changed)")
    if output and not Path(output).resolve().parent.is_dir():
        raise UsageError(f"-o {output}: directory {Path(output).parent} does not exist")
    started = time.monotonic()
    try:
        result = _run(state, dry_run, policy_names, as_of, force, database, database_index, record,
                      Path(keys_file) if keys_file else None, accept_changes, plan_path, plan_max_age)
    except Exception as exc:
        # The runner pings the ends of the runs it finishes; these never got that far.
        if not dry_run:
            _ping_failure(state, None, exc)
        # A night that ends in exit 2 or 4 must show in the metrics too, not leave last night's file.
        if metrics_file:
            _write_metrics(state, Path(metrics_file), None, getattr(exc, "exit_code", EXIT_FAILED), started)
        raise
    if metrics_file:
        _write_metrics(state, Path(metrics_file), result, result.exit_code, started)
    from retention.reports import run as reports

    if output:
        try:
            Path(output).write_text(reports.render(result, fmt, 100), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"-o {output}: cannot write: {exc.strerror}") from None
        if not state.quiet and not state.json:
            click.echo(f"{output}: {fmt} written", err=True)
    elif not state.quiet:
        text = reports.render(result, fmt, _width())
        if fmt == "json" and state.json:
            # One line, so that a stream carrying stdout and stderr together (journald,
            # `kubectl logs`, a cron log file) stays JSON lines.
            text = json.dumps(json.loads(text), ensure_ascii=False) + "\n"
        click.echo(text, nl=False)
    # Under --log-format json the run.end log line carries the message already.
    if result.message and not state.json and (fmt != "text" or state.quiet or output):
        click.echo(result.message, err=True)
    _exit(result.exit_code)


def _run(state: _State, dry_run: bool, policy_names: tuple[str, ...], as_of: str | None, force: bool,
         database: str | None, database_index: int | None, record: bool, keys_file: Path | None,
         accept_changes: tuple[str, ...] = (), plan_path: str | None = None, plan_max_age: str = "7d") -> Any:
    from retention.engine import runner

    model = state.load()
    chosen = _pick_database(model, database, database_index)
    model = _for_database(model, chosen)
    moment = _as_of(as_of, model.timezone)
    approved = None
    if plan_path:
        from retention.approval import apply

        if dry_run:
            raise UsageError("--plan applies an approved plan; to see it, use: retention plan show PLAN")
        max_age = apply.parse_max_age(plan_max_age)
        key = _audit_key(model.audit.key_env, required=True, where=f"{state.policy_path}: ")
        approved = apply.load_for_run(Path(plan_path), model, Path(model.audit.path), max_age=max_age, key=key)
        wrong = [n for n in policy_names if n not in approved.keys]
        if wrong:
            raise UsageError(f"--policy {', '.join(map(repr, wrong))}: not in the plan {plan_path}")
        # With --database, the plan's policies on that database (a plan may span a fleet).
        on_db = {p.name for p in model.policies if chosen is None or model.database_of(p) == chosen}
        policy_names = tuple(policy_names) or tuple(n for n in approved.policy_names if n in on_db)
        if not policy_names:
            raise UsageError(f"--plan {plan_path}: no policy of the plan is on database {chosen!r}")
    progress = _progress_factory() if (not dry_run and not state.quiet and sys.stdout.isatty()) else None
    return runner.execute_run(
        model, dry_run=dry_run, as_of=moment, policy_names=policy_names, database=chosen, force=force,
        progress=progress, record=record, keys_file=keys_file, accept_changes=accept_changes,
        audit_key=_audit_key(model.audit.key_env, required=not dry_run or record, where=f"{state.policy_path}: "),
        approved=approved,
    )


def _write_metrics(state: _State, path: Path, result: Any, exit_code: int, started: float) -> None:
    from retention.reports.metrics import RowCount, write_metrics

    rows: list[RowCount] = []
    for o in result.policies if result is not None else []:
        rows += [RowCount(o.name, o.database, "deleted", o.deleted),
                 RowCount(o.name, o.database, "anonymised", o.anonymised),
                 RowCount(o.name, o.database, "cascaded", sum(o.cascaded.values()))]
    try:
        write_metrics(path, rows, exit_code=exit_code, duration_s=time.monotonic() - started)
    except OSError as exc:
        # The run's outcome stands; monitoring notices the stale file by its timestamps.
        state.say("warning", f"--metrics-file {path}: cannot write: {exc.strerror or exc}")


@main.command()
@click.argument("policy_name", metavar="POLICY")
@click.argument("key", metavar="KEY")
@click.option("--as-of", "as_of", metavar="DATE", help="Explain as if now were DATE (ISO 8601).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
@_guard
@_until_load
def explain(state: _State, policy_name: str, key: str, as_of: str | None, fmt: str) -> None:
    """One row's event, term end, and fate tonight, and why. Reads only.

    \b
    Examples:
      retention explain accounts 1042       what happens to account 1042 tonight, and why
    """
    import json

    from retention.engine import explain as explain_mod

    model = state.load()
    moment = _as_of(as_of, model.timezone)
    result = explain_mod.explain(model, policy_name, key, moment)
    if fmt == "json":
        click.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(explain_mod.render_text(result, _width()), nl=False)

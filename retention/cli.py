"""The command line (CONTRACT.md section 1): options in, plain function calls, results out.

This is the only module that imports click, and the only place where errors become
messages and exit codes: every command body runs inside :func:`_guard`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from retention import __version__
from retention.errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, RetentionError, UsageError

HELP = """Enforce data-retention policies on SQL databases, and prove it afterwards.

\b
Every night `retention run` deletes or anonymises the rows whose retention term
has passed, as the policy file says, and writes a tamper-evident audit log.
Before a policy goes live, `retention run --dry-run` shows what would happen.

\b
Exit codes: 0 ok (also: nothing due), 1 failed part-way (re-run finishes),
2 invalid input (nothing touched), 3 a safety guard blocked a policy (or it
awaits approval, or a --plan was refused), 4 another run holds the lock,
5 purge pending (all enforced; next run retries). A configured monitor hears
every real run's end: URL on success, URL/<exit code> otherwise.
"""


class _State:
    """The global options, from the group or (merged over them) from the command."""

    def __init__(self, policies: str | None = None, log_format: str | None = None, debug: bool = False,
                 quiet: bool = False) -> None:
        self.policies_arg = policies
        self.log_format = log_format
        self.debug = debug
        self.quiet = quiet

    @property
    def json(self) -> bool:
        # Only when asked for: plain `error: ...` lines stay the default on a terminal and
        # for the scripts that already read them.
        return self.log_format == "json"

    def configure_logging(self) -> None:
        from retention.logs import configure_logging

        configure_logging(self.log_format, debug=self.debug, quiet=self.quiet)

    @property
    def policy_path(self) -> Path:
        from retention.policy.loader import default_policy_path

        return Path(self.policies_arg) if self.policies_arg else default_policy_path()

    def load(self) -> Any:
        from retention.policy import loader as config

        return config.load(self.policy_path)

    def say(self, level: str, text: str, **fields: Any) -> None:
        """A message for the operator on stderr: a JSON log line under --log-format json, else text."""
        if self.quiet and level != "error":
            return
        if self.json:
            from retention.logs import get_logger

            lines = text.splitlines() or [""]
            extra = {"problems": lines} if len(lines) > 1 else {}
            getattr(get_logger("retention.cli"), level)(level, message=text, **extra, **fields)
        else:
            click.echo(f"{level}: {text}" if "\n" not in text else f"{level}:\n{text}", err=True)


def _exit(code: int) -> None:
    raise SystemExit(code)


@contextmanager
def _errors(state: _State) -> Iterator[None]:
    try:
        yield
    except RetentionError as exc:
        if state.debug:
            traceback.print_exc()
        state.say("error", str(exc), exit_code=exc.exit_code)
        _exit(exc.exit_code)
    except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:  # the last line of defence: no tracebacks for users
        if state.debug:
            traceback.print_exc()
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        state.say("error", f"internal error: {type(exc).__name__}: {text} (run with --debug for details)",
                  exit_code=EXIT_FAILED)
        _exit(EXIT_FAILED)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        state: _State = ctx.ensure_object(_State)
        # Again, now that the command's own copies of the global options are merged in.
        state.configure_logging()
        try:
            with _errors(state):
                return fn(*args, **kwargs)
        finally:
            import structlog

            # The run id bound during a run must not leak into a next invocation in this process.
            structlog.contextvars.clear_contextvars()

    return wrapper


def _merge(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return  # not given after the command: the group's value stands
        setattr(ctx.ensure_object(_State), attr, value)

    return callback


def _global_options(group: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--policies/-c/--config, --log-format, --debug and -q, before the command or after it.

    On a command they are merged over the group's values, so that
    `retention run --log-format json` means what `retention --log-format json run` means.
    """

    def extra(attr: str) -> dict[str, Any]:
        return {} if group else {"expose_value": False, "callback": _merge(attr)}

    options = [
        # Named policy_file, not policies: `audit show --policy NAME` keeps its values in `policies`.
        click.option("--policies", "-c", "--config", "policy_file", metavar="FILE", **extra("policies_arg"),
                     help="Policy file (-c and --config are aliases). "
                          "Default: $RETENTION_POLICIES, then ./policies.yaml."),
        click.option("--log-format", type=click.Choice(["console", "json"]), default=None, **extra("log_format"),
                     help="Logs on stderr: console (default on a terminal) or JSON lines (default otherwise); "
                          "with json, errors and warnings are JSON lines too."),
        click.option("--debug", is_flag=True, default=None, **extra("debug"), help="Show tracebacks and debug logs."),
        click.option("-q", "--quiet", is_flag=True, default=None, **extra("quiet"),
                     help="Print nothing but errors (a crontab then mails only on failure)."),
    ]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _wants_json(args: list[str]) -> bool:
    return any(a == "--log-format=json" or (a == "--log-format" and args[i + 1:i + 2] == ["json"])
               for i, a in enumerate(args))


class _Main(click.Group):
    """The top-level group: under --log-format json, click's own usage errors are JSON lines too.

    A typo in a job's command line is a failing night like any other, and a plain
    `Usage: ... Error: No such option` would be the one non-JSON line in its log.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        self._json_errors = _wants_json(list(args))
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as exc:
            raise self._shown_as_json(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            raise self._shown_as_json(exc) from None

    def _shown_as_json(self, exc: click.ClickException) -> click.ClickException:
        if getattr(self, "_json_errors", False):
            def show(file: Any = None) -> None:
                from retention.logs import configure_logging, get_logger

                configure_logging("json")
                get_logger("retention.cli").error("error", message=exc.format_message(), exit_code=exc.exit_code)

            exc.show = show  # type: ignore[method-assign]
        return exc


@click.group(cls=_Main, help=HELP,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_global_options(group=True)
@click.version_option(__version__, prog_name="retention")
@click.pass_context
def main(ctx: click.Context, policy_file: str | None, log_format: str | None, debug: bool | None,
         quiet: bool | None) -> None:
    ctx.obj = _State(policy_file, log_format, bool(debug), bool(quiet))
    ctx.obj.configure_logging()


def _database_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--database-index", "database_index", type=click.IntRange(min=0), metavar="N",
                      help="Only the N-th database of the file (0-based, in the order of `databases:`); "
                           "for a Kubernetes Indexed Job: --database-index \"$JOB_COMPLETION_INDEX\".")(fn)
    return click.option("--database", "database", metavar="NAME",
                        help="Only the policies on this database (a name under `databases:`).")(fn)


def _pick_database(model: Any, name: str | None, index: int | None) -> str | None:
    """The database a run is limited to, from --database or --database-index (None: all)."""
    if name is not None and index is not None:
        raise UsageError("--database and --database-index: give one of them")
    names = list(model.databases)
    if index is not None:
        if index >= len(names):
            raise UsageError(f"--database-index {index}: the policy file defines {len(names)} database(s) "
                             f"(0..{len(names) - 1}): {', '.join(names)}")
        return names[index]
    if name is not None and name not in model.databases:
        raise UsageError(f"--database: unknown database {name!r}; defined: {', '.join(names)}")
    return name


def _for_database(model: Any, database: str | None) -> Any:
    """The model with `{database}` in audit.path filled in: one audit log (and lock) per database."""
    path = model.audit.path
    if "{database}" not in path:
        return model
    if database is None:
        raise UsageError(f"audit.path {path!r} contains {{database}}: run with --database NAME or "
                         "--database-index N (one audit log per database)")
    if "/" in database or database in (".", ".."):
        raise UsageError(f"database name {database!r} cannot fill {{database}} in audit.path")
    return model.model_copy(update={"audit": model.audit.model_copy(update={"path": path.replace("{database}",
                                                                                               database)})})


@main.command()
@_database_options
@_global_options()
@click.pass_obj
@_guard
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


def _as_of(text: str | None, timezone: str, option: str = "--as-of") -> Any:
    """An --as-of value as a moment in the file's time zone (None: now), or exit 2 saying why."""
    from retention.policy import dates

    if not text:
        return None
    try:
        return dates.parse_as_of(text, timezone)
    except dates.PeriodError as exc:
        raise UsageError(str(exc).replace("--as-of", option)) from None


def _width() -> int:
    """The terminal's width for text reports; 100 when stdout is not a terminal (a file, a pipe)."""
    import shutil

    return max(60, shutil.get_terminal_size((100, 24)).columns) if sys.stdout.isatty() else 100


def _ping_failure(state: _State, url: str | None, exc: Exception) -> None:
    """``URL/<exit code>`` for a real run that ended in an error: an invalid file (2) and a held
    lock (4) are nights the monitor must hear about too. A file that did not load gives its URL
    from the raw YAML when it parses at all."""
    from retention.engine import monitor
    from retention.policy import loader

    if url is None:
        url = loader.monitor_url(state.policy_path)
    code = exc.exit_code if isinstance(exc, RetentionError) else EXIT_FAILED
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    monitor.ping(url, "fail", f"exit {code}: {first}", exit_code=code)


def _progress_factory() -> Callable[[str, int], Callable[[int], None]]:
    def make(name: str, total: int) -> Callable[[int], None]:
        bar = click.progressbar(length=max(total, 1), label=f"{name:<16}", file=sys.stderr, show_pos=True)
        bar.__enter__()
        done = [0]

        def step(n: int) -> None:
            bar.update(n)
            done[0] += n
            if done[0] >= total:
                bar.__exit__(None, None, None)

        return step

    return make


def _audit_key(env_name: str | None, *, required: bool, where: str = "") -> bytes | None:
    """The HMAC key of the audit chain, from the variable ``audit.key_env`` names.

    A configured variable that is unset or empty is an error where the log is written
    (``required``): writing an unkeyed chain in its place would silently drop the protection."""
    if not env_name:
        return None
    value = os.environ.get(env_name, "")
    if value:
        return value.encode()
    if required:
        raise UsageError(f"{where}audit.key_env names ${env_name}, which is not set (or empty): the audit "
                         "chain is keyed and nothing was written without the key; set it, or remove key_env")
    return None


@main.command()
@click.argument("policy_name", metavar="POLICY")
@click.argument("key", metavar="KEY")
@click.option("--as-of", "as_of", metavar="DATE", help="Explain as if now were DATE (ISO 8601).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
@_guard
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
    if fmt == "json":
        click.echo(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    elif not state.quiet:
        for line in eraser.render_text(result):
            click.echo(line)
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
    if fmt == "json":
        click.echo(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    elif not state.quiet:
        for line in replayer.render_text(result):
            click.echo(line)
    _exit(result.exit_code)


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


@main.command()
@click.option("--path", "path", default="var/demo.db", show_default=True, type=click.Path(dir_okay=False),
              help="SQLite file to create.")
@click.option("--accounts", default=10_000, show_default=True, type=click.IntRange(1, 10_000_000))
@click.option("--seed", default=42, show_default=True, type=int, help="Same seed, same shop.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@click.option("--as-of", "as_of", metavar="DATE",
              help="Build the shop as it stood on DATE (YYYY-MM-DD, not in the future; default today). "
                   "An earlier date gives a shop whose terms have not been enforced since: a first-run backlog.")
@_global_options()
@click.pass_obj
@_guard
def demo(state: _State, path: str, accounts: int, seed: int, overwrite: bool, as_of: str | None) -> None:
    """Build a demo web-shop database (SQLite) with ten years of Dutch test data.

    \b
    Examples:
      retention demo                                   var/demo.db, 10,000 accounts, up to today
      retention demo --accounts 1000000 --path big.db  a million accounts
      retention demo --as-of 2024-11-24                two years of backlog for tonight's run
    """
    from retention import demo as demo_mod

    today = demo_mod.parse_today(as_of) if as_of else None
    target = Path(path)
    if overwrite and target.exists():
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(str(target) + suffix).unlink(missing_ok=True)
    if sys.stderr.isatty():
        with click.progressbar(length=accounts, label="accounts", file=sys.stderr) as bar:
            seen = [0]

            def step(done: int) -> None:
                bar.update(done - seen[0])
                seen[0] = done

            summary = demo_mod.build_demo(target, accounts=accounts, seed=seed, today=today, progress=step)
    else:
        summary = demo_mod.build_demo(target, accounts=accounts, seed=seed, today=today)
    counts = ", ".join(f"{n} {t}" for t, n in summary.counts.items())
    click.echo(f"{target}: {counts}")


def entry() -> None:  # pragma: no cover - console-script shim
    main(prog_name="retention")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())



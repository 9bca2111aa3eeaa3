"""The command line (CONTRACT.md section 1): options in, plain function calls, results out.

This is the only module that imports click, and the only place where errors become
messages and exit codes: every command body runs inside :func:`_guard`.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from retention import __version__
from retention.errors import EXIT_FAILED, EXIT_OK, RetentionError, UsageError

HELP = """Enforce data-retention policies on SQL databases, and prove it afterwards.

\b
Every night `retention run` deletes or anonymises the rows whose retention term
has passed, as the policy file says, and writes a tamper-evident audit log.
Before a policy goes live, `retention run --dry-run` shows what would happen.

\b
Exit codes: 0 ok (also: nothing due), 1 failed part-way (re-run finishes),
2 invalid input (nothing touched), 3 a safety guard blocked a policy,
4 another run holds the lock. A configured monitor hears every real run's
end: URL on success, URL/<exit code> otherwise.
"""


class _State:
    def __init__(self, policies: str | None, debug: bool) -> None:
        self.policies_arg = policies
        self.debug = debug

    @property
    def policy_path(self) -> Path:
        from retention.policy.loader import default_policy_path

        return Path(self.policies_arg) if self.policies_arg else default_policy_path()

    def load(self) -> Any:
        from retention.policy import loader as config

        return config.load(self.policy_path)


def _exit(code: int) -> None:
    raise SystemExit(code)


@contextmanager
def _errors(debug: bool) -> Iterator[None]:
    try:
        yield
    except RetentionError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc}" if "\n" not in str(exc) else f"error:\n{exc}", err=True)
        _exit(exc.exit_code)
    except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:  # the last line of defence: no tracebacks for users
        if debug:
            traceback.print_exc()
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(f"error: internal error: {type(exc).__name__}: {text} (run with --debug for details)", err=True)
        _exit(EXIT_FAILED)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        state: _State = ctx.obj
        with _errors(state.debug if state else False):
            return fn(*args, **kwargs)

    return wrapper


@click.group(help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--policies", "policies", metavar="FILE", envvar=None,
              help="Policy file. Default: $RETENTION_POLICIES, then ./policies.yaml.")
@click.option("--log-format", type=click.Choice(["console", "json"]), default=None,
              help="Logs on stderr: console (default on a terminal) or JSON lines (default otherwise).")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(__version__, prog_name="retention")
@click.pass_context
def main(ctx: click.Context, policies: str | None, log_format: str | None, debug: bool) -> None:
    from retention.logs import configure_logging

    configure_logging(log_format, debug=debug)
    ctx.obj = _State(policies, debug)


@main.command()
@click.pass_obj
@_guard
def validate(state: _State) -> None:
    """Check the policy file against every database it names. Writes nothing.

    Parses the file, connects to each database, reflects the named tables and checks
    every table, column, key, strategy and foreign-key relation. Warnings (missing
    indexes, settings that keep copies of removed data) do not fail the check.
    """
    from retention.engine.validation import connect_and_check

    model = state.load()
    connected = connect_and_check(model, readonly=True)
    try:
        for warning in connected.warnings:
            click.echo(f"warning: {warning}", err=True)
        click.echo(f"{model.source}: {len(model.policies)} policies OK")
        for p in model.policies:
            align = "" if p.align == "none" else f" from the {p.align.replace('_', ' ')}"
            children = f" (+ {', '.join(p.cascade)})" if p.cascade else ""
            click.echo(f"  {p.name}: {p.action} {model.database_of(p)}.{p.table}{children} "
                       f"{p.retain} after {p.after}{align}")
    finally:
        connected.dispose()


@main.command()
@click.option("--dry-run", is_flag=True, help="Preview: same selection and counts, nothing written to any database.")
@click.option("--policy", "policy_names", multiple=True, metavar="NAME", help="Only this policy (repeatable).")
@click.option("--as-of", "as_of", metavar="DATE",
              help="Evaluate as if now were DATE (ISO 8601; a date means its start). Future dates only with --dry-run.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True,
              help="Result format on stdout.")
@click.option("--force", is_flag=True, help="Run policies that the max_fraction safety guard would block.")
@click.pass_obj
@_guard
def run(state: _State, dry_run: bool, policy_names: tuple[str, ...], as_of: str | None, fmt: str,
        force: bool) -> None:
    """Enforce the policies (or preview them with --dry-run).

    \b
    Examples:
      retention run --dry-run                      what would go tonight
      retention run --dry-run --as-of 2027-01-01   what goes by 1 January
      retention run --format json                  the nightly job
    """
    from retention.engine import runner
    from retention.policy import dates
    from retention.reports import run as reports

    model = None
    try:
        model = state.load()
        moment = None
        if as_of:
            try:
                moment = dates.parse_as_of(as_of, model.timezone)
            except dates.PeriodError as exc:
                raise UsageError(str(exc)) from None
        progress = _progress_factory() if (not dry_run and sys.stdout.isatty()) else None
        result = runner.execute_run(
            model, dry_run=dry_run, as_of=moment, policy_names=policy_names, force=force,
            progress=progress, audit_key=_audit_key(model.audit.key_env),
        )
    except Exception as exc:
        # The runner pings the ends of the runs it finishes; these never got that far.
        if not dry_run:
            _ping_failure(state, model.monitor.url if model is not None else None, exc)
        raise
    click.echo(reports.render(result, fmt), nl=False)
    if result.message and fmt != "text":
        click.echo(result.message, err=True)
    _exit(result.exit_code)


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


def _audit_key(env_name: str | None) -> bytes | None:
    value = os.environ.get(env_name or "", "") if env_name else ""
    return value.encode() if value else None


@main.group()
def audit() -> None:
    """Read and check the audit log (verify, head, show)."""


def _log_and_key(state: _State, log: str | None) -> tuple[Path, bytes | None]:
    if log:
        try:
            model = state.load()
            env_name = model.audit.key_env
        except RetentionError:
            env_name = "RETENTION_AUDIT_KEY"
        return Path(log), _audit_key(env_name)
    model = state.load()
    return Path(model.audit.path), _audit_key(model.audit.key_env)


@audit.command("verify")
@click.option("--log", "log", metavar="PATH", help="Audit log file. Default: audit.path of the policy file.")
@click.option("--expect-head", metavar="SEQ:HASH", help="A head recorded elsewhere that the log must still contain.")
@click.pass_obj
@_guard
def audit_verify(state: _State, log: str | None, expect_head: str | None) -> None:
    """Check the hash chain from the first entry to the last.

    Exit 0 when whole; 1 naming the first line that breaks it. Without a key, a log
    rewritten with a recomputed chain only fails against a head kept elsewhere
    (--expect-head); with audit.key_env set, the HMAC catches it.
    """
    from retention.audit import log as audit_mod

    path, key = _log_and_key(state, log)
    if not path.exists():
        raise UsageError(f"audit log {path} does not exist")
    result = audit_mod.verify(path, key, expect_head)
    click.echo(result.message())
    _exit(EXIT_OK if result.ok else EXIT_FAILED)


@audit.command("head")
@click.option("--log", "log", metavar="PATH", help="Audit log file. Default: audit.path of the policy file.")
@click.pass_obj
@_guard
def audit_head(state: _State, log: str | None) -> None:
    """Print SEQ:HASH of the last entry, to keep where the job cannot rewrite it."""
    from retention.audit import log as audit_mod

    path, _ = _log_and_key(state, log)
    if not path.exists():
        raise UsageError(f"audit log {path} does not exist")
    click.echo(audit_mod.head(path))


@audit.command("show")
@click.option("--log", "log", metavar="PATH", help="Audit log file. Default: audit.path of the policy file.")
@click.option("--since", metavar="DATE", help="Only runs on or after DATE.")
@click.option("--until", metavar="DATE", help="Only runs on or before DATE.")
@click.option("--policy", "policies", multiple=True, metavar="NAME", help="Only this policy (repeatable).")
@click.option("--run", "run_id", metavar="ID", help="Only this run.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv", "html"]), default="text",
              show_default=True)
@click.pass_obj
@_guard
def audit_show(state: _State, log: str | None, since: str | None, until: str | None,
               policies: tuple[str, ...], run_id: str | None, fmt: str) -> None:
    """The audit log for people: runs, policies, counts, cut-offs.

    `--format html` writes one self-contained page to stdout (redirect it to a file).
    """
    import datetime as dt

    from retention.audit import log as audit_mod
    from retention.reports import audit as auditreport

    path, key = _log_and_key(state, log)
    if not path.exists():
        raise UsageError(f"audit log {path} does not exist")

    def day(text: str | None, opt: str) -> dt.date | None:
        if text is None:
            return None
        try:
            return dt.date.fromisoformat(text[:10])
        except ValueError:
            raise UsageError(f"{opt}: expected a date like 2026-11-24, got {text!r}") from None

    runs = auditreport.summarise(audit_mod.read_entries(path), since=day(since, "--since"),
                                 until=day(until, "--until"), policies=policies, run=run_id)
    if fmt == "html":
        verification = audit_mod.verify(path, key)
        click.echo(auditreport.render_html(runs, verification, audit_mod.head(path)), nl=False)
    else:
        render = {"text": auditreport.render_text, "json": auditreport.render_json,
                  "csv": auditreport.render_csv}[fmt]
        click.echo(render(runs), nl=False)


@main.command()
@click.option("--path", "path", default="var/demo.db", show_default=True, type=click.Path(dir_okay=False),
              help="SQLite file to create.")
@click.option("--accounts", default=10_000, show_default=True, type=click.IntRange(1, 10_000_000))
@click.option("--seed", default=42, show_default=True, type=int, help="Same seed, same shop.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@click.option("--as-of", "as_of", metavar="DATE",
              help="Build the shop as it stood on DATE (YYYY-MM-DD, not in the future; default today). "
                   "An earlier date gives a shop whose terms have not been enforced since: a first-run backlog.")
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



"""The command group, its global options, and the one place where errors become messages and
exit codes (every command body runs inside :func:`_guard`); helpers the commands share."""

from __future__ import annotations

import functools
import gc
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from retention import __version__
from retention.errors import EXIT_FAILED, RetentionError, UsageError

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

        model = config.load(self.policy_path)
        _startup_done()
        return model

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


# Start-up and the cyclic garbage collector. Importing what a run needs (SQLAlchemy, pydantic
# building the policy model, structlog, ...) creates some 90,000 objects that live until the
# process ends; the collector kept walking them, during the imports and again at every later
# full collection and at exit: a tenth to a fifth of a run with nothing due. So while this
# process is the command (main() reading sys.argv), the collector is off from the start until
# the command's modules are imported and the policy file is loaded; then everything alive is
# frozen (gc.freeze: never walked again) and collection resumes for the real work. A command
# whose body does not start by loading the policy file gets the collector back before its body.
_startup_pending = False


def _startup_done() -> None:
    """The end of start-up: freeze what start-up made and turn the collector back on."""
    global _startup_pending
    if _startup_pending:
        _startup_pending = False
        gc.freeze()
        gc.enable()


def _until_load(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a command whose body imports its modules and then loads the policy file before any
    other work: start-up (above) lasts until :meth:`_State.load` returns. Put it under ``@_guard``."""
    fn._startup_until_load = True  # type: ignore[attr-defined]
    return fn


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
    except BrokenPipeError:
        # The reader went away (`retention validate | head -1`): click's main() silences the
        # streams and exits 1, as a closed pipe is not an internal error.
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
        if not getattr(fn, "_startup_until_load", False):
            _startup_done()
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

    def main(self, args: Any = None, *rest: Any, **extra: Any) -> Any:
        global _startup_pending
        # Only for the process that is the command: a caller passing its own args (tests, a
        # script) keeps its collector as it was (see _startup_done).
        if args is None and gc.isenabled():
            gc.disable()
            _startup_pending = True
        try:
            return super().main(args, *rest, **extra)
        finally:
            _startup_done()

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


def entry() -> None:  # pragma: no cover - console-script shim
    main(prog_name="retention")

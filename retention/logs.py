"""Operational logging: structlog to stderr, readable on a terminal, JSON lines otherwise.

Results belong on stdout (CONTRACT.md section 1), so nothing here ever writes there: a
cron job that pipes `run --format json` into another tool must get clean JSON.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from sqlalchemy.engine import make_url

__all__ = ["configure_logging", "get_logger", "redact_url"]

FORMATS = ("console", "json")

# Marks the stdlib handler we install, so that configuring twice (tests, repeated CLI
# invocations in one process) replaces it instead of printing every line twice.
_HANDLER_MARK = "_retention_handler"

# Keys that go first in a JSON line, so that `jq`-less humans reading a log file see when,
# how bad and what before the details.
_LEADING_KEYS = ("timestamp", "level", "logger", "event", "run")


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the moment of writing.

    Test runners and click's CliRunner swap (and later close) `sys.stderr`; a logger bound
    to the object that was current at configuration time would write into a closed buffer.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that knows the name it was asked for, like a stdlib logger does."""

    def __init__(self, file: Any, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    def __init__(self, file: Any) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, str(args[0]) if args else "")


def _add_logger_name(logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Same key as structlog.stdlib.add_logger_name, so our lines and library lines match.
    name = getattr(logger, "name", "")
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        # No isatty, or a closed stream: not a terminal a person is watching.
        return False


def _leading_keys_first(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _summarise_exception(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Without --debug no traceback may reach the user (CONTRACT.md section 1); the type and
    # message are what an operator needs to find the problem.
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        if isinstance(exc, BaseException):
            # First line only: database errors carry the SQL, its parameters and DETAIL
            # lines (`Key (email)=(...) already exists`) below it, which may be personal data.
            first_line = (str(exc).strip().splitlines() or [""])[0]
            event_dict.setdefault("error", f"{type(exc).__name__}: {first_line}")
    return event_dict


# sd-daemon(3) priorities. journald reads a `<N>` prefix on each line of a service's
# stderr as that line's priority, so `journalctl -p err` finds a failed night.
_SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2}


def _stream_is_journal(out: Any, env: dict[str, str] | None = None) -> bool:
    """Whether `out` is the journald stream systemd connected (JOURNAL_STREAM=device:inode)."""
    value = (env if env is not None else os.environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        target = out if hasattr(out, "fileno") and not isinstance(out, _CurrentStderr) else sys.stderr
        st = os.fstat(target.fileno())
        return bool(device and inode) and (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (AttributeError, OSError, ValueError):
        # No file descriptor (a StringIO, a test runner's buffer): not the journal.
        return False


class _PriorityPrefix:
    """Wraps the final renderer: `<3>{...}` for an error line, as journald expects."""

    def __init__(self, renderer: Any) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        level = str(event_dict.get("level", method)).lower()
        line = self._renderer(logger, method, event_dict)
        return f"<{_SYSLOG_PRIORITY.get(level, 6)}>{line}"


def configure_logging(fmt: str | None = None, stream: TextIO | None = None, debug: bool = False,
                      quiet: bool = False, journald: bool | None = None) -> None:
    """Send operational logs to `stream` (default: the current stderr).

    `fmt` is "console", "json", or None to choose by whether `stream` is a terminal.
    `debug` lowers the level to DEBUG and keeps tracebacks; `quiet` raises it to ERROR.
    `journald` prefixes each line with its syslog priority; None: when JOURNAL_STREAM says
    stderr is the journal.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out: Any = stream if stream is not None else _CurrentStderr()
    tty = _isatty(out)
    if fmt is None:
        fmt = "console" if tty else "json"

    level = logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO
    if journald is None:
        journald = _stream_is_journal(out)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
    ]
    own = [_add_logger_name, *shared]
    renderer: Any
    if fmt == "json":
        tail: list[Any] = [structlog.processors.format_exc_info] if debug else [_summarise_exception]
        renderer = structlog.processors.JSONRenderer()
        rest = [*tail, _leading_keys_first, renderer]
    else:
        tail = [] if debug else [_summarise_exception]
        renderer = structlog.dev.ConsoleRenderer(colors=tty and not journald)
        rest = [*tail, renderer]
    if journald:
        rest[-1] = _PriorityPrefix(rest[-1])

    structlog.configure(
        processors=[*own, *rest],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_NamedWriteLoggerFactory(out),
        # Not cached: loggers are created at import time, before the CLI has parsed
        # --log-format, and must follow a later configure_logging().
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(out, shared, rest, debug, quiet)


def _route_stdlib_logging(out: Any, shared: list[Any], rest: list[Any], debug: bool, quiet: bool) -> None:
    # Libraries (SQLAlchemy, Faker, ...) log through the standard library. Their warnings
    # must come out in the same format, or one plain line breaks a JSON-lines log shipper.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rest],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # Library INFO chatter (every SQL statement, every connection) is noise at 3 a.m.;
    # --debug is when someone wants it.
    root.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING)


def get_logger(name: str) -> Any:
    """A structlog logger whose lines carry `logger=name`.

    Lazy: it follows whatever configure_logging() set up at the time of each call.
    """
    return structlog.get_logger(name)


# A password in the userinfo part (`user:secret@host`, after any `scheme://`).
# Greedy up to the last "@" of the token, because an unencoded "@" in a password is the
# case a strict parser gets wrong, and over-redacting is harmless where leaking is not.
_USERINFO_PASSWORD = re.compile(r"(^|\s)([^\s:/@]*):[^\s]*@")
# `password=...` in a query string or a libpq keyword string.
_PASSWORD_PARAM = re.compile(r"(?i)\b(password|passwd|pwd)=[^\s&;]*")


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, for logs and error messages."""
    text = str(url)
    if text.count("@") <= 1:
        try:
            parsed = make_url(text)
        except Exception:
            # Not a URL SQLAlchemy understands: the regexes below still find the usual forms.
            pass
        else:
            return _PASSWORD_PARAM.sub(r"\1=***", parsed.render_as_string(hide_password=True))
    # Several "@": the split between password and host is ambiguous, so hide all of the
    # userinfo rather than trust a parse.
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    rest = _USERINFO_PASSWORD.sub(r"\1\2:***@", rest)
    return _PASSWORD_PARAM.sub(r"\1=***", f"{scheme}{sep}{rest}")

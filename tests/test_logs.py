from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from retention.logs import configure_logging, get_logger, redact_url


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # configure_logging() changes process-wide state; other tests must not inherit a
    # stream that belongs to this one.
    yield
    configure_logging("json")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _json_lines(text: str) -> list[dict]:
    lines = text.splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


def test_json_mode_writes_one_object_per_line() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    log = get_logger("retention.test")
    log.info("policy.start", policy="accounts", due=3)
    log.warning("lock.busy")

    records = _json_lines(stream.getvalue())
    assert [r["event"] for r in records] == ["policy.start", "lock.busy"]
    first = records[0]
    assert first["level"] == "info"
    assert first["logger"] == "retention.test"
    assert first["policy"] == "accounts" and first["due"] == 3
    # ISO 8601 in UTC.
    assert first["timestamp"].endswith("Z") or first["timestamp"].endswith("+00:00")
    assert first["timestamp"][:4].isdigit() and "T" in first["timestamp"]


def test_default_format_follows_the_stream() -> None:
    piped, terminal = io.StringIO(), _Terminal()
    configure_logging(stream=piped)
    get_logger("t").info("hello")
    assert _json_lines(piped.getvalue())[0]["event"] == "hello"

    configure_logging(stream=terminal)
    get_logger("t").info("hello")
    out = terminal.getvalue()
    assert "hello" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.splitlines()[0])


def test_console_mode_is_not_json() -> None:
    stream = io.StringIO()
    configure_logging("console", stream=stream)
    get_logger("t").info("run.start", policies=2)
    out = stream.getvalue()
    assert "run.start" in out and "policies" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.splitlines()[0])


def test_logs_never_reach_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    get_logger("t").info("to.stderr")
    logging.getLogger("sqlalchemy.pool").warning("library warning")
    captured = capsys.readouterr()
    assert captured.out == ""
    events = [r["event"] for r in _json_lines(captured.err)]
    assert events == ["to.stderr", "library warning"]


def test_debug_level_and_no_traceback_without_debug() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    log = get_logger("t")
    log.debug("hidden")
    try:
        raise RuntimeError("connection lost")
    except RuntimeError:
        log.exception("batch.failed")
    records = _json_lines(stream.getvalue())
    assert [r["event"] for r in records] == ["batch.failed"]
    assert records[0]["error"] == "RuntimeError: connection lost"
    assert "Traceback" not in stream.getvalue()

    stream = io.StringIO()
    configure_logging("json", stream=stream, debug=True)
    log.debug("shown")
    try:
        raise RuntimeError("connection lost")
    except RuntimeError:
        log.exception("batch.failed")
    records = _json_lines(stream.getvalue())
    assert [r["event"] for r in records] == ["shown", "batch.failed"]
    assert "Traceback" in records[1]["exception"]


def test_error_summary_keeps_only_the_first_line() -> None:
    # Database errors put SQL parameters and DETAIL lines after the first line.
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    try:
        raise RuntimeError("duplicate key\nDETAIL: Key (email)=(jan@example.nl) already exists.")
    except RuntimeError:
        get_logger("t").exception("batch.failed")
    assert "jan@example.nl" not in stream.getvalue()
    assert _json_lines(stream.getvalue())[0]["error"] == "RuntimeError: duplicate key"


def test_reconfiguring_does_not_duplicate_library_lines() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    configure_logging("json", stream=stream)
    logging.getLogger("faker").warning("once")
    assert len(stream.getvalue().splitlines()) == 1


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="xml"):
        configure_logging("xml")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+psycopg://app:s3cr3t@db.example:5432/shop",
            "postgresql+psycopg://app:***@db.example:5432/shop",
        ),
        ("postgresql://app@db.example/shop", "postgresql://app@db.example/shop"),
        ("mysql+pymysql://root@127.0.0.1:3306/test", "mysql+pymysql://root@127.0.0.1:3306/test"),
        ("sqlite:///var/demo.db", "sqlite:///var/demo.db"),
        ("sqlite:////srv/shop/shop.db", "sqlite:////srv/shop/shop.db"),
        ("not a url", "not a url"),
        ("", ""),
        (
            "postgresql://h/shop?password=s3cr3t&sslmode=require",
            "postgresql://h/shop?password=***&sslmode=require",
        ),
        ("host=db user=app password=s3cr3t dbname=shop", "host=db user=app password=*** dbname=shop"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:s3cr3t@db.example:5432/shop",
        "postgresql://app:s3cr3t%40x@db.example/shop",
        "mysql+pymysql://root:s3cr3t@127.0.0.1/test",
        # An unencoded "@" makes the split ambiguous; no part of the password may leak.
        "postgresql://app:s3c@r3t@db.example/shop",
        "postgresql://app:s3c/r3t@db.example/shop",
        # Not parsable as a URL at all.
        "app:s3cr3t@db.example",
        "connecting to postgresql ://app:s3cr3t@db failed",
    ],
)
def test_redact_url_never_returns_the_password(url: str) -> None:
    redacted = redact_url(url)
    for fragment in ("s3cr3t", "s3c", "r3t"):
        assert fragment not in redacted
    assert "***" in redacted

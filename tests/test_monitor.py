"""Monitor pings: start and success (or fail) reach a healthchecks-style endpoint; outages don't fail runs.

Every real run's end reaches the monitor (issue 14, item 7): ``URL/<exit code>`` for 1-5, the
invalid file and the held lock included, paired with its start through ``?rid=<uuid>``; a few
retries inside a fixed budget, so that a dead monitor never holds up the run.
"""

from __future__ import annotations

import fcntl
import http.server
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from helpers import SESSIONS_POLICY, create_sessions, ids, invoke, run_cli, write_policies

from retention.engine import monitor, runner
from retention.errors import EXIT_BLOCKED, EXIT_FAILED, EXIT_INVALID, EXIT_LOCKED, EXIT_OK

if TYPE_CHECKING:
    from conftest import TestDatabase


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", 0))
            self.rfile.read(length)
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/ping/abc", seen
    server.shutdown()


def test_ping_kinds_map_to_healthchecks_paths(endpoint: tuple[str, list[str]]) -> None:
    url, seen = endpoint
    assert monitor.ping(url, "start") and monitor.ping(url, "success") and monitor.ping(url, "fail")
    assert seen == ["/ping/abc/start", "/ping/abc", "/ping/abc/fail"]


def test_no_url_sends_nothing_and_unreachable_monitor_does_not_raise() -> None:
    assert monitor.ping("", "start") is False
    assert monitor.ping(None, "start") is False
    assert monitor.ping("http://127.0.0.1:9/nothing-listens", "fail") is False


# -- every real run's end reaches the monitor (issue 14, item 7) ----------------------------------


def _with_monitor(path: Path, url: str) -> Path:
    path.write_text(path.read_text() + f"monitor:\n  url: {url}\n")
    return path


def _rid(path: str) -> str:
    """The rid of a ping's path; it must be a UUID (healthchecks refuses anything else)."""
    rid = path.split("rid=", 1)[1]
    assert str(uuid.UUID(rid)) == rid
    return rid


@pytest.fixture
def shop(sqlite_db: TestDatabase, tmp_path: Path, endpoint: tuple[str, list[str]]) -> tuple[TestDatabase, Path,
                                                                                              list[str]]:
    url, seen = endpoint
    create_sessions(sqlite_db.engine)
    policies = write_policies(tmp_path / "policies.yaml", sqlite_db.url, [SESSIONS_POLICY])
    return sqlite_db, _with_monitor(policies, url), seen


def test_a_run_pings_start_and_success_paired_by_one_rid(shop: tuple[TestDatabase, Path, list[str]]) -> None:
    db, policies, seen = shop
    assert run_cli(policies).exit_code == EXIT_OK
    assert [p.split("?")[0] for p in seen] == ["/ping/abc/start", "/ping/abc"]
    assert _rid(seen[0]) == _rid(seen[1])
    assert run_cli(policies).exit_code == EXIT_OK
    assert _rid(seen[2]) == _rid(seen[3]) != _rid(seen[0]), "each run has its own rid"


def test_a_blocked_policy_pings_its_exit_code(shop: tuple[TestDatabase, Path, list[str]], tmp_path: Path) -> None:
    db, _, seen = shop
    policies = write_policies(tmp_path / "blocked.yaml", db.url, [{**SESSIONS_POLICY, "max_fraction": 0.1}])
    _with_monitor(policies, f"http://127.0.0.1:{_port(seen, shop)}/ping/abc")
    assert run_cli(policies).exit_code == EXIT_BLOCKED
    assert [p.split("?")[0] for p in seen] == ["/ping/abc/start", "/ping/abc/3"]
    assert _rid(seen[0]) == _rid(seen[1])


def _port(seen: list[str], shop: tuple[TestDatabase, Path, list[str]]) -> int:
    text = shop[1].read_text()
    return int(text.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])


@pytest.mark.parametrize(("mistake", "fragment"), [
    ("    retain: 24 monts\n", "unknown unit"),
    ("    colour: blue\n", "unknown key"),
    ("    retain: 9999 years\n", "longer than 1000 years"),
])
def test_an_invalid_file_pings_2_with_the_url_read_from_the_raw_yaml(
        mistake: str, fragment: str, shop: tuple[TestDatabase, Path, list[str]]) -> None:
    db, policies, seen = shop
    text = policies.read_text().replace("  action: delete\n", "  action: delete\n" + mistake.removeprefix("  "), 1)
    policies.write_text(text)
    result = run_cli(policies)
    assert result.exit_code == EXIT_INVALID and fragment in result.stderr, result
    assert seen == ["/ping/abc/2"]
    assert ids(db.engine, "SELECT id FROM sessions") == {1, 2}


def test_the_raw_url_is_expanded_from_the_environment(shop: tuple[TestDatabase, Path, list[str]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    db, policies, seen = shop
    url = policies.read_text().split("url: http", 1)[1].strip()
    monkeypatch.setenv("TEST_MONITOR_URL", "http" + url)
    policies.write_text(policies.read_text().replace("http" + url, "${TEST_MONITOR_URL}")
                        .replace("version: 1", "version: 2"))
    assert run_cli(policies).exit_code == EXIT_INVALID
    assert seen == ["/ping/abc/2"]


def test_a_file_that_is_no_yaml_pings_nothing_and_still_exits_2(shop: tuple[TestDatabase, Path, list[str]]) -> None:
    db, policies, seen = shop
    policies.write_text(policies.read_text() + "policies: [unclosed\n")
    assert run_cli(policies).exit_code == EXIT_INVALID
    assert seen == []


def test_a_missing_table_and_a_bad_as_of_ping_2(shop: tuple[TestDatabase, Path, list[str]]) -> None:
    db, policies, seen = shop
    assert run_cli(policies, as_of="2999-01-01").exit_code == EXIT_INVALID
    with db.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE sessions"))
    assert run_cli(policies).exit_code == EXIT_INVALID
    assert seen == ["/ping/abc/2", "/ping/abc/2"]


def test_a_held_lock_pings_4(shop: tuple[TestDatabase, Path, list[str]], tmp_path: Path) -> None:
    db, policies, seen = shop
    lock = tmp_path / "audit" / "retention.jsonl.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_cli(policies).exit_code == EXIT_LOCKED
    finally:
        os.close(fd)
    assert seen == ["/ping/abc/4"]


def test_an_error_after_the_start_ends_the_same_run(shop: tuple[TestDatabase, Path, list[str]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    db, policies, seen = shop

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("planning broke")

    monkeypatch.setattr(runner, "run_order", broken)
    result = run_cli(policies)
    assert result.exit_code == EXIT_FAILED and "internal error: RuntimeError: planning broke" in result.stderr
    assert [p.split("?")[0] for p in seen] == ["/ping/abc/start", "/ping/abc/1"]
    assert _rid(seen[0]) == _rid(seen[1])


def test_a_dry_run_pings_nothing(shop: tuple[TestDatabase, Path, list[str]]) -> None:
    db, policies, seen = shop
    assert run_cli(policies, "--dry-run").exit_code == EXIT_OK
    policies.write_text(policies.read_text().replace("version: 1", "version: 2"))
    assert run_cli(policies, "--dry-run").exit_code == EXIT_INVALID
    assert invoke(["--policies", str(policies), "validate"]).exit_code == EXIT_INVALID
    assert seen == []


@pytest.mark.parametrize(("code", "path"), [(1, "/p/1"), (2, "/p/2"), (3, "/p/3"), (4, "/p/4"), (5, "/p/5"),
                                            (0, "/p"), (None, "/p/fail")])
def test_fail_pings_carry_the_exit_code(code: int | None, path: str) -> None:
    kind = "success" if code == 0 else "fail"
    assert monitor.ping_url("https://hc.example/p/", kind, code) == f"https://hc.example{path}"
    assert monitor.ping_url("https://hc.example/p?x=1", kind, code, "r") == f"https://hc.example{path}?x=1&rid=r"


@pytest.fixture
def flaky() -> Iterator[tuple[str, list[int]]]:
    """Answers 500 twice, then 200; or 404 for /gone."""
    answers: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            code = 404 if self.path.startswith("/gone") else (500 if len(answers) < 2 else 200)
            answers.append(code)
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", answers
    server.shutdown()


def test_a_failing_monitor_is_asked_again_a_few_times(flaky: tuple[str, list[int]]) -> None:
    url, answers = flaky
    assert monitor.ping(url + "/p", "start") is True
    assert answers == [500, 500, 200]


def test_a_monitor_that_refuses_is_not_asked_again(flaky: tuple[str, list[int]]) -> None:
    url, answers = flaky
    assert monitor.ping(url + "/gone", "fail", exit_code=2) is False
    assert answers == [404]


def test_a_stalled_monitor_costs_a_bounded_time_and_the_run_still_succeeds(
        sqlite_db: TestDatabase, tmp_path: Path) -> None:
    """A monitor that accepts and never answers: each ping gives up within its budget (5 s a run)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/ping/abc"
        t0 = time.monotonic()
        assert monitor.ping(url, "start") is False
        assert time.monotonic() - t0 < monitor.BUDGET_S + 0.5
        create_sessions(sqlite_db.engine)
        policies = _with_monitor(write_policies(tmp_path / "policies.yaml", sqlite_db.url, [SESSIONS_POLICY]), url)
        t0 = time.monotonic()
        assert run_cli(policies).exit_code == EXIT_OK
        assert time.monotonic() - t0 < 2 * monitor.BUDGET_S + 3
        assert ids(sqlite_db.engine, "SELECT id FROM sessions") == {2}
    finally:
        listener.close()

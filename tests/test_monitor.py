"""Monitor pings: start and success (or fail) reach a healthchecks-style endpoint; outages don't fail runs."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from retention.engine import monitor


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

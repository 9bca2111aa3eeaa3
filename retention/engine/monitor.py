"""Healthchecks-style pings: ``URL/start`` when a run begins, ``URL`` on success, ``URL/<exit code>``.

A nightly job that silently stops running is the failure nobody sees; a dead-man's-switch
service notices the missing ping. So every real run that ends with a non-zero exit code pings
``URL/<code>`` (healthchecks reads a non-zero code as a failure and shows it), the invalid
file (2) and the held lock (4) included, and a start is paired with its end by a run id
(``?rid=<uuid>``) so the monitor can time the run and tell overlapping runs apart.

A ping must never fail or hold up the run: each one is tried a few times with a short
timeout inside a fixed budget (:data:`BUDGET_S`), and its errors are only logged.
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit, urlunsplit

from retention.logs import get_logger, redact_url

log = get_logger("retention.monitor")

ATTEMPTS = 3
TIMEOUT_S = 1.5  # one attempt
BUDGET_S = 2.5  # all attempts of one ping, back-offs included: a run (start + end) spends at most 5 s
_BACKOFF_S = (0.25, 0.5)
_RID_NAMESPACE = uuid.UUID("8a4f3d2e-6b1c-4e57-9d0a-2f6c1b7e9a31")

# Base URL -> rid of a start ping not yet followed by its end, so that an error escaping a run
# after its start (reported by the CLI) still ends the same run on the monitor.
_open_runs: dict[str, str] = {}


def run_rid(run_id: str) -> str:
    """The UUID healthchecks wants as ``rid``, the same for every ping of one run."""
    return str(uuid.uuid5(_RID_NAMESPACE, run_id))


def ping_url(base: str, kind: str, exit_code: int | None = None, rid: str | None = None) -> str:
    """``start`` → ``URL/start``; ``success`` → ``URL``; ``fail`` → ``URL/<code>`` (``URL/fail``
    without a code); ``rid`` as a query parameter, after any the URL already has."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    if kind == "start":
        path += "/start"
    elif kind == "fail":
        path += f"/{exit_code}" if exit_code else "/fail"
    elif kind != "success":
        raise ValueError(f"unknown ping kind {kind!r}")
    query = parts.query
    if rid:
        query = f"{query}&rid={rid}" if query else f"rid={rid}"
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


def ping(base: str | None, kind: str, body: str = "", *, rid: str | None = None,
         exit_code: int | None = None) -> bool:
    """Send one ping; True when it was answered. No URL configured: nothing happens.

    ``kind`` is ``start``, ``success`` or ``fail`` (``success`` with a non-zero ``exit_code`` is
    sent as a failure). An end ping without a ``rid`` takes the one of this URL's open start.
    """
    if not base:
        return False
    if kind == "success" and exit_code:
        kind = "fail"
    if kind == "start":
        if rid:
            _open_runs[base] = rid
    else:
        rid = rid or _open_runs.get(base)
        _open_runs.pop(base, None)
    url = ping_url(base, kind, exit_code, rid)
    import urllib.error
    import urllib.request  # only when a monitor is configured: it is not free at start-up

    deadline = time.monotonic() + BUDGET_S
    error = "no attempt"
    for attempt in range(ATTEMPTS):
        left = deadline - time.monotonic()
        if left <= 0.05:
            break
        try:
            request = urllib.request.Request(url, data=body.encode()[:10_000], method="POST")
            with urllib.request.urlopen(request, timeout=min(TIMEOUT_S, left)) as response:  # noqa: S310
                response.read(1024)
            return True
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
            if exc.code < 500:
                break  # the monitor understood and refused (wrong URL, rate limit): asking again won't help
        except Exception as exc:  # a monitor outage must not fail the run
            error = type(exc).__name__
        if attempt < len(_BACKOFF_S):
            time.sleep(max(0.0, min(_BACKOFF_S[attempt], deadline - time.monotonic() - 0.05)))
    log.warning("monitor ping failed", url=redact_url(url), kind=kind, error=error)
    return False

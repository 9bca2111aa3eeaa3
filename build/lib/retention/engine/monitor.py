"""Healthchecks-style pings: ``URL/start`` when a run begins, ``URL`` on success, ``URL/fail``.

A nightly job that silently stops running is the failure nobody sees; a dead-man's-switch
service notices the missing ping. A ping must never fail the run: errors are logged only.
"""

from __future__ import annotations

from retention.logs import get_logger, redact_url

log = get_logger("retention.monitor")
TIMEOUT_S = 10


def ping_url(base: str, kind: str) -> str:
    base = base.rstrip("/")
    return {"start": f"{base}/start", "success": base, "fail": f"{base}/fail"}[kind]


def ping(base: str | None, kind: str, body: str = "") -> bool:
    """Send one ping; True when it was answered. No URL configured: nothing happens."""
    if not base:
        return False
    import urllib.request  # only when a monitor is configured: it is not free at start-up

    url = ping_url(base, kind)
    try:
        request = urllib.request.Request(url, data=body.encode()[:10_000], method="POST")
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - URL is configured
            response.read(1024)
        return True
    except Exception as exc:  # a monitor outage must not fail the run
        log.warning("monitor ping failed", url=redact_url(url), kind=kind, error=type(exc).__name__)
        return False

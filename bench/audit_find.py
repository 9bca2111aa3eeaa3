"""`retention audit find` (and `audit verify`, for scale) on a generated audit log of ~1M lines.

    .venv/bin/python bench/audit_find.py --lines 1000000 --keys-per-batch 100

The log is a history of nightly runs (run.start, policy start/end, batch intents with their
keys and commits, purge, run.end), written with the package's own canonical bytes and hashes
so that `audit verify` passes on it. Each command runs in its own process under GNU time
(`/usr/bin/time -v`) for its peak RSS; without GNU time the peak is not reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from retention.audit.log import GENESIS, canonical

ROOT = Path(__file__).resolve().parent.parent
RETENTION = ROOT / ".venv" / "bin" / "retention"
POLICIES = ("accounts", "invoices", "correspondence")


def generate(path: Path, lines: int, keys_per_batch: int, batches_per_night: int) -> dict[str, int]:
    """Write the log; return the key of a batch in the middle (what find looks for)."""
    seq, prev, key, written = 0, GENESIS, 1, 0
    middle: dict[str, int] = {}
    with path.open("wb") as f:
        night = 0
        while written < lines:
            run = f"2020{night:06d}T020000Z-bench"
            ts = f"2026-01-01T02:00:00.{night % 1_000_000:06d}+00:00"
            events: list[dict] = [{"event": "run.start", "dry_run": False, "chain": "sha256", "policies": [
                {"name": p, "retain": "24 months", "align": "none", "cutoff": f"2024-01-01T03:00:00+01:00 #{night}",
                 "basis": "privacy statement"} for p in POLICIES]}]
            for b in range(batches_per_night):
                policy = POLICIES[b % len(POLICIES)]
                keys = list(range(key, key + keys_per_batch))
                key += keys_per_batch
                batch = night * batches_per_night + b
                events.append({"event": "batch", "state": "intent", "policy": policy, "database": "shop",
                               "table": policy, "action": "delete", "batch": batch, "key_column": "id",
                               "keys": keys, "columns": [], "count": len(keys), "cascaded": {"children": 3}})
                events.append({"event": "batch.committed", "policy": policy, "batch": batch, "count": len(keys)})
            for p in POLICIES:
                events.append({"event": "policy.end", "policy": p, "due": 1, "held": 0, "deferred": 0,
                               "applied": 1, "deleted": 1, "anonymised": 0, "status": "ok", "duration_ms": 5})
            events.append({"event": "run.end", "status": "ok", "exit_code": 0, "duration_ms": 100})
            out = []
            for e in events:
                seq += 1
                body = {**e, "seq": seq, "ts": ts, "run": run, "prev": prev}
                prev = hashlib.sha256(canonical(body)).hexdigest()
                out.append(canonical({**body, "hash": prev}) + b"\n")
            f.write(b"".join(out))
            written += len(events)
            if not middle and written >= lines // 2:
                middle = {"key": key - keys_per_batch // 2, "policy_index": (batches_per_night - 1) % len(POLICIES)}
            night += 1
    middle["lines"] = written
    return middle


def measure(argv: list[str]) -> dict[str, float | int | None | str]:
    gnu_time = shutil.which("time", path="/usr/bin")
    cmd = [gnu_time, "-v", *argv] if gnu_time else argv
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"seconds": round(seconds, 2), "rc": proc.returncode,
            "maxrss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,
            "stdout_head": proc.stdout[:300]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--keys-per-batch", type=int, default=100)
    parser.add_argument("--batches-per-night", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/retention-bench-find"))
    parser.add_argument("--keep", action="store_true", help="Keep the generated log.")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = args.workdir / "audit.jsonl"

    start = time.perf_counter()
    target = generate(log, args.lines, args.keys_per_batch, args.batches_per_night)
    results: dict[str, object] = {
        "lines": target["lines"], "size_mb": round(log.stat().st_size / 2**20, 1),
        "keys_per_batch": args.keys_per_batch, "generate_s": round(time.perf_counter() - start, 1),
    }
    policy = POLICIES[target["policy_index"]]
    base = [str(RETENTION), "--log-format", "json", "--policies", str(args.workdir / "none.yaml"), "audit"]
    results["find"] = measure([*base, "find", "--log", str(log), "--policy", policy, "--key", str(target["key"])])
    results["find_absent_key"] = measure([*base, "find", "--log", str(log), "--policy", policy, "--key", "-1"])
    results["verify"] = measure([*base, "verify", "--log", str(log)])
    print(json.dumps(results, indent=2))
    if not args.keep:
        log.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())

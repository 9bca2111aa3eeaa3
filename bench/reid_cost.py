"""What the re-identification check costs, against the run it guards.

Builds the demo shop with a first run's backlog (``--as-of`` two years before the run), copies
it to PostgreSQL, and runs two anonymising policies from a fresh copy each time:

- ``shop``: the accounts policy of the shipped file (delete, ``on_referenced: anonymise``),
  with the invoices and correspondence policies before it: the check follows the foreign keys
  of invoices, orders and tickets (``personal`` lists);
- ``anon``: ``action: anonymise`` over every due account (constants and generalisations).

Both say ``reidentification: warn`` so that the run goes ahead and its time can be compared.
The check's own time is what the run reports (``reidentification.duration_ms``, measured
around the two statements); the run's is the process's wall time.

    .venv/bin/python bench/reid_cost.py --accounts 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import copy_from_sqlite, store_extra  # noqa: E402

from retention.demo import build_demo  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
AS_OF = "2026-11-24T03:00:00"

HEAD = """version: 1
timezone: Europe/Amsterdam
databases:
  shop:
    url: {url}
    purge: none
audit:
  path: {audit}
personal:
  invoices: [customer_name, billing_street, billing_postcode, billing_city]
  orders: [shipping_street, shipping_postcode, shipping_city]
  tickets: [subject]
policies:
"""

ACCOUNT_FIELDS = """    fields: {first_name: redact, last_name: redact, email: redact, phone: null, street: null,
             postcode: generalise.postcode, city: null, birth_date: generalise.year,
             created_at: generalise.year, deregistered_at: generalise.year}
    keep: {legal_hold: false on every anonymised account}
    reidentification: warn
    max_fraction: 1.0
"""

POLICIES = {
    "shop": """  - name: invoices
    table: invoices
    after: issued_at
    retain: 7 years
    align: end_of_year
    action: delete
    cascade: [invoice_lines]
    max_fraction: 1.0
  - name: correspondence
    table: tickets
    after: closed_at
    retain: 2 years
    where: {status: closed}
    exclude: {legal_hold: true}
    action: delete
    cascade: [ticket_messages]
    max_fraction: 1.0
  - name: accounts
    table: accounts
    after: deregistered_at
    retain: 24 months
    action: delete
    cascade: [orders]
    on_referenced: anonymise
    exclude: {legal_hold: true}
""" + ACCOUNT_FIELDS,
    "anon": """  - name: accounts
    table: accounts
    after: deregistered_at
    retain: 24 months
    action: anonymise
    exclude: {legal_hold: true}
""" + ACCOUNT_FIELDS,
}


def run(policy: Path, cwd: Path, *argv: str) -> tuple[float, dict[str, Any]]:
    # --force: a first run's backlog is what is measured, and the guards block it (exit 3) without.
    cmd = [str(ROOT / ".venv" / "bin" / "retention"), "--policies", str(policy), "--log-format", "json", "run",
           "--force", "--as-of", AS_OF, "--format", "json", *argv]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {out.returncode}\n{out.stderr[-2000:]}")
    return took, json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rt_reid"))
    ap.add_argument("--results", type=Path, default=None,
                    help="also store the figures in this results.json (bench/run.py's) and rewrite --report")
    ap.add_argument("--report", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = ap.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"src-{args.accounts}.db"
    if not src.exists():
        build_demo(src, accounts=args.accounts, seed=42, today=dt.date(2024, 11, 24))
    pg_src = f"rt_reid_src_{args.accounts}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    if "postgresql" in args.databases:
        with admin.connect() as conn:
            if not conn.exec_driver_sql(f"SELECT 1 FROM pg_database WHERE datname = '{pg_src}'").scalar():
                conn.exec_driver_sql(f"CREATE DATABASE {pg_src}")
                engine = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_src}")
                copy_from_sqlite(src, engine)
                engine.dispose()
    rows = []
    for db in args.databases:
        for kind, body in POLICIES.items():
            samples: list[tuple[float, float, float, dict[str, Any]]] = []
            for _ in range(args.repeat):
                if db == "sqlite":
                    target = work / "work.db"
                    shutil.copyfile(src, target)
                    url = f"sqlite:///{target}"
                else:
                    with admin.connect() as conn:
                        conn.exec_driver_sql("DROP DATABASE IF EXISTS rt_reid_work")
                        conn.exec_driver_sql(f"CREATE DATABASE rt_reid_work TEMPLATE {pg_src}")
                    url = "postgresql+psycopg://postgres@127.0.0.1:5432/rt_reid_work"
                audit = work / "audit.jsonl"
                audit.unlink(missing_ok=True)
                policy = work / "policies.yaml"
                policy.write_text(HEAD.format(url=url, audit=audit) + body, encoding="utf-8")
                preview_s, _ = run(policy, work, "--dry-run")
                run_s, data = run(policy, work)
                accounts = next(p for p in data["policies"] if p["name"] == "accounts")
                reid = accounts["reidentification"]
                samples.append((run_s, preview_s, reid["duration_ms"] / 1000, reid))
            run_s = statistics.median(s[0] for s in samples)
            preview_s = statistics.median(s[1] for s in samples)
            check_s = statistics.median(s[2] for s in samples)
            reid = samples[-1][3]
            rows.append((db, kind, run_s, preview_s, check_s, reid))
            print(f"{db:10} {kind:5} run {run_s:6.2f} s  preview {preview_s:6.2f} s  check {check_s:6.3f} s "
                  f"({check_s / run_s:.1%} of the run, {check_s / preview_s:.1%} of the preview)  "
                  f"rows {reid['rows']} k {reid['k']} below_k {reid['below_k']} linkable {reid['linkable']}",
                  flush=True)
    admin.dispose()
    if args.results is not None:
        store_extra(args.results, args.report, "reid_cost", {
            "accounts": args.accounts, "repeat": args.repeat,
            "rows": [{"database": db, "policy": kind, "run_s": run_s, "preview_s": preview_s, "check_s": check_s,
                      "rows": reid["rows"], "k": reid["k"], "below_k": reid["below_k"], "linkable": reid["linkable"]}
                     for db, kind, run_s, preview_s, check_s, reid in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

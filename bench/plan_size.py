"""What a plan file costs: time to make it, its size (plain and gzip'd), time to read and check it,
and what applying it (`run --plan`) costs against a plain `run --force` of the same backlog.

The demo shop (seed 42) built up to 2024-11-24 and planned as of 2026-11-24T03:00: a first
run's backlog, every shipped policy. SQLite only (a file copy per measurement).

    .venv/bin/python bench/plan_size.py                       # 100,000 accounts (docs/approval.md)
    .venv/bin/python bench/plan_size.py --accounts 10000 --no-apply

Prints a Markdown table on stdout; progress goes to stderr. The figures scale with the number
of due keys (see docs/approval.md); at 1M accounts reuse bench/run.py's demo:

    .venv/bin/python bench/plan_size.py --accounts 1000000 --source /tmp/rtbench/sqlite-1000000.db
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pendulum

from retention.approval import apply
from retention.approval import plan as planfile
from retention.demo import build_demo
from retention.engine import runner
from retention.logs import configure_logging
from retention.policy import loader

SHIPPED = Path(__file__).resolve().parent.parent / "policies.yaml"
BUILT = dt.date(2024, 11, 24)
AS_OF = "2026-11-24T03:00:00"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _model(work: Path, db: Path) -> object:
    os.environ["SHOP_DATABASE_URL"] = f"sqlite:///{db}"
    os.environ.pop("RETENTION_AUDIT_KEY", None)
    policy = work / "policies.yaml"
    text = SHIPPED.read_text(encoding="utf-8").replace("key_env: RETENTION_AUDIT_KEY", "key_env: null")
    policy.write_text(text, encoding="utf-8")
    return loader.load(policy)


def measure(accounts: int, do_apply: bool, source: Path | None = None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = work / "base.db"
        if source is not None:
            # The same demo bench/run.py builds (seed 42, up to 2024-11-24): no second 1M build.
            log(f"copying {source} ...")
            shutil.copyfile(source, base)
        else:
            log(f"building {accounts} accounts ...")
            build_demo(base, accounts=accounts, seed=42, today=BUILT)
        db = work / "shop.db"
        shutil.copy(base, db)
        model = _model(work, db)
        moment = pendulum.parse(AS_OF, tz=model.timezone)  # type: ignore[attr-defined]

        t0 = time.perf_counter()
        doc = apply.make(model, as_of=moment)  # type: ignore[arg-type]
        make_s = time.perf_counter() - t0
        keys = {p["name"]: {f: p["counts"][f] for f in planfile.FATES} for p in doc["policies"]}
        total = sum(sum(c.values()) for c in keys.values())
        plain, gz = work / "night.plan", work / "night.plan.gz"
        t0 = time.perf_counter()
        planfile.write(plain, doc)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        planfile.write(gz, doc)
        write_gz_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = planfile.read(gz)
        sha = planfile.content_sha256(again)
        decoded = sum(len(k) for pk in planfile.policies(again, gz) for k in pk.fates.values())
        read_s = time.perf_counter() - t0
        assert decoded == total, (decoded, total)
        rows += [
            ("accounts", f"{accounts:,}"),
            ("keys in the plan (all fates)", f"{total:,}: " + "; ".join(
                f"{n} " + ", ".join(f"{v:,} {f}" for f, v in c.items() if v) for n, c in keys.items())),
            ("make the plan (count + key walk, all policies)", f"{make_s:.2f} s"),
            ("write, plain JSON", f"{write_s:.2f} s, {plain.stat().st_size:,} bytes "
                                  f"({plain.stat().st_size / max(total, 1):.1f} bytes/key)"),
            ("write, gzip'd (.gz)", f"{write_gz_s:.2f} s, {gz.stat().st_size:,} bytes "
                                    f"({gz.stat().st_size / max(total, 1):.1f} bytes/key)"),
            ("read, hash and decode (.gz)", f"{read_s:.2f} s (SHA-256 {sha[:12]})"),
        ]
        if do_apply:
            audit = work / model.audit.path  # type: ignore[attr-defined]
            apply.approve(gz, again, [audit], None, by="bench", role=None, note=None)
            t0 = time.perf_counter()
            approved = apply.load_for_run(gz, model, audit, max_age=pendulum.duration(days=1))  # type: ignore[arg-type]
            result = runner.execute_run(model, as_of=moment, approved=approved,  # type: ignore[arg-type]
                                        policy_names=approved.policy_names)
            plan_run_s = time.perf_counter() - t0
            applied_plan = sum(o.applied + o.anonymised for o in result.policies)
            shutil.copy(base, db)
            audit.unlink()
            t0 = time.perf_counter()
            result = runner.execute_run(model, as_of=moment, force=True)  # type: ignore[arg-type]
            force_s = time.perf_counter() - t0
            applied_force = sum(o.applied + o.anonymised for o in result.policies)
            rows += [("run --plan (load, check, apply)", f"{plan_run_s:.2f} s, {applied_plan:,} rows"),
                     ("run --force, same backlog", f"{force_s:.2f} s, {applied_force:,} rows")]
        rows.append(("peak RSS of this process", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--no-apply", action="store_true", help="Only make, write and read the plan.")
    ap.add_argument("--source", type=Path, default=None,
                    help="an SQLite demo of --accounts accounts, seed 42, built up to 2024-11-24 "
                         "(bench/run.py's <workdir>/sqlite-N.db), copied instead of building one")
    ap.add_argument("--results", type=Path, default=None,
                    help="also store the table in this results.json (bench/run.py's) and rewrite --report")
    ap.add_argument("--report", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = ap.parse_args()
    configure_logging("json", quiet=True)
    rows = measure(args.accounts, not args.no_apply, args.source)
    print("| what | measured |\n| --- | --- |")
    for what, value in rows:
        print(f"| {what} | {value} |")
    if args.results is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from run import store_extra

        store_extra(args.results, args.report, "plan_size", {"accounts": args.accounts, "rows": rows})


if __name__ == "__main__":
    main()

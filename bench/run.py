#!/usr/bin/env python
"""Benchmark `retention run` against one raw SQL statement and a hand-written ORM loop.

One command (see bench/README.md):

    .venv/bin/python bench/run.py --accounts 100000 1000000 --databases sqlite postgresql mariadb --repeat 3

For every size and database: builds the demo shop once (SQLite: `retention demo`; PostgreSQL
and MariaDB: the same rows copied from that SQLite file into `rt_bench_src_<N>`), then per
repetition and per measurement starts from a fresh copy (SQLite: file copy; PostgreSQL:
CREATE DATABASE rt_bench TEMPLATE ...; MariaDB: the touched tables refilled from the source
with INSERT ... SELECT) and times:

  retention   `retention --policies F run --policy P --as-of ... --format json` (subprocess,
              end to end, audit log on, purge none); its peak RSS via wait4()
  thorough    the same delete policy with purge: thorough (the purge cost is reported apart)
  raw         the same rows in one statement per table, one transaction
  orm         a hand-written SQLAlchemy ORM loop, commit per 1,000 (only up to --orm-max-accounts)
  dry-run     `retention run --dry-run` with all the shop's policies
  verify      `retention audit verify` on the repetition's audit log

Results: bench/results.json (every sample) and bench/RESULTS.md (medians, ratios, goals).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import checks_cost  # noqa: E402
import partitions as partition_workload  # noqa: E402
import peers  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from retention.demo import TABLES, shop_metadata  # noqa: E402

DEFAULT_AS_OF = "2026-11-24T03:00:00"
SEED = 42
AUDIT_KEY_ENV = "RETENTION_AUDIT_KEY"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/?charset=utf8mb4"

# kind -> (bench policy name, tables it changes, label)
KINDS: dict[str, tuple[str, list[str], str]] = {
    "delete": ("correspondence", ["tickets", "ticket_messages"],
               "delete + cascade (correspondence: tickets + ticket_messages)"),
    "delete_invoices": ("invoices", ["invoices", "invoice_lines"],
                        "delete + cascade (invoices + invoice_lines, 7 years end_of_year)"),
    "anon_const": ("accounts_constant", ["accounts"], "constant anonymise (accounts: null/redact/generalise)"),
    "anon_fake": ("accounts_fake", ["accounts"], "fake anonymise (accounts: 3 fakes + redact)"),
}


# The bench measures a first run's backlog on purpose: every policy's first real run changes far
# more than 100 rows (the rate guard), and a preview or run of it is blocked (exit 3) without
# --force, as the tool asks of a person facing a backlog. Only the start-up's nothing-due run
# goes without it: that is the ordinary night, which no guard stops.
FORCE = ("--force",)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- policy files

POLICY_HEAD = """version: 1
timezone: Europe/Amsterdam
locale: nl_NL
databases:
  shop:
    url: {url}
    purge: {purge}
audit:
  path: {audit}
  key_env: RETENTION_AUDIT_KEY
policies:
"""

BENCH_POLICIES = """  - name: correspondence
    basis: Customer-service terms
    table: tickets
    after: closed_at
    retain: 2 years
    where: {status: closed}
    exclude: {legal_hold: true}
    action: delete
    cascade: [ticket_messages]
    max_fraction: 1.0
  - name: invoices
    basis: Fiscal retention (AWR art. 52)
    table: invoices
    after: issued_at
    retain: 7 years
    minimum: 7 years
    align: end_of_year
    action: delete
    cascade: [invoice_lines]
    max_fraction: 1.0
  - name: accounts_constant
    basis: Privacy statement
    table: accounts
    after: deregistered_at
    retain: 24 months
    action: anonymise
    exclude: {legal_hold: true}
    fields: {phone: null, street: redact, postcode: generalise.postcode, city: null, birth_date: generalise.year}
    keep: {first_name: speed only, last_name: speed only, email: speed only, created_at: speed only,
           legal_hold: speed only}
    reidentification: warn
    max_fraction: 1.0
  - name: accounts_fake
    basis: Privacy statement
    table: accounts
    after: deregistered_at
    retain: 24 months
    action: anonymise
    exclude: {legal_hold: true}
    fields: {first_name: fake.first_name, last_name: fake.last_name, email: fake.email, street: redact}
    keep: {phone: speed only, postcode: speed only, city: speed only, birth_date: speed only,
           created_at: speed only, legal_hold: speed only}
    reidentification: warn
    max_fraction: 1.0
"""

# The shipped shop policies (as in the README), with max_fraction 1.0 for backlog data.
SHOP_POLICIES = """  - name: accounts
    basis: Privacy statement
    table: accounts
    after: deregistered_at
    retain: 24 months
    action: delete
    cascade: [orders]
    on_referenced: anonymise
    exclude: {legal_hold: true}
    fields:
      first_name: fake.first_name
      last_name: fake.last_name
      email: fake.email
      phone: null
      street: redact
      postcode: generalise.postcode
      city: null
      birth_date: generalise.year
    keep: {created_at: shop statistics, legal_hold: false on every anonymised row}
    reidentification: warn
    max_fraction: 1.0
  - name: invoices
    table: invoices
    after: issued_at
    retain: 7 years
    minimum: 7 years
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
"""


def write_policy(path: Path, url: str, purge: str, audit: Path, body: str) -> Path:
    path.write_text(POLICY_HEAD.format(url=url, purge=purge, audit=audit) + body)
    return path


# --------------------------------------------------------------------------- databases


def _sidecar_ok(path: Path, want: dict[str, Any]) -> bool:
    try:
        return json.loads(path.read_text()) == want
    except (OSError, ValueError):
        return False


def ensure_sqlite_source(work: Path, accounts: int, data_day: dt.date, retention_cmd: list[str],
                         rebuild: bool) -> tuple[Path, float | None]:
    """The demo shop in an SQLite file, built once per size and data day (reused while they match)."""
    path = work / f"sqlite-{accounts}.db"
    side = path.with_suffix(".json")
    want = {"accounts": accounts, "seed": SEED, "today": data_day.isoformat()}
    if not rebuild and path.exists() and _sidecar_ok(side, want):
        return path, None
    t0 = time.perf_counter()
    subprocess.run([*retention_cmd, "demo", "--path", str(path), "--accounts", str(accounts),
                    "--seed", str(SEED), "--as-of", data_day.isoformat(), "--overwrite"],
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    side.write_text(json.dumps(want))
    return path, seconds


def _run_end_duration(stderr: str) -> float | None:
    """The run's own time (``execute_run``: connect, reflect, count, audit) from its JSON log."""
    for line in reversed(stderr.splitlines()):
        if '"run.end"' in line:
            try:
                return float(json.loads(line)["duration_s"])
            except (ValueError, KeyError):
                return None
    return None


def next_night(as_of: str) -> str:
    """The as-of moment one day later (the next nightly run)."""
    return (dt.datetime.fromisoformat(as_of) + dt.timedelta(days=1)).isoformat()


def data_day(as_of: str, backlog_years: int) -> dt.date:
    """The day the demo data ends: ``backlog_years`` before the run's as-of date (29 Feb -> 28 Feb)."""
    day = dt.date.fromisoformat(as_of[:10])
    year = day.year - backlog_years
    return day.replace(year=year, day=min(day.day, 28)) if (day.month, day.day) == (2, 29) else day.replace(year=year)


def copy_from_sqlite(sqlite_path: Path, engine: sa.Engine) -> None:
    """Create the shop schema in ``engine`` and copy every row of the SQLite demo into it."""
    md = shop_metadata()
    md.create_all(engine)
    dialect = engine.dialect.name
    src = sqlite3.connect(sqlite_path)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if dialect == "mysql":
            cur.execute("SET foreign_key_checks=0")
            cur.execute("SET unique_checks=0")
        for name in TABLES:
            cols = [c.name for c in md.tables[name].columns]
            rows = src.execute(f"SELECT {', '.join(cols)} FROM {name} ORDER BY id")
            if dialect == "postgresql":
                with cur.copy(f"COPY {name} ({', '.join(cols)}) FROM STDIN") as cp:
                    for row in rows:
                        cp.write_row(row)
            else:
                sql = f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
                while batch := rows.fetchmany(5000):
                    cur.executemany(sql, batch)
        raw.commit()
        cur.close()
    finally:
        raw.close()
        src.close()
    with engine.begin() as conn:
        if dialect == "postgresql":
            for name in TABLES:
                conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), max(id)) FROM {name}"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for name in TABLES:
            conn.exec_driver_sql(f"VACUUM ANALYZE {name}" if dialect == "postgresql" else f"ANALYZE TABLE {name}")


class Target:
    """One database kind at one size: a source built once, and a work copy reset per measurement."""

    name = ""

    def __init__(self, work: Path, accounts: int) -> None:
        self.work, self.accounts = work, accounts

    @property
    def label(self) -> str:
        return {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mariadb": "MariaDB"}[self.name]

    def build(self, sqlite_src: Path, rebuild: bool) -> float | None: ...
    def reset(self, tables: list[str]) -> float: ...
    def cleanup(self) -> None: ...
    def version(self) -> str: ...
    src_url = ""
    work_url = ""


class SQLiteTarget(Target):
    name = "sqlite"

    def build(self, sqlite_src: Path, rebuild: bool) -> float | None:
        self.src = sqlite_src
        self.work_path = self.work / "sqlite-work.db"
        self.src_url = f"sqlite:///{self.src}"
        self.work_url = f"sqlite:///{self.work_path}"
        return None

    def reset(self, tables: list[str]) -> float:
        t0 = time.perf_counter()
        for suffix in ("-journal", "-wal", "-shm"):
            Path(f"{self.work_path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(self.src, self.work_path)
        return time.perf_counter() - t0

    def cleanup(self) -> None:
        self.work_path.unlink(missing_ok=True)

    def version(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}"


class ServerTarget(Target):
    admin_url = ""
    work_db = "rt_bench"

    def __init__(self, work: Path, accounts: int) -> None:
        super().__init__(work, accounts)
        self.src_db = f"rt_bench_src_{accounts}"
        self.admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")

    def url(self, db: str) -> str:
        raise NotImplementedError

    @property
    def src_url(self) -> str:  # type: ignore[override]
        return self.url(self.src_db)

    @property
    def work_url(self) -> str:  # type: ignore[override]
        return self.url(self.work_db)

    def _exists(self, db: str) -> bool:
        raise NotImplementedError

    def _count(self, db: str) -> int:
        engine = sa.create_engine(self.url(db))
        try:
            with engine.connect() as conn:
                return int(conn.exec_driver_sql("SELECT count(*) FROM accounts").scalar_one())
        except sa.exc.SQLAlchemyError:
            return -1
        finally:
            engine.dispose()

    def build(self, sqlite_src: Path, rebuild: bool) -> float | None:
        side = self.work / f"{self.name}-{self.accounts}.json"
        want = json.loads(sqlite_src.with_suffix(".json").read_text())
        if (not rebuild and _sidecar_ok(side, want) and self._exists(self.src_db)
                and self._count(self.src_db) == self.accounts):
            return None
        t0 = time.perf_counter()
        self._drop(self.src_db)
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {self.src_db}")
        engine = sa.create_engine(self.url(self.src_db))
        try:
            copy_from_sqlite(sqlite_src, engine)
        finally:
            engine.dispose()
        side.write_text(json.dumps(want))
        return time.perf_counter() - t0

    def _drop(self, db: str) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {db}")

    def cleanup(self) -> None:
        self._drop(self.work_db)
        self.admin.dispose()

    def version(self) -> str:
        with self.admin.connect() as conn:
            return str(conn.exec_driver_sql("SELECT version()").scalar_one())


class PostgresTarget(ServerTarget):
    name = "postgresql"
    admin_url = PG_ADMIN

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"

    def _exists(self, db: str) -> bool:
        with self.admin.connect() as conn:
            return bool(conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": db}).first())

    def _drop(self, db: str) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

    def reset(self, tables: list[str]) -> float:
        t0 = time.perf_counter()
        self._drop(self.work_db)
        for attempt in range(5):
            try:
                with self.admin.connect() as conn:
                    conn.exec_driver_sql(f"CREATE DATABASE {self.work_db} TEMPLATE {self.src_db} STRATEGY FILE_COPY")
                break
            except sa.exc.OperationalError as exc:
                # A template must have no other session: a 1M run lost a whole database to one
                # ("source database ... is being accessed by other users", an autovacuum worker or
                # a straggling connection). The source is the bench's own: end those sessions, retry.
                if "being accessed by other users" not in str(exc) or attempt == 4:
                    raise
                log(f"  {self.src_db} in use by another session; ending it and retrying ({attempt + 1}/4)")
                with self.admin.connect() as conn:
                    conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                         "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": self.src_db})
                time.sleep(2)
        return time.perf_counter() - t0

    def version(self) -> str:
        return super().version().split(" on ")[0]


class MariaDBTarget(ServerTarget):
    name = "mariadb"
    admin_url = MARIADB_ADMIN

    def __init__(self, work: Path, accounts: int) -> None:
        super().__init__(work, accounts)
        self.ready = False

    def url(self, db: str) -> str:
        return f"mysql+pymysql://root@127.0.0.1:3306/{db}?charset=utf8mb4"

    def _exists(self, db: str) -> bool:
        with self.admin.connect() as conn:
            return bool(conn.execute(sa.text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :d"),
                                     {"d": db}).first())

    def reset(self, tables: list[str]) -> float:
        """Refill the touched tables from the source (a whole-database copy only the first time).

        CREATE TABLE ... LIKE would drop the foreign keys (MariaDB does not copy them), so the
        work database gets the shop's own DDL once, then TRUNCATE + INSERT ... SELECT per table.
        """
        t0 = time.perf_counter()
        if not self.ready:
            self._drop(self.work_db)
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {self.work_db} CHARACTER SET utf8mb4")
            engine = sa.create_engine(self.work_url)
            shop_metadata().create_all(engine)
            engine.dispose()
            tables, self.ready = list(TABLES), True
        with self.admin.connect() as conn:
            conn.exec_driver_sql("SET SESSION foreign_key_checks=0")
            for name in tables:
                conn.exec_driver_sql(f"TRUNCATE TABLE {self.work_db}.{name}")
                conn.exec_driver_sql(f"INSERT INTO {self.work_db}.{name} SELECT * FROM {self.src_db}.{name}")
            for name in tables:
                conn.exec_driver_sql(f"ANALYZE TABLE {self.work_db}.{name}").fetchall()
            conn.exec_driver_sql("SET SESSION foreign_key_checks=1")
        return time.perf_counter() - t0

    def cleanup(self) -> None:
        self.ready = False
        super().cleanup()


TARGETS = {"sqlite": SQLiteTarget, "postgresql": PostgresTarget, "mariadb": MariaDBTarget}


# --------------------------------------------------------------------------- measuring


TIME = "/usr/bin/time"


def run_process(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float | None = None) -> dict[str, Any]:
    """Run a child; its wall time, exit code, output, and its own peak RSS.

    The RSS comes from /usr/bin/time (GNU time, `%M`) when present: a child forked straight
    from this (large) process would inherit its high-water mark in wait4's ru_maxrss.
    """
    out_path, err_path, rss_path = cwd / "last.stdout", cwd / "last.stderr", cwd / "last.rss"
    rss_path.unlink(missing_ok=True)
    wrapped = [TIME, "-f", "%M", "-o", str(rss_path), *cmd] if os.access(TIME, os.X_OK) else cmd
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=out, stderr=err)
        deadline = None if timeout is None else t0 + timeout
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG if deadline else 0)
            if pid:
                break
            if deadline and time.perf_counter() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
                timed_out = True
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss_kb = usage.ru_maxrss
    if wrapped is not cmd:
        try:
            maxrss_kb = int(rss_path.read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            maxrss_kb = None
    return {
        "seconds": seconds, "rc": proc.returncode, "timed_out": timed_out,
        "maxrss_mb": maxrss_kb / 1024 if maxrss_kb else None, "stdout": out_path.read_text(errors="replace"),
        "stderr": err_path.read_text(errors="replace")[-2000:],
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.retention = shlex.split(args.retention) if args.retention else [str(REPO / ".venv/bin/retention")]
        self.env = {**os.environ, AUDIT_KEY_ENV: "bench-audit-key"}
        self.env.pop("RETENTION_POLICIES", None)
        self.results_path = Path(args.results)
        self.results: dict[str, Any] = {"meta": {}, "runs": []}
        if args.resume and self.results_path.exists():
            self.results = json.loads(self.results_path.read_text())

    # -- one retention command -----------------------------------------------------------
    def retention_cmd(self, policy_file: Path, cwd: Path, *argv: str) -> dict[str, Any]:
        res = run_process([*self.retention, "--policies", str(policy_file), "--log-format", "json", *argv],
                          cwd, self.env)
        if res["rc"] != 0:
            log(f"  ! retention {' '.join(argv)} exited {res['rc']}: {res['stderr'][-600:]}")
        return res

    def run_policy(self, policy_file: Path, cwd: Path, policy: str) -> dict[str, Any]:
        res = self.retention_cmd(policy_file, cwd, "run", *FORCE, "--policy", policy, "--as-of", self.args.as_of,
                                 "--format", "json")
        sample = {"seconds": res["seconds"], "rc": res["rc"], "maxrss_mb": res["maxrss_mb"]}
        try:
            doc = json.loads(res["stdout"])
            p = doc["policies"][0]
            sample.update(rows=p["applied"], children=sum(p["cascaded"].values()), status=p["status"],
                          inner_s=p.get("duration_s"),
                          # Where duration_s went (survey, check, batches, commit, audit).
                          **{f"phase_{k}_s": v for k, v in (p.get("phases_s") or {}).items()},
                          # The re-identification check's own time, as the run measured it (anonymise only).
                          reid_s=((p.get("reidentification") or {}).get("duration_ms") or 0) / 1000
                          if p.get("reidentification") else None,
                          purge_s=sum(float(x.get("duration_s") or 0) for x in doc.get("purge", [])),
                          purge=[{k: x.get(k) for k in ("level", "result", "detail", "duration_s")}
                                 for x in doc.get("purge", [])])
        except (ValueError, KeyError, IndexError) as exc:
            sample.update(rows=None, error=f"{type(exc).__name__}: {res['stderr'][-300:]}")
        return sample

    # -- one size and database -------------------------------------------------------------
    def bench_one(self, target: Target, sqlite_src: Path, src_build_s: float | None) -> dict[str, Any]:
        a = self.args
        run: dict[str, Any] = {"database": target.name, "accounts": target.accounts, "samples": {}, "info": {}}
        log(f"{target.label} {target.accounts:,}: building the source")
        built = target.build(sqlite_src, a.rebuild)
        run["info"]["build_s"] = src_build_s if target.name == "sqlite" else built
        run["info"]["version"] = target.version()
        run["info"]["repeat"] = a.repeat
        samples: dict[str, list[dict[str, Any]]] = run["samples"]

        def add(name: str, sample: dict[str, Any]) -> None:
            samples.setdefault(name, []).append(sample)
            rows = sample.get("rows")
            rate = f", {rows / sample['seconds']:,.0f} rows/s" if rows and sample.get("seconds") else ""
            extra = f", RSS {sample['maxrss_mb']:.0f} MB" if "maxrss_mb" in sample else ""
            log(f"    {name:<28} {sample.get('seconds', float('nan')):8.3f} s  rows={rows}{rate}{extra}")

        base = self.work / f"{target.name}-{target.accounts}"
        orm_ok = target.accounts <= a.orm_max_accounts
        for rep in range(a.repeat):
            # Above 100k the ORM peer runs once (the issue: one repetition, capped at --orm-timeout).
            orm_now = orm_ok and (rep == 0 or target.accounts <= 100_000)
            rep_dir = base / f"rep{rep + 1}"
            shutil.rmtree(rep_dir, ignore_errors=True)
            rep_dir.mkdir(parents=True)
            audit = rep_dir / "audit.jsonl"
            none_file = write_policy(rep_dir / "bench-none.yaml", target.work_url, "none", audit, BENCH_POLICIES)
            thorough_file = write_policy(rep_dir / "bench-thorough.yaml", target.work_url, "thorough", audit,
                                         BENCH_POLICIES)
            shop_file = write_policy(rep_dir / "shop.yaml", target.src_url, "none", audit, SHOP_POLICIES)
            log(f"  {target.label} {target.accounts:,} repetition {rep + 1}/{a.repeat}")

            # (d) the preview of all the shop's policies, on the untouched source (read-only)
            res = self.retention_cmd(shop_file, rep_dir, "run", "--dry-run", *FORCE, "--as-of", a.as_of,
                                     "--format", "json")
            dry = {"seconds": res["seconds"], "rc": res["rc"], "maxrss_mb": res["maxrss_mb"]}
            try:
                dry_doc = json.loads(res["stdout"])["policies"]
                dry["due"] = {p["name"]: p["due"] for p in dry_doc}
                dry["policy_s"] = {p["name"]: p.get("duration_s") for p in dry_doc}
            except (ValueError, KeyError):
                dry["error"] = res["stderr"][-300:]
            add("dryrun", dry)

            for kind in a.kinds:
                policy, touched, _label = KINDS[kind]
                methods = ["raw", "retention"]
                if kind == "delete":
                    methods.append("thorough")
                    if target.name == "sqlite":
                        methods.append("raw_secure")
                if orm_now:
                    methods.append("orm")
                if rep % 2:
                    methods.reverse()
                for method in methods:
                    reset_s = target.reset(touched)
                    if method == "retention":
                        sample = self.run_policy(none_file, rep_dir, policy)
                    elif method == "thorough":
                        sample = self.run_policy(thorough_file, rep_dir, policy)
                    elif method in ("raw", "raw_secure"):
                        engine = peers.make_engine(target.work_url)
                        try:
                            w = peers.raw(engine, kind, a.as_of, secure_delete=method == "raw_secure")
                        finally:
                            engine.dispose()
                        sample = {"seconds": w.seconds, "rows": w.rows, "children": w.children}
                    else:
                        res = run_process([sys.executable, str(HERE / "peers.py"), "orm", "--url", target.work_url,
                                           "--kind", kind, "--as-of", a.as_of], rep_dir, self.env,
                                          timeout=a.orm_timeout)
                        # seconds: the whole process, like retention's; loop_s: the ORM loop alone
                        sample = {"seconds": res["seconds"], "maxrss_mb": res["maxrss_mb"], "rc": res["rc"]}
                        if res["timed_out"]:
                            sample.update(rows=None, timed_out=True)
                        else:
                            try:
                                peer = json.loads(res["stdout"].strip().splitlines()[-1])
                                sample.update(rows=peer["rows"], children=peer["children"], loop_s=peer["seconds"])
                            except (ValueError, IndexError, KeyError):
                                sample.update(rows=None, error=res["stderr"][-300:])
                    sample["reset_s"] = reset_s
                    add(f"{method}:{kind}", sample)

            # (f) the whole shop's first run, then the next night's preview on the enforced database:
            # what the DPO's preview costs on an ordinary day, once the backlog is gone. The run
            # purges at level `standard` (PostgreSQL: VACUUM ANALYZE of the tables it changed), as
            # the server's own maintenance would have by the next night; its time includes that.
            target.reset(list(TABLES))
            work_shop = write_policy(rep_dir / "shop-work.yaml", target.work_url, "standard", audit, SHOP_POLICIES)
            res = self.retention_cmd(work_shop, rep_dir, "run", *FORCE, "--as-of", a.as_of, "--format", "json")
            add("shoprun", {"seconds": res["seconds"], "rc": res["rc"], "maxrss_mb": res["maxrss_mb"]})
            res = self.retention_cmd(work_shop, rep_dir, "run", "--dry-run", *FORCE, "--as-of", next_night(a.as_of),
                                     "--format", "json")
            nxt = {"seconds": res["seconds"], "rc": res["rc"], "maxrss_mb": res["maxrss_mb"]}
            try:
                nxt["due"] = {p["name"]: p["due"] for p in json.loads(res["stdout"])["policies"]}
            except (ValueError, KeyError):
                nxt["error"] = res["stderr"][-300:]
            add("dryrun_next", nxt)

            # (e) verify the repetition's audit log
            res = self.retention_cmd(none_file, rep_dir, "audit", "verify", "--log", str(audit))
            size = audit.stat().st_size if audit.exists() else 0
            lines = sum(1 for _ in audit.open("rb")) if audit.exists() else 0
            add("verify", {"seconds": res["seconds"], "rc": res["rc"], "maxrss_mb": res["maxrss_mb"],
                           "log_bytes": size, "log_lines": lines})
        if a.checks:
            run["checks"] = self.bench_checks(target, base)
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
        target.cleanup()
        return run

    # -- the checks' cost ----------------------------------------------------------------------
    def redo_checks(self, name: str, accounts: int, src: Path) -> None:
        """--checks-only: measure the checks' cost of a database and size again and replace only
        that part of its earlier results (the workloads take ~25 minutes at 1M on MariaDB)."""
        run = next((r for r in self.results["runs"] if (r["database"], r["accounts"]) == (name, accounts)), None)
        if run is None:
            log(f"   {name} {accounts:,}: no earlier results to add the checks to (--checks-only), skipped")
            return
        target = TARGETS[name](self.work, accounts)
        target.build(src, self.args.rebuild)
        base = self.work / f"{name}-{accounts}"
        base.mkdir(parents=True, exist_ok=True)
        run["checks"] = self.bench_checks(target, base)
        run["checks_commit"] = self.results["meta"]["commit"]
        if not self.args.keep:
            shutil.rmtree(base, ignore_errors=True)
        target.cleanup()
        self.save()

    def bench_checks(self, target: Target, base: Path) -> dict[str, Any]:
        """bench/checks_cost.py: the shop's policies run for real (purge none) in one process, on
        a fresh copy each time, with an audit log an earlier real run of the same backlog wrote;
        variants all (checks timed), no_unreadable, no_holds (see that file)."""
        a = self.args
        d = base / "checks"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        audit, history = d / "audit.jsonl", d / "history.jsonl"
        policy = write_policy(d / "shop.yaml", target.work_url, "none", audit, SHOP_POLICIES)
        script = [sys.executable, str(HERE / "checks_cost.py"), "--policies", str(policy), "--as-of", a.as_of]
        out: dict[str, Any] = {"samples": {v: [] for v in checks_cost.VARIANTS}, "load": []}
        # The earlier night: its audit log is the history every measured run reads.
        target.reset(list(TABLES))
        res = run_process([*script, "--variant", "all"], d, self.env)
        if res["rc"] != 0:
            log(f"  ! checks: history run exited {res['rc']}: {res['stderr'][-600:]}")
            return out
        audit.rename(history)
        for rep in range(a.checks_repeat):
            order = list(checks_cost.VARIANTS)
            if rep % 2:
                order.reverse()
            for variant in order:
                target.reset(list(TABLES))
                shutil.copyfile(history, audit)
                out["load"].append(os.getloadavg()[0])
                res = run_process([*script, "--variant", variant], d, self.env)
                try:
                    sample = json.loads(res["stdout"].strip().splitlines()[-1]) | {"rc": res["rc"]}
                except (ValueError, IndexError):
                    sample = {"rc": res["rc"], "error": res["stderr"][-600:]}
                    log(f"  ! checks {variant} exited {res['rc']}: {res['stderr'][-600:]}")
                out["samples"][variant].append(sample)
                timers = {k: round(v, 3) for k, v in (sample.get("timers") or {}).items()}
                log(f"  checks {target.label} {target.accounts:,} {variant}: "
                    f"{sample.get('seconds', float('nan')):.2f} s, timers {timers}")
        return out

    # -- everything ------------------------------------------------------------------------
    def compile_bytecode(self) -> None:
        """Write the package's bytecode, as `pip install` of a wheel does. An editable install
        under PYTHONDONTWRITEBYTECODE=1 (set on this workplace's machines) never writes it, so
        every process would compile the package's ~40 modules from source first: ~80 ms here,
        ~250 ms on a slow day, a cost no installed copy pays."""
        python = str(Path(self.retention[0]).with_name("python"))
        where = subprocess.run([python, "-c", "import os, retention; print(os.path.dirname(retention.__file__))"],
                               capture_output=True, text=True, env=self.env)
        if where.returncode == 0 and where.stdout.strip():
            subprocess.run([python, "-m", "compileall", "-q", where.stdout.strip()], env=self.env,
                           stdout=subprocess.DEVNULL)

    def main(self) -> int:
        a = self.args
        self.work = Path(a.workdir).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.compile_bytecode()
        today = data_day(a.as_of, a.backlog_years)
        meta = self.results["meta"]
        meta.update(machine_info())
        # --resume adds to earlier results: keep every command that contributed.
        meta["commands"] = [*(meta.get("commands") or ([meta["command"]] if meta.get("command") else [])),
                            command_line()] if a.resume else [command_line()]
        meta.update(command=command_line(), as_of=a.as_of, data_day=today.isoformat(),
                    backlog_years=a.backlog_years, seed=SEED, repeat=a.repeat,
                    orm_max_accounts=a.orm_max_accounts, orm_timeout=a.orm_timeout,
                    retention_cmd=" ".join(self.retention),
                    started=meta.get("started") or dt.datetime.now().astimezone().isoformat(timespec="seconds"))
        # A database/size that failed (no samples) is measured again by --resume.
        done = {(r["database"], r["accounts"]) for r in self.results["runs"] if r["samples"] and not a.redo}
        for accounts in a.accounts:
            log(f"== {accounts:,} accounts: SQLite demo source")
            src, build_s = ensure_sqlite_source(self.work, accounts, today, self.retention, a.rebuild)
            if build_s is not None:
                log(f"   built in {build_s:.1f} s")
            for name in a.databases:
                if a.checks_only:
                    self.redo_checks(name, accounts, src)
                    continue
                if (name, accounts) in done:
                    log(f"   {name} {accounts:,}: already in {self.results_path} (--resume), skipped")
                    continue
                target = TARGETS[name](self.work, accounts)
                try:
                    run = self.bench_one(target, src, build_s)
                except Exception as exc:  # keep what the other databases measured
                    log(f"   {name} {accounts:,} FAILED: {type(exc).__name__}: {exc}")
                    if isinstance(target, ServerTarget):  # its admin connection would linger
                        target.admin.dispose()
                    run = {"database": name, "accounts": accounts, "samples": {}, "info": {"error": str(exc)}}
                    if a.debug:
                        raise
                run["commit"] = meta["commit"]  # with --resume, runs of one report can be of several commits
                self.results["runs"] = [r for r in self.results["runs"]
                                        if (r["database"], r["accounts"]) != (name, accounts)] + [run]
                meta["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
                self.save()
        if a.startup:
            self.bench_startup()
            self.save()
        for rows in a.partition_rows:
            for name in [d for d in a.databases if d in ("postgresql", "mariadb")]:
                self.bench_partitions(name, rows)
                self.save()
        report = render(self.results)
        print(goals_text(self.results))
        log(f"wrote {self.results_path} and {a.report}")
        return 0 if report else 1

    # -- start-up -------------------------------------------------------------------------
    def bench_startup(self) -> None:
        """`retention --help` and a run with nothing due (the shop's policies on a small SQLite
        demo they have already been enforced on), each --startup-runs times; and the import
        time of the run's modules (`python -X importtime`, the sum of the top-level imports)."""
        a = self.args
        d = self.work / "startup"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        db = d / "small.db"
        subprocess.run([*self.retention, "demo", "--accounts", "1000", "--path", str(db), "--overwrite"],
                       cwd=d, env=self.env, check=True, capture_output=True)
        policy = write_policy(d / "shop.yaml", f"sqlite:///{db}", "none", d / "audit.jsonl", SHOP_POLICIES)
        self.retention_cmd(policy, d, "run", *FORCE)  # the backlog: afterwards nothing is due
        out: dict[str, Any] = {"help": [], "nothing_due": [], "load": []}
        for _ in range(a.startup_runs):
            out["load"].append(os.getloadavg()[0])
            res = run_process([*self.retention, "--help"], d, self.env)
            out["help"].append({"seconds": res["seconds"], "rc": res["rc"], "maxrss_mb": res["maxrss_mb"]})
            res = self.retention_cmd(policy, d, "run")
            out["nothing_due"].append({"seconds": res["seconds"], "rc": res["rc"], "maxrss_mb": res["maxrss_mb"],
                                       "run_s": _run_end_duration(res["stderr"])})
        python = str(Path(self.retention[0]).with_name("python"))
        out["python"] = []
        for _ in range(a.startup_runs):
            res = run_process([python, "-c", "pass"], d, self.env)
            out["python"].append({"seconds": res["seconds"], "rc": res["rc"], "maxrss_mb": res["maxrss_mb"]})
        res = subprocess.run([python, "-X", "importtime", "-m", "retention.cli", "--policies", str(policy),
                              "--log-format", "json", "run"], cwd=d, env=self.env, capture_output=True, text=True)
        top = 0
        by_package: dict[str, int] = {}
        for line in res.stderr.splitlines():
            parts = line.split("|")
            if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
                if not parts[2].startswith("  "):
                    top += int(parts[1])
                # Self times by top-level package: who costs what, wherever it was first imported.
                own = int(parts[0].split(":")[1])
                root = parts[2].strip().split(".")[0]
                by_package[root] = by_package.get(root, 0) + own
        out["imports_s"] = top / 1e6
        out["imports_by_package_s"] = {k: v / 1e6 for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])}
        self.results["startup"] = out
        log(f"start-up: --help {statistics.median(s['seconds'] for s in out['help']):.3f} s, nothing due "
            f"{statistics.median(s['seconds'] for s in out['nothing_due']):.3f} s (medians of {a.startup_runs}; "
            f"imports {out['imports_s']:.3f} s; load {statistics.mean(out['load']):.1f})")

    # -- whole partitions ------------------------------------------------------------------
    def bench_partitions(self, name: str, rows: int) -> None:
        """bench/partitions.py: the same rows dropped as a partition and deleted by row batches."""
        a = self.args
        target = TARGETS[name](self.work, rows)
        dbname = f"rt_bench_part_{rows}"
        with target.admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {dbname}")
            conn.exec_driver_sql(f"CREATE DATABASE {dbname}")
        target.admin.dispose()
        url = target.url(dbname)
        d = self.work / f"partitions-{name}-{rows}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        engine = sa.create_engine(url)
        run: dict[str, Any] = {"database": name, "rows": rows, "repeat": a.repeat,
                               "samples": {"partition": [], "rows": []},
                               "expiring": None, "load": []}
        try:
            for rep in range(a.repeat):
                audit = d / f"audit-{rep}.jsonl"
                policy = partition_workload.write_policy(d / "events.yaml", url, audit)
                t0 = time.perf_counter()
                partition_workload.build(engine, rows)
                build_s = time.perf_counter() - t0
                run["expiring"] = partition_workload.expiring(engine)
                order = ["events_partitioned", "events_rows"]
                if rep % 2:
                    order.reverse()
                for pol in order:
                    run["load"].append(os.getloadavg()[0])
                    res = self.retention_cmd(policy, d, "run", *FORCE, "--policy", pol, "--as-of",
                                             partition_workload.AS_OF, "--format", "json")
                    sample = partition_workload.sample(res) | {"build_s": build_s}
                    run["samples"]["partition" if pol == "events_partitioned" else "rows"].append(sample)
                    log(f"  partitions {name} {rows:,} {pol}: {sample['seconds']:.3f} s, rows {sample.get('rows')}, "
                        f"partitions {sample.get('partitions')}, batches {sample.get('batch_sizes')}")
                run["left"] = partition_workload.expiring(engine)
        finally:
            engine.dispose()
        self.results["partitions"] = [r for r in self.results.get("partitions", [])
                                      if (r["database"], r["rows"]) != (name, rows)] + [run]

    def save(self) -> None:
        self.results_path.write_text(json.dumps(self.results, indent=1))
        Path(self.args.report).write_text(render(self.results))


# --------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    cpu = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = ""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "retention"],
                               capture_output=True, text=True, check=False).stdout.strip()
        if dirty:
            commit += " + uncommitted changes in retention/"
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "ram_gib": round(mem_kb / 1024 / 1024, 1), "cpu": cpu,
            "kernel": platform.release(), "python": platform.python_version(), "sqlalchemy": sa.__version__,
            "commit": commit}


def commits_text(runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Which commit measured which runs (several after --resume)."""
    by: dict[str, list[str]] = {}
    for r in runs:
        by.setdefault(r.get("commit") or str(meta.get("commit")), []).append(
            f"{LABELS[r['database']]} {r['accounts']:,}")
    if len(by) <= 1:
        return f"commit {next(iter(by), meta.get('commit'))}"
    return "; ".join(f"commit {c} ({', '.join(names)})" for c, names in by.items())


def command_line() -> str:
    try:
        exe = os.path.relpath(sys.executable, Path.cwd())
        script = os.path.relpath(sys.argv[0], Path.cwd())
    except ValueError:
        exe, script = sys.executable, sys.argv[0]
    return " ".join(shlex.quote(x) for x in [exe, script, *sys.argv[1:]])


def med(samples: list[dict[str, Any]] | None, key: str = "seconds") -> float | None:
    vals = [s[key] for s in samples or [] if s.get(key) is not None and not s.get("timed_out")
            and s.get("rc", 0) == 0]
    return statistics.median(vals) if vals else None


def spread(samples: list[dict[str, Any]] | None, key: str = "seconds") -> str:
    vals = [s[key] for s in samples or [] if s.get(key) is not None and s.get("rc", 0) == 0]
    return f"{min(vals):.2f}–{max(vals):.2f}" if len(vals) > 1 else ""


def first(samples: list[dict[str, Any]] | None, key: str) -> Any:
    for s in samples or []:
        if s.get(key) is not None:
            return s[key]
    return None


def fmt(x: float | None, spec: str = ".2f", none: str = "–") -> str:
    return none if x is None else format(x, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mariadb": "MariaDB"}


def kind_row(run: dict[str, Any], kind: str, method: str) -> dict[str, Any]:
    s = run["samples"]
    ret_samples = s.get(f"{method}:{kind}")
    ret, raw, orm = med(ret_samples), med(s.get(f"raw:{kind}")), med(s.get(f"orm:{kind}"))
    rows = first(ret_samples, "rows")
    raw_rows = first(s.get(f"raw:{kind}"), "rows")
    orm_rows = first(s.get(f"orm:{kind}"), "rows")
    counts = {x for x in (rows, raw_rows, orm_rows) if x is not None}
    orm_timeout = any(x.get("timed_out") for x in s.get(f"orm:{kind}", []))
    return {
        "rows": rows, "children": first(ret_samples, "children"), "ret": ret,
        "inner": med(ret_samples, "inner_s"), "purge": med(ret_samples, "purge_s"),
        "raw": raw, "orm": orm, "orm_timeout": orm_timeout,
        "rss": max((x.get("maxrss_mb") or 0 for x in ret_samples or []), default=None),
        "ret_rate": ratio(rows, ret), "raw_rate": ratio(raw_rows, raw), "orm_rate": ratio(orm_rows, orm),
        "vs_raw": ratio(ret, raw), "orm_vs": ratio(orm, ret), "counts_agree": len(counts) <= 1,
        "failed": [x for x in ret_samples or [] if x.get("rc")],
    }


PHASES = ("survey", "check", "batches", "commit", "audit")


def write_phases(w: Callable[[str], None], runs: list[dict[str, Any]]) -> None:
    """Per workload at the goal size, where `retention s` went (medians of the run JSON's
    `phases_s`) against what a 1.3x goal allows: what a goal that fails would take."""
    rows = [run for run in runs if run["accounts"] == GOAL_SIZE and run["samples"]]
    if not any(first(run["samples"].get(f"retention:{k}"), "phase_survey_s") is not None
               for run in rows for k in KINDS):
        return
    w("## Where the time goes, at 1M accounts\n")
    w("Medians over the repetitions of each part of `retention s` (seconds). `start-up` = the whole process "
      "minus the policy's `duration_s`: interpreter, imports, policy file, connecting, reflecting the schema, "
      "the guards' audit history, writing the result; `survey` = counting (due, held, deferred, cascade), "
      "the guards, the sample; `check` = the re-identification check (anonymising policies); `statements` = "
      "the batches' SQL; `commit` = the databases' commits; `audit` = the audit log's entries, each fsync'd "
      "(`phases_s` in the run's JSON). `allowed` = the goal's factor times `raw s`; `over` = what the run "
      "would have to lose to meet it.\n")
    w("| database | work | retention s | start-up | survey | check | statements | commit | audit | raw s | "
      "allowed s | over s |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in rows:
        s = run["samples"]
        for kind, (_p, _t, label) in KINDS.items():
            xs = s.get(f"retention:{kind}")
            if not xs or first(xs, "phase_survey_s") is None:
                continue
            ret, inner, raw = med(xs), med(xs, "inner_s"), med(s.get(f"raw:{kind}"))
            ph = {name: med(xs, f"phase_{name}_s") or 0.0 for name in PHASES}
            statements = ph["batches"] - ph["commit"] - ph["audit"]
            limit = (FAKE_LIMIT[run["database"]] if kind == "anon_fake"
                     else CONST_LIMIT if kind == "anon_const" else DELETE_LIMIT[run["database"]])
            allowed = raw * limit if raw else None
            over = ret - allowed if ret is not None and allowed is not None else None
            w(f"| {LABELS[run['database']]} | {label} | {fmt(ret)} | {fmt(minus(ret, inner))} | "
              f"{fmt(ph['survey'])} | {fmt(ph['check']) if ph['check'] else '–'} | {fmt(statements)} | "
              f"{fmt(ph['commit'])} | {fmt(ph['audit'])} | {fmt(raw)} | {fmt(allowed)} | "
              f"{fmt(over) if over is not None and over > 0 else 'met'} |")
    w("")


def minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def peak_rss(run: dict[str, Any]) -> float | None:
    vals = [x.get("maxrss_mb") for name, xs in run["samples"].items() if name.split(":")[0] in
            ("retention", "thorough", "dryrun", "verify") for x in xs if x.get("maxrss_mb")]
    return max(vals) if vals else None


# The goals of issue 18.
GOAL_SIZE = 1_000_000
BIG_SIZE = 10_000_000
DELETE_LIMIT = {"sqlite": 1.3, "postgresql": 1.3, "mariadb": 1.3}
CONST_LIMIT = 1.3
FAKE_LIMIT = {"sqlite": 1.6, "postgresql": 1.6, "mariadb": 2.5}
DRYRUN_LIMIT = {"sqlite": 1.5, "postgresql": 1.5, "mariadb": 3.0}
ORM_FACTOR = 10
HELP_LIMIT_S, NOTHING_DUE_LIMIT_S = 0.15, 0.35
PARTITION_FACTOR = 50


CHECKS_SHARE = 0.10


def checks_shares(checks: dict[str, Any]) -> list[tuple[str, str, float | None, str]]:
    """Per check: (key, label, its share of the run, how it was found). Timed checks: their
    timer's median over the median run; the others: the run minus the run without them."""
    s = checks["samples"]
    run_s = med(s.get("all"), "seconds")

    def timer(name: str) -> float | None:
        vals = [x["timers"].get(name, 0.0) for x in s.get("all", []) if x.get("rc") == 0 and "timers" in x]
        return statistics.median(vals) if vals else None

    out: list[tuple[str, str, float | None, str]] = []
    for key, label in (("reidentification", "re-identification"), ("ratchet", "policy ratchet (audit history)")):
        t = timer(key)
        share = ratio(t, run_s)
        out.append((key, label, share, f"{fmt(share, '.1%')} ({fmt(t, '.3f')} s of {fmt(run_s)} s, timed in the run)"))
    for key, label, variant in (("unreadable", "unreadable dates", "no_unreadable"),
                                ("holds", "holds (exclude, linked, registry)", "no_holds")):
        without = med(s.get(variant), "seconds")
        diff = None if run_s is None or without is None else run_s - without
        share = ratio(diff, run_s)
        extra = ""
        if key == "holds":
            extra = f"; registry reads {fmt(timer('holds_registry'), '.3f')} s"
        out.append((key, label, share,
                    f"{fmt(share, '.1%')} (run {fmt(run_s)} s [{spread(s.get('all'))}] vs {fmt(without)} s "
                    f"[{spread(s.get(variant))}] without{extra})"))
    return out


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    runs = {(r["database"], r["accounts"]): r for r in results["runs"] if r["samples"]}
    out: list[dict[str, Any]] = []
    dbs = [d for d in ("sqlite", "postgresql", "mariadb") if any(k[0] == d for k in runs)]

    def add(goal: str, db: str, size: int | None, measured: str, target: str, ok: bool | None) -> None:
        out.append({"goal": goal, "database": LABELS[db], "accounts": size, "measured": measured,
                    "target": target, "result": "n/a" if ok is None else ("PASS" if ok else "FAIL")})

    for db in dbs:
        sizes = sorted(k[1] for k in runs if k[0] == db)
        size = GOAL_SIZE if GOAL_SIZE in sizes else max(sizes)
        run = runs[(db, size)]
        for kind, limit, goal in (("delete", DELETE_LIMIT[db], "delete+cascade, audit, purge none vs raw DELETE"),
                                  ("delete_invoices", DELETE_LIMIT[db], "same, invoices policy (few rows)"),
                                  ("anon_const", CONST_LIMIT, "constant anonymise vs raw UPDATE"),
                                  ("anon_fake", FAKE_LIMIT[db], "fake anonymise vs raw constant UPDATE")):
            r = kind_row(run, kind, "retention")
            if r["ret"] is None and r["raw"] is None:
                continue
            rs, ws = spread(run["samples"].get(f"retention:{kind}")), spread(run["samples"].get(f"raw:{kind}"))
            measured = f"{fmt(r['vs_raw'])}x ({fmt(r['ret'], '.2f')} s [{rs}] vs {fmt(r['raw'], '.2f')} s [{ws}])"
            add(goal, db, size, measured,
                f"≤ {limit}x", None if r["vs_raw"] is None else r["vs_raw"] <= limit)
        orm_sizes = [s for s in sizes if any(runs[(db, s)]["samples"].get(f"orm:{k}") for k in KINDS)]
        if orm_sizes:
            osize = max(orm_sizes)
            for kind in KINDS:
                r = kind_row(runs[(db, osize)], kind, "retention")
                if r["orm"] is None and not r["orm_timeout"]:
                    continue
                capped = ratio(first(runs[(db, osize)]["samples"].get(f"orm:{kind}"), "seconds"), r["ret"])
                if r["orm_timeout"]:
                    measured = f"> {fmt(capped, '.1f')}x (ORM stopped at its time cap)"
                    ok = (capped or 0) >= ORM_FACTOR or None
                else:
                    # The ceiling: how much faster the raw statement itself is than the ORM peer.
                    measured = (f"{fmt(r['orm_vs'], '.1f')}x ({fmt(r['orm'])} s vs {fmt(r['ret'])} s; "
                                f"raw SQL is {fmt(ratio(r['orm'], r['raw']), '.1f')}x)")
                    ok = None if r["orm_vs"] is None else r["orm_vs"] >= ORM_FACTOR
                add(f"≥{ORM_FACTOR}x faster than the ORM peer: {kind}", db, osize, measured, f"≥ {ORM_FACTOR}x", ok)
        else:
            add(f"≥{ORM_FACTOR}x faster than the ORM peer", db, None, "not measured", f"≥ {ORM_FACTOR}x", None)
        small = min(sizes)
        p_big, p_small = peak_rss(run), peak_rss(runs[(db, small)])
        if size != small and p_big and p_small:
            add("peak RSS at 1M ≤ 1.3x peak at 100k, < 300 MB", db, size,
                f"{p_big:.0f} MB vs {p_small:.0f} MB ({p_big / p_small:.2f}x)", "≤ 1.3x and < 300 MB",
                p_big <= 1.3 * p_small and p_big < 300)
        else:
            add("peak RSS at 1M ≤ 1.3x peak at 100k, < 300 MB", db, size,
                f"{fmt(p_big, '.0f')} MB (one size only)", "≤ 1.3x and < 300 MB",
                None if not p_big else (False if p_big >= 300 else None))
        limit = DRYRUN_LIMIT[db]
        for name, what in (("dryrun", "first run's backlog"), ("dryrun_next", "next night, after the first run")):
            d = med(run["samples"].get(name))
            if d is not None:
                add(f"dry-run (all policies): {what}", db, size,
                    f"{fmt(d)} s [{spread(run['samples'].get(name))}]", f"≤ {limit} s", d <= limit)
            elif run["samples"].get(name):
                # Measured but no sample succeeded (e.g. blocked, exit 3): say so, not a missing row.
                rcs = [x.get("rc") for x in run["samples"][name]]
                add(f"dry-run (all policies): {what}", db, size, f"no successful run (exit codes {rcs})",
                    f"≤ {limit} s", None)
        if db in ("sqlite", "postgresql") and (db, BIG_SIZE) in runs and (db, GOAL_SIZE) in runs:
            big, one = runs[(db, BIG_SIZE)], runs[(db, GOAL_SIZE)]
            # After --resume the two sizes may come from different commits (and sessions): say so
            # in the row itself, since the ratio then measures the engine's changes as well.
            apart = (f"; 10M at {big['commit']}, 1M at {one['commit']}"
                     if big.get("commit") and one.get("commit") and big["commit"] != one["commit"] else "")
            for kind in KINDS:
                t_big = med(big["samples"].get(f"retention:{kind}"))
                t_one = med(one["samples"].get(f"retention:{kind}"))
                if t_big is None or t_one is None:
                    continue
                add(f"10M vs 1M time: {kind}", db, BIG_SIZE,
                    f"{t_big / t_one:.1f}x ({fmt(t_big)} s vs {fmt(t_one)} s{apart})", "≤ 11x", t_big / t_one <= 11)
            p_big, p_one = peak_rss(big), peak_rss(one)
            if p_big and p_one:
                add("10M vs 1M peak RSS", db, BIG_SIZE,
                    f"{p_big:.0f} MB vs {p_one:.0f} MB ({p_big / p_one:.2f}x{apart})",
                    "≤ 1.3x and < 300 MB", p_big <= 1.3 * p_one and p_big < 300)
        elif db in ("sqlite", "postgresql"):
            add("10M accounts: time ≤ 11x and peak RSS ≤ 1.3x the 1M run", db, None, "not measured",
                "≤ 11x; ≤ 1.3x and < 300 MB", None)
    for db in dbs:
        sizes = sorted(k[1] for k in runs if k[0] == db and runs[k].get("checks"))
        if not sizes:
            add("checks' cost (re-identification, unreadable dates, policy ratchet, holds)", db, None,
                "not measured", f"each ≤ {CHECKS_SHARE:.0%} of the run", None)
            continue
        size = GOAL_SIZE if GOAL_SIZE in sizes else max(sizes)
        for _check, what, share, detail in checks_shares(runs[(db, size)]["checks"]):
            add(f"checks' cost: {what}", db, size, detail, f"≤ {CHECKS_SHARE:.0%} of the run",
                None if share is None else share <= CHECKS_SHARE)
    startup = results.get("startup")
    if startup:
        for key, what, limit in (("help", "start-up: `retention --help`", HELP_LIMIT_S),
                                 ("nothing_due", "start-up: a run with nothing due (SQLite, shop policies)",
                                  NOTHING_DUE_LIMIT_S)):
            m = med(startup[key])
            load = statistics.mean(startup.get("load") or [0])
            add(what, "sqlite", None, f"{fmt(m, '.3f')} s [{spread(startup[key])}], load {load:.1f}", f"≤ {limit} s",
                None if m is None else m <= limit)
    for prun in results.get("partitions", []):
        part, rows_ = med(prun["samples"]["partition"]), med(prun["samples"]["rows"])
        if part and rows_:
            add("whole partitions vs row batches, one year of three expiring, audit included", prun["database"],
                None, f"{rows_ / part:.1f}x ({fmt(part, '.3f')} s vs {fmt(rows_, '.3f')} s; {prun['rows']:,} rows, "
                f"{(prun.get('expiring') or [0])[0]:,} expiring)", f"≥ {PARTITION_FACTOR}x",
                rows_ / part >= PARTITION_FACTOR)
    return out


def goals_text(results: dict[str, Any]) -> str:
    lines = ["Goals:"]
    for g in goals(results):
        size = f"{g['accounts']:,}" if g["accounts"] else "-"
        lines.append(f"  {g['result']:<4}  {g['database']:<10} {size:>9}  {g['goal']}: {g['measured']} "
                     f"(target {g['target']})")
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    runs = sorted(results["runs"], key=lambda r: (r["accounts"], list(TARGETS).index(r["database"])))
    md: list[str] = []
    w = md.append
    w("# retention benchmark results\n")
    w(f"Written by `bench/run.py` (see bench/README.md). Started {meta.get('started')}, finished "
      f"{meta.get('finished', 'not yet')}.\n")
    commands = meta.get("commands") or [meta.get("command")]
    w("Command:\n" if len(commands) == 1 else "Commands (later ones with `--resume`, adding to the earlier results):\n")
    w("```\n" + "\n".join(str(c) for c in commands) + "\n```\n")
    w(f"Machine: {meta.get('nproc')} cores ({meta.get('cpu')}), {meta.get('ram_gib')} GiB RAM, Linux "
      f"{meta.get('kernel')}; Python {meta.get('python')}, SQLAlchemy {meta.get('sqlalchemy')}; retention at "
      f"{commits_text(runs, meta)}. "
      + "; ".join(f"{LABELS[r['database']]}: {r['info'].get('version')}" for r in runs
                  if r["info"].get("version") and r["accounts"] == runs[0]["accounts"]) + ". "
      "Servers with their stock Debian settings (PostgreSQL shared_buffers 128 MB; MariaDB "
      "innodb_buffer_pool_size 128 MB, innodb_flush_log_at_trx_commit=1).\n")
    day, years = meta.get("data_day"), meta.get("backlog_years", 0)
    backlog = (f"built up to {day} (`retention demo --as-of {day}`) and enforced {years} year(s) later, as of "
               f"`{meta.get('as_of')}`: the backlog of a first run in a shop that has not enforced its terms "
               "since" if years else f"built with today = the as-of date `{meta.get('as_of')}`")
    reps = sorted({r["info"].get("repeat", meta.get("repeat")) for r in runs} - {None})
    per_size = "; ".join(f"{r['accounts']:,} {LABELS[r['database']]}: {r['info'].get('repeat', meta.get('repeat'))}"
                         for r in runs) if len(reps) > 1 else ""
    w(f"Data: the demo shop (`retention demo`, seed {meta.get('seed')}), {backlog}. Times are medians of "
      f"{per_size + ' ' if per_size else ''}{'/'.join(map(str, reps)) or meta.get('repeat')} repetitions, each on a "
      "fresh copy of the database.\n")

    w("## Goals\n")
    w("Medians, with [min–max] of the repetitions. The machine is shared with other work (tests running at the "
      "same time), so single runs vary by tens of per cent; ratios are taken between medians of the same run. "
      "Where the time goes, and what to change in the engine: [HOTSPOTS.md](HOTSPOTS.md).\n")
    w("| result | goal | database | accounts | measured | target |")
    w("| --- | --- | --- | ---: | --- | --- |")
    for g in goals(results):
        w(f"| **{g['result']}** | {g['goal']} | {g['database']} | {g['accounts'] or '–':,} | {g['measured']} | "
          f"{g['target']} |" if g["accounts"] else
          f"| **{g['result']}** | {g['goal']} | {g['database']} | – | {g['measured']} | {g['target']} |")
    w("")

    if results.get("notes"):
        # Written by hand into results.json (key "notes", Markdown paragraphs) by whoever ran the
        # bench: what the table alone does not say (reruns, what did not run and why).
        w("### Notes on this run\n")
        for note in results["notes"]:
            w(f"{note}\n")
    w("## Enforcement: retention vs one raw statement vs a hand-written ORM loop\n")
    w("`rows` = rows of the policy's own table deleted or anonymised (children deleted by the cascade in "
      "`children`). `retention s` is the whole CLI process (`retention run --policy P --format json`, Python start, "
      "validation, counting, batches, fsync'd audit log); `in-process s` is the policy's own `duration_s` from the "
      "JSON (counting + batches, no start-up). `raw s` is BEGIN..COMMIT of the single statement(s); `ORM s` is the "
      "whole ORM script process, start-up included like `retention s` (its loop alone is `loop_s` in "
      "results.json). Ratios: `ret/raw` = retention s / raw s (lower is better; `in-process/raw` "
      "leaves out the process start-up and reflection), "
      "`ORM/ret` = ORM s / retention s (higher is better). Peak RSS is the retention process's maximum resident "
      "set (GNU time `%M`).\n")
    w("| database | accounts | work | rows | children | retention s | in-process s | raw s | ORM s | "
      "retention rows/s | raw rows/s | ORM rows/s | ret/raw | in-process/raw | ORM/ret | peak RSS MB |")
    w("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    notes: list[str] = []
    for run in runs:
        if not run["samples"]:
            w(f"| {LABELS[run['database']]} | {run['accounts']:,} | FAILED: {run['info'].get('error', '')[:200]} "
              "| | | | | | | | | | | | | |")
            continue
        for kind, (_p, _t, label) in KINDS.items():
            if not any(k.endswith(":" + kind) for k in run["samples"]):
                continue
            for method in (("retention", "thorough") if kind == "delete" else ("retention",)):
                r = kind_row(run, kind, method)
                work = label if method == "retention" else "same, purge thorough"
                orm = ">" + fmt(first(run["samples"].get(f"orm:{kind}"), "seconds")) + " (cap)" \
                    if r["orm_timeout"] else fmt(r["orm"])
                w(f"| {LABELS[run['database']]} | {run['accounts']:,} | {work} | {fmt(r['rows'], ',')} | "
                  f"{fmt(r['children'], ',') if kind == 'delete' else '–'} | {fmt(r['ret'])} | {fmt(r['inner'])} | "
                  f"{fmt(r['raw'], '.3f')} | {orm if method == 'retention' else '–'} | {fmt(r['ret_rate'], ',.0f')} | "
                  f"{fmt(r['raw_rate'], ',.0f')} | {fmt(r['orm_rate'], ',.0f') if method == 'retention' else '–'} | "
                  f"{fmt(r['vs_raw'])} | {fmt(ratio(r['inner'], r['raw']))} | "
                  f"{fmt(r['orm_vs'], '.1f') if method == 'retention' else '–'} | "
                  f"{fmt(r['rss'], '.0f')} |")
                if not r["counts_agree"]:
                    notes.append(f"{LABELS[run['database']]} {run['accounts']:,} {kind}: row counts differ between "
                                 "retention, raw and ORM")
                if r["failed"]:
                    notes.append(f"{LABELS[run['database']]} {run['accounts']:,} {kind} {method}: exit codes "
                                 f"{[x.get('rc') for x in r['failed']]}")
    w("")
    if notes:
        w("**Warnings:** " + "; ".join(notes) + "\n")
    w("ORM peer: only at sizes up to " + f"{meta.get('orm_max_accounts', 0):,}" +
      " accounts, above 100,000 in the first repetition only, each run capped at "
      f"{meta.get('orm_timeout', 600):.0f} s; '–' where not run.\n")

    write_phases(w, runs)
    w("## Purge, preview and audit verification\n")
    w("| database | accounts | delete purge none s | delete purge thorough s | purge step s (from the run) | "
      "purge result | SQLite raw DELETE with secure_delete=ON s | dry-run (all policies) s | dry-run peak RSS MB | "
      "first run, all policies s | next night's dry-run s | audit verify s | audit log lines | audit log MB |")
    w("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in runs:
        s = run["samples"]
        if not s:
            continue
        purge = first(s.get("thorough:delete"), "purge") or []
        presult = ", ".join(f"{p.get('level')}: {p.get('result')}"
                            + (f" ({p.get('detail')})" if p.get("detail") else "") for p in purge)
        w(f"| {LABELS[run['database']]} | {run['accounts']:,} | {fmt(med(s.get('retention:delete')))} | "
          f"{fmt(med(s.get('thorough:delete')))} | {fmt(med(s.get('thorough:delete'), 'purge_s'))} | "
          f"{presult[:160] or '–'} | {fmt(med(s.get('raw_secure:delete')), '.3f')} | {fmt(med(s.get('dryrun')))} | "
          f"{fmt(max((x.get('maxrss_mb', 0) for x in s.get('dryrun', [])), default=None), '.0f')} | "
          f"{fmt(med(s.get('shoprun')))} | {fmt(med(s.get('dryrun_next')))} | "
          f"{fmt(med(s.get('verify')))} | {fmt(first(s.get('verify'), 'log_lines'), ',')} | "
          f"{fmt((first(s.get('verify'), 'log_bytes') or 0) / 1e6, '.1f')} |")
    w("")
    w("The dry-run column is the preview of the first run (the backlog). 'First run' enforces all the shop's "
      "policies at once on a fresh copy, with purge `standard`; 'next night' is the preview one day later on that "
      "enforced database, "
      "what a nightly preview costs once the backlog is gone. The audit log verified is one repetition's: the "
      "previews, one run per workload, the purge-thorough delete and the shop run, with every batch's keys.\n")

    w("## Data\n")
    w("| database | accounts | source build s ('cached': built by an earlier run and reused) | "
      "due per shop policy (first run) | due the next night |")
    w("| --- | ---: | ---: | --- | --- |")
    for run in runs:
        due = first(run["samples"].get("dryrun"), "due") or {}
        nxt = first(run["samples"].get("dryrun_next"), "due") or {}
        w(f"| {LABELS[run['database']]} | {run['accounts']:,} | {fmt(run['info'].get('build_s'), '.0f', 'cached')} | "
          + ", ".join(f"{k} {v:,}" for k, v in due.items()) + " | "
          + ", ".join(f"{k} {v:,}" for k, v in nxt.items()) + " |")
    w("")
    checked = [r for r in runs if r.get("checks")]
    if checked:
        w("## What the checks cost\n")
        w("`bench/checks_cost.py` (`run.py --checks`): the shop's three policies run for real (purge none, "
          "`--force`) in one Python process on a fresh copy of the backlog, given a copy of the audit log an "
          "earlier real run of the same backlog wrote (so the ratchet has rules to read and compare). `run s` is "
          "`execute_run`'s wall time, without the interpreter's start-up (so each share is of the smaller "
          "figure). How each check is measured:\n")
        w("- **re-identification**: its own time, measured around its statements (`runner._check_reidentification`"
          ", the `reidentification.duration_ms` of the run's JSON); the accounts policy is the only anonymising one "
          "(`on_referenced: anonymise`).")
        w("- **policy ratchet**: `guards.read_history` (streams the audit log for earlier real runs' rules and "
          "counts; also serves the clock and rate guards), `guards.effective_rule` and `guards.rule_changes`, "
          "timed by wrapping them. It grows with the audit log: the log read here is one night's "
          "(`history log MB`).")
        w("- **unreadable dates** and **holds** are terms of the count and batch statements, not separable "
          "steps: the run is repeated with them taken out of the SQL (`no_unreadable`: the readable-date test "
          "TRUE and the beyond-every-date count FALSE; `no_holds`: no `exclude`, no holds over foreign keys, an "
          "empty hold registry) and the cost is the difference of the medians. Without holds the legal-hold rows "
          "go too (`rows` below). A difference smaller than the runs' spread is noise, and can come out "
          "negative.\n")
        w("| database | accounts | variant | runs | run s (median) | [min–max] | reid s | ratchet s | "
          "hold registry s | rows changed | history log MB | load |")
        w("| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for run in checked:
            c = run["checks"]
            for variant, xs in c["samples"].items():
                ok = [x for x in xs if x.get("rc") == 0 and "seconds" in x]
                if not xs:
                    continue

                def tm(name: str, ok: list[dict[str, Any]] = ok) -> str:
                    vals = [x["timers"][name] for x in ok if name in x.get("timers", {})]
                    return fmt(statistics.median(vals), ".3f") if vals else "–"

                rows = sum(p["applied"] for p in ok[0]["policies"].values()) if ok else None
                w(f"| {LABELS[run['database']]} | {run['accounts']:,} | {variant} | {len(ok)}/{len(xs)} | "
                  f"{fmt(med(ok))} | {spread(ok)} | {tm('reidentification')} | {tm('ratchet')} | "
                  f"{tm('holds_registry')} | {fmt(rows, ',')} | "
                  f"{fmt((first(ok, 'history_log_bytes') or 0) / 1e6, '.2f')} | "
                  f"{statistics.mean(c.get('load') or [0]):.1f} |")
        w("")
    startup = results.get("startup")
    if startup:
        w("## Start-up\n")
        w(f"Each {len(startup['help'])} times, alternating: `retention --help`, and `retention run` with the shop's "
          "policies on a 1,000-account SQLite demo they have already been enforced on (nothing due; validation, "
          "reflection, counting, audit log). `imports` is the sum of the top-level imports of that run under "
          "`python -X importtime` (one run). Load: the 1-minute load average before each pair.\n")
        w("| command | median s | [min–max] | peak RSS MB | load |")
        w("| --- | ---: | --- | ---: | ---: |")
        load = statistics.mean(startup.get("load") or [0])
        for key, label in (("help", "`retention --help`"), ("nothing_due", "run, nothing due")):
            w(f"| {label} | {fmt(med(startup[key]), '.3f')} | {spread(startup[key])} | "
              f"{fmt(max((x.get('maxrss_mb') or 0) for x in startup[key]), '.0f')} | {load:.1f} |")
        w(f"\nImports of the nothing-due run: {startup.get('imports_s', 0):.3f} s.\n")
        runs = [x["run_s"] for x in startup["nothing_due"] if x.get("run_s") is not None]
        if startup.get("python") and runs:
            pkgs = startup.get("imports_by_package_s") or {}
            w("Where a nothing-due run's time goes (medians; imports under `python -X importtime`, which "
              "itself adds to them, one run; each package's own modules wherever they were first imported):\n")
            w("| part | s |\n| --- | ---: |")
            w(f"| the interpreter alone (`python -c pass`) | {fmt(med(startup['python']), '.3f')} |")
            for name, sec in list(pkgs.items())[:10]:
                w(f"| import {name} | {sec:.3f} |")
            rest = sum(list(pkgs.values())[10:])
            w(f"| import, all other packages | {rest:.3f} |")
            w(f"| the run itself (`run.end` duration_s: connect, reflect, count, audit) | "
              f"{statistics.median(runs):.3f} |")
            w(f"| the whole process | {fmt(med(startup['nothing_due']), '.3f')} |\n")
    if results.get("partitions"):
        w("## Whole partitions vs row batches\n")
        w("bench/partitions.py: the same rows in a table range-partitioned by year on `happened_at` and in an "
          "unpartitioned copy; 2023, 2024, 2025 evenly; a delete policy (2 years, as of 2026-01-01 UTC) expires "
          "2023. Whole `retention run` processes, fsync'd audit log with every key. Each repetition rebuilds "
          "the tables.\n")
        w("| database | rows | expiring | runs | partition drop s | [min–max] | row batches s | [min–max] | ratio | "
          "batch sizes (row run) | load |")
        w("| --- | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | --- | ---: |")
        for prun in results["partitions"]:
            sp, sr = prun["samples"]["partition"], prun["samples"]["rows"]
            part, rows_ = med(sp), med(sr)
            sizes = first(sr, "batch_sizes") or {}
            w(f"| {LABELS[prun['database']]} | {prun['rows']:,} | {(prun.get('expiring') or [0])[0]:,} | {len(sp)} | "
              f"{fmt(part, '.3f')} | {spread(sp)} | {fmt(rows_, '.3f')} | {spread(sr)} | "
              f"{fmt(ratio(rows_, part), '.1f')} | {sizes} | {statistics.mean(prun.get('load') or [0]):.1f} |")
        w("")
    plan = results.get("plan_size")
    if plan:
        w("## Plan files: size and time\n")
        w(f"`bench/plan_size.py` (SQLite, the shipped policy file, the same backlog), {plan['when']}, load "
          f"{plan['load']:.1f}:\n")
        w(f"```\n{plan['command']}\n```\n")
        w("| what | measured |\n| --- | --- |")
        for what, value in plan["rows"]:
            w(f"| {what} | {value} |")
        w("")
    reid = results.get("reid_cost")
    if reid:
        w("## The re-identification check alone\n")
        w(f"`bench/reid_cost.py` (see [REIDENTIFICATION.md](REIDENTIFICATION.md)), {reid['when']}, load "
          f"{reid['load']:.1f}. `run` and `preview`: whole `retention run --force` processes; `check`: what the "
          "run reports (`reidentification.duration_ms`). Medians of "
          f"{reid.get('repeat')}.\n")
        w(f"```\n{reid['command']}\n```\n")
        w("| database | policy | accounts | anonymised rows checked | run s | preview s | check s | check / run | "
          "k | below k | linkable |")
        w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in reid["rows"]:
            w(f"| {LABELS[r['database']]} | {r['policy']} | {reid['accounts']:,} | {r['rows']:,} | {r['run_s']:.2f} | "
              f"{r['preview_s']:.2f} | {r['check_s']:.3f} | {r['check_s'] / r['run_s']:.1%} | {r['k']} | "
              f"{r['below_k']:,} | {r['linkable']:,} |")
        w("")
    w("Every sample (times, rows, exit codes, RSS, copy times) is in `bench/results.json`.\n")
    return "\n".join(md)


def store_extra(results_path: Path, report_path: Path, key: str, value: dict[str, Any]) -> None:
    """Add a companion script's figures (plan_size.py, reid_cost.py) to results.json under ``key``
    and rewrite RESULTS.md, which shows them in their own section."""
    results = json.loads(results_path.read_text()) if results_path.exists() else {"meta": {}, "runs": []}
    results[key] = value | {"command": command_line(), "load": os.getloadavg()[0],
                            "when": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    results_path.write_text(json.dumps(results, indent=1))
    report_path.write_text(render(results))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, nargs="*", default=[100_000],
                    help="demo sizes (default 100000; up to 10000000; none: only --startup/--partition-rows)")
    ap.add_argument("--databases", nargs="+", default=["sqlite"], choices=list(TARGETS))
    ap.add_argument("--repeat", type=int, default=3, help="repetitions per measurement (median reported)")
    ap.add_argument("--as-of", default=DEFAULT_AS_OF)
    ap.add_argument("--backlog-years", type=int, default=2,
                    help="build the demo up to this many years before --as-of (`retention demo --as-of`), "
                         "so the run meets a first run's backlog: ~35%% of accounts, ~90%% of closed tickets "
                         "due (default 2; 0 = a shop enforced until yesterday, ~7%% of accounts due)")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS),
                    help="workloads (default: all): delete = correspondence policy, delete_invoices = invoices")
    ap.add_argument("--orm-max-accounts", type=int, default=1_000_000,
                    help="run the ORM peer only at sizes up to this (default 1000000; above 100000 in the first "
                         "repetition only)")
    ap.add_argument("--startup", action="store_true",
                    help="also time `retention --help` and a run with nothing due (and the import time)")
    ap.add_argument("--startup-runs", type=int, default=10, help="runs of each start-up measurement (default 10)")
    ap.add_argument("--partition-rows", type=int, nargs="*", default=[],
                    help="also the partition workload (bench/partitions.py) at these sizes, on the servers "
                         "among --databases")
    ap.add_argument("--checks", action="store_true",
                    help="also the checks' cost (bench/checks_cost.py) at every size and database")
    ap.add_argument("--checks-repeat", type=int, default=2,
                    help="repetitions of each checks variant (default 2; each is a real run on a fresh copy)")
    ap.add_argument("--checks-only", action="store_true",
                    help="with --resume: measure only the checks' cost of the given databases and sizes again, "
                         "replacing that part of their earlier results (nothing else is run)")
    ap.add_argument("--orm-timeout", type=float, default=600, help="cap on one ORM peer run, seconds")
    ap.add_argument("--workdir", default="/tmp/rtbench", help="databases, policy files and audit logs")
    ap.add_argument("--results", default=str(HERE / "results.json"))
    ap.add_argument("--report", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--retention", default=None, help="the retention command (default: .venv/bin/retention)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the demo sources even when cached")
    ap.add_argument("--resume", action="store_true",
                    help="keep database/size pairs already in --results and measure only the missing ones")
    ap.add_argument("--redo", action="store_true",
                    help="with --resume: measure the given databases and sizes again, replacing their earlier "
                         "results (the others are kept)")
    ap.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from --results and stop")
    ap.add_argument("--keep", action="store_true", help="keep per-repetition policy files and audit logs")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    if args.checks_only and not args.resume:
        ap.error("--checks-only replaces part of earlier results: use it with --resume")
    if args.report_only:
        results = json.loads(Path(args.results).read_text())
        Path(args.report).write_text(render(results))
        print(goals_text(results))
        return 0
    return Bench(args).main()


if __name__ == "__main__":
    sys.exit(main())

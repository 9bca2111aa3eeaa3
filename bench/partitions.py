"""The partition workload of bench/run.py: whole partitions vs row batches on the same data.

Two tables with the same N rows, events spread evenly over 2023, 2024 and 2025: `events`,
range-partitioned by year on `happened_at` (PostgreSQL declarative partitions; MariaDB
`RANGE (YEAR(happened_at))`), and `events_flat`, the same columns unpartitioned. A delete policy
keeping events 2 years, run as of 2026-01-01T00:00:00 UTC: the cut-off is 2024-01-01 00:00:00,
the upper bound of the 2023 partition, so one year (a third of the rows) expires. On `events`
that partition goes in one statement (engine/partitions.py); on `events_flat` the same rows go
in row batches. Both runs are whole `retention run` processes with the fsync'd audit log (the
keys of every removed row, in both cases). Each repetition rebuilds both tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

AS_OF = "2026-01-01T00:00:00"
SPAN_S = 94_694_400  # 2023-01-01 .. 2026-01-01 in seconds
YEARS = (2023, 2024, 2025)

POLICY = """version: 1
timezone: UTC
databases:
  events:
    url: {url}
    purge: none
audit:
  path: {audit}
  key_env: RETENTION_AUDIT_KEY
policies:
  - name: events_partitioned
    table: events
    key: id
    after: happened_at
    retain: 2 years
    action: delete
    max_fraction: 1.0
  - name: events_rows
    table: events_flat
    after: happened_at
    retain: 2 years
    action: delete
    max_fraction: 1.0
"""


def write_policy(path: Path, url: str, audit: Path) -> Path:
    path.write_text(POLICY.format(url=url, audit=audit))
    return path


def build(engine: sa.Engine, rows: int) -> None:
    """(Re)create both tables with the same ``rows`` rows, then analyse them."""
    step = SPAN_S / rows
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS events")
        conn.exec_driver_sql("DROP TABLE IF EXISTS events_flat")
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "CREATE TABLE events (id bigint NOT NULL, happened_at timestamp NOT NULL, account_id bigint, "
                "body text, PRIMARY KEY (id, happened_at)) PARTITION BY RANGE (happened_at)")
            for year in YEARS:
                conn.exec_driver_sql(f"CREATE TABLE events_{year} PARTITION OF events "
                                     f"FOR VALUES FROM ('{year}-01-01') TO ('{year + 1}-01-01')")
            conn.exec_driver_sql(
                "INSERT INTO events SELECT g, timestamp '2023-01-01' + (g - 1) * interval '1 second' * "
                f"{step!r}, mod(g, 100000), 'a message of some length, as a ticket would have' "
                f"FROM generate_series(1, {rows}) g")
            conn.exec_driver_sql(
                "CREATE TABLE events_flat (id bigint PRIMARY KEY, happened_at timestamp NOT NULL, "
                "account_id bigint, body text)")
        else:
            parts = ", ".join(f"PARTITION p{y} VALUES LESS THAN ({y + 1})" for y in YEARS)
            conn.exec_driver_sql(
                "CREATE TABLE events (id BIGINT NOT NULL, happened_at DATETIME NOT NULL, account_id BIGINT, "
                "body TEXT, PRIMARY KEY (id, happened_at)) "
                f"PARTITION BY RANGE (YEAR(happened_at)) ({parts}, PARTITION pmax VALUES LESS THAN MAXVALUE)")
            conn.exec_driver_sql(
                "INSERT INTO events SELECT seq, TIMESTAMP '2023-01-01 00:00:00' + INTERVAL "
                f"FLOOR((seq - 1) * {step!r}) SECOND, MOD(seq, 100000), "
                f"'a message of some length, as a ticket would have' FROM seq_1_to_{rows}")
            conn.exec_driver_sql(
                "CREATE TABLE events_flat (id BIGINT PRIMARY KEY, happened_at DATETIME NOT NULL, "
                "account_id BIGINT, body TEXT)")
        conn.exec_driver_sql("CREATE INDEX events_after ON events (happened_at)")
        conn.exec_driver_sql("CREATE INDEX events_flat_after ON events_flat (happened_at)")
        conn.exec_driver_sql("INSERT INTO events_flat SELECT * FROM events")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("events", "events_flat"):
            conn.exec_driver_sql(f"VACUUM ANALYZE {table}" if engine.dialect.name == "postgresql"
                                 else f"ANALYZE TABLE {table}")


def expiring(engine: sa.Engine) -> tuple[int, int]:
    """Rows of each table before the cut-off (plain SQL): what both runs must remove."""
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(  # type: ignore[return-value]
            f"SELECT count(*) FROM {t} WHERE happened_at < '2024-01-01'")).scalar_one()
            for t in ("events", "events_flat"))


def sample(res: dict[str, Any]) -> dict[str, Any]:
    """A bench sample from a `retention run --policy P --format json` process."""
    import json

    out: dict[str, Any] = {"seconds": res["seconds"], "rc": res["rc"], "maxrss_mb": res["maxrss_mb"]}
    try:
        p = json.loads(res["stdout"])["policies"][0]
        out.update(rows=p["applied"], inner_s=p.get("duration_s"), partitions=p.get("partitions"),
                   batch_sizes=p.get("batch_sizes"))
    except (ValueError, KeyError, IndexError):
        out.update(rows=None, error=res["stderr"][-300:])
    return out

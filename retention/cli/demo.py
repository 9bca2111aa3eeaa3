"""`retention demo`: the demo shop."""


from __future__ import annotations

import sys
from pathlib import Path

import click

from retention.cli.app import (
    _global_options,
    _guard,
    _State,
    main,
)
from retention.errors import InvalidInput


@main.command()
@click.option("--path", "path", default="var/demo.db", show_default=True, type=click.Path(dir_okay=False),
              help="SQLite file to create.")
@click.option("--accounts", default=10_000, show_default=True, type=click.IntRange(1, 10_000_000))
@click.option("--seed", default=42, show_default=True, type=int, help="Same seed, same shop.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@click.option("--url", "url", metavar="URL",
              help="Build in this database instead of a SQLite file (PostgreSQL or MariaDB; it must hold no "
                   "shop data yet).")
@click.option("--as-of", "as_of", metavar="DATE",
              help="Build the shop as it stood on DATE (YYYY-MM-DD, not in the future; default today). "
                   "An earlier date gives a shop whose terms have not been enforced since: a first-run backlog.")
@click.option("--partitioned", is_flag=True,
              help="Orders in a partition per year (PostgreSQL --url only): the orders policy then drops "
                   "each year past its term in one statement, where no order in it is held.")
@_global_options()
@click.pass_obj
@_guard
def demo(state: _State, path: str, accounts: int, seed: int, overwrite: bool, as_of: str | None,
         url: str | None, partitioned: bool) -> None:
    """Build a demo web-shop database (SQLite, or --url) with ten years of Dutch test data.

    \b
    Examples:
      retention demo                                   var/demo.db, 10,000 accounts, up to today
      retention demo --accounts 1000000 --path big.db  a million accounts
      retention demo --as-of 2024-11-24                two years of backlog for tonight's run
      retention demo --url postgresql+psycopg://postgres@localhost/shop
      retention demo --url postgresql+psycopg://postgres@localhost/shop --partitioned
    """
    from retention import demo as demo_mod

    today = demo_mod.parse_today(as_of) if as_of else None
    if partitioned and url is None:
        raise InvalidInput("demo: --partitioned needs a PostgreSQL --url: SQLite has no partitions")
    if url is not None:
        summary = demo_mod.build_in(url, accounts=accounts, seed=seed, today=today, partitioned=partitioned)
        counts = ", ".join(f"{n} {t}" for t, n in summary.counts.items())
        click.echo(f"{summary.url}: {counts}")
        return
    target = Path(path)
    if overwrite and target.exists():
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(str(target) + suffix).unlink(missing_ok=True)
    if sys.stderr.isatty():
        with click.progressbar(length=accounts, label="accounts", file=sys.stderr) as bar:
            seen = [0]

            def step(done: int) -> None:
                bar.update(done - seen[0])
                seen[0] = done

            summary = demo_mod.build_demo(target, accounts=accounts, seed=seed, today=today, progress=step)
    else:
        summary = demo_mod.build_demo(target, accounts=accounts, seed=seed, today=today)
    counts = ", ".join(f"{n} {t}" for t, n in summary.counts.items())
    click.echo(f"{target}: {counts}")

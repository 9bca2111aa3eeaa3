"""Session settings the job gives its own PostgreSQL connections, beyond the timeouts
(tests/test_timeouts.py): JIT compilation is off, read-only previews stay read-only after a
transaction ends (the settings are committed with the connection, not rolled back with the
first transaction)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from retention.databases import dialects


@pytest.mark.parametrize("readonly", [False, True])
def test_jit_is_off_in_every_session_of_the_job(db_factory: Any, readonly: bool) -> None:
    """A 1M-account preview spent ~2 s of 9 compiling its counting statements; off, it took 7."""
    db = db_factory("postgresql")
    engine = dialects.create_engine(db.url, readonly=readonly)
    try:
        for _ in range(2):  # a second transaction on the same pooled connection: still off
            with engine.connect() as conn:
                assert conn.execute(sa.text("SHOW jit")).scalar_one() == "off"
                assert conn.execute(sa.text("SHOW transaction_read_only")).scalar_one() == \
                    ("on" if readonly else "off")
                conn.rollback()
    finally:
        engine.dispose()

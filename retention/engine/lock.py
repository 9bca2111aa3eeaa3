"""The run lock: one run at a time, on this host and across hosts sharing a database server.

A file lock (``flock``) next to the audit log is released by the kernel when the process
dies, so a killed run never leaves a stale lock behind. Server databases add an advisory
lock (``pg_try_advisory_lock`` / ``GET_LOCK``) held on a dedicated connection, for two hosts
pointed at the same server.

Only a real run takes it: a preview (``--dry-run``) writes nothing, so it neither needs the
lock nor may it make the nightly run exit 4 by holding it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

import sqlalchemy as sa

from retention.databases import dialects
from retention.errors import AuditError, LockHeld

LOCK_NAME = "retention-run"


def server_lock_name(engine: sa.Engine) -> str:
    """The advisory lock's name: per database, since MariaDB's GET_LOCK is server-wide and two
    jobs on two databases of one server must not block each other."""
    return f"{LOCK_NAME}:{engine.url.database or ''}"[:64]


class RunLock:
    def __init__(self, audit_path: Path, engines: dict[str, sa.Engine]) -> None:
        self.path = audit_path.with_name(audit_path.name + ".lock")
        self.engines = engines
        self._fd: int | None = None
        self._conns: list[sa.Connection] = []

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise AuditError(f"cannot create the lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise LockHeld(f"another retention run holds the lock {self.path}; nothing was touched") from None
        try:
            for name, engine in self.engines.items():
                if engine.dialect.name == "sqlite":
                    continue
                conn = engine.connect()
                if not dialects.try_server_lock(conn, server_lock_name(engine)):
                    conn.close()
                    raise LockHeld(
                        f"another retention run (another host?) holds the server lock on database '{name}'; "
                        "nothing was touched"
                    )
                conn.commit()
                self._conns.append(conn)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for conn in self._conns:
            try:
                dialects.release_server_lock(conn, server_lock_name(conn.engine))
                conn.commit()
                conn.close()
            except Exception:
                conn.invalidate()  # closing the session releases the lock anyway
        self._conns.clear()
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

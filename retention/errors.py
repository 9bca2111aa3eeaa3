"""One error hierarchy. The CLI turns these into messages and exit codes in one place.

Exit codes are part of the contract (CONTRACT.md section 1): cron jobs and monitoring
key on them, so every error carries its own.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_BLOCKED = 3
EXIT_LOCKED = 4
# Everything was enforced but the purge could not finish (a long transaction held it back):
# not a failure, the next run retries; its own code so that a job does not retry at once.
EXIT_PURGE_PENDING = 5


class RetentionError(Exception):
    """Base of every error meant for a user: its text is the whole message."""

    exit_code = EXIT_FAILED


class InvalidInput(RetentionError):
    """Anything wrong with what the user gave us; nothing has been touched."""

    exit_code = EXIT_INVALID


class PolicyFileError(InvalidInput):
    """One or more problems in a policy file, all reported at once.

    Each problem is already a full line: ``file:line: policy 'x', key 'y': what is wrong``.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UsageError(InvalidInput):
    """A bad command-line argument (e.g. a future --as-of on a real run)."""


class DatabaseUnreachable(InvalidInput):
    """A database could not be connected to. The message shows the URL without its password."""


class SchemaError(InvalidInput):
    """The policies name tables, columns or relations the database does not have."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class LockHeld(RetentionError):
    """Another run holds the lock."""

    exit_code = EXIT_LOCKED


class RunFailed(RetentionError):
    """The run failed part-way; committed batches stay committed and audited."""

    exit_code = EXIT_FAILED


class BatchCheckFailed(RunFailed):
    """A batch changed other rows than it selected; it was rolled back and its policy stopped."""


class AuditError(RetentionError):
    """The audit log cannot be written or read; the run stops before touching data."""

    exit_code = EXIT_FAILED


class AuditChainBroken(RetentionError):
    """`audit verify` found a break in the chain."""

    exit_code = EXIT_FAILED

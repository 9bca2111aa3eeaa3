"""Plan, approve, apply: a DPO's sign-off bound to exactly the keys a run may change."""

from retention.errors import EXIT_BLOCKED, RetentionError


class PlanRefused(RetentionError):
    """A plan that may not be applied (unapproved, tampered, stale, or its rules changed): exit 3,
    nothing touched. Malformed plan files are invalid input instead (exit 2)."""

    exit_code = EXIT_BLOCKED

"""The run: validation, planning, batched execution, recovery, locking, monitor pings."""

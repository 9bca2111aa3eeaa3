"""The command line (CONTRACT.md section 1): options in, plain function calls, results out.

Only this package imports click. :mod:`retention.cli.app` holds the group, the global options
and the one place where errors become messages and exit codes; each other module adds the
commands of one concept to it when imported.
"""

from retention.cli import approval, audit, demo, rights, run  # noqa: F401  (registers the commands)
from retention.cli.app import main

__all__ = ["main"]

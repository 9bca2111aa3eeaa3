import sys

from retention.cli import main

sys.exit(main(prog_name="retention"))

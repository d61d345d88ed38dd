"""`python -m hi_core` runs the command line (its exit codes: `cli_exits`)."""

import sys

from .cli_exits import report_interrupt

try:
    from .cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C while the command line's modules import, before `main` handles it
    code = report_interrupt()
sys.exit(code)

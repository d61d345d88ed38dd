"""`python -m hi_core` runs the command line (its exit codes: `hi_core.cli.exits`)."""

import os
import signal
import sys

from .cli.exits import report_interrupt


def _interrupted_while_importing(signum: int, frame: object) -> None:
    """Ctrl-C while torch and transformers import (the first seconds): nothing is written yet, so leave at once. A
    KeyboardInterrupt raised inside torch's native initialization can abort the process (SIGABRT) instead."""
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(130)


previous = signal.signal(signal.SIGINT, _interrupted_while_importing)
try:
    from .cli.main import main
finally:
    signal.signal(signal.SIGINT, previous)
try:
    code = main()
except KeyboardInterrupt:  # between the import and `main`'s own handling
    code = report_interrupt()
sys.exit(code)

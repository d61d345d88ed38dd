"""The one exception for bad user input.

Library code raises `InputError` with a message a user can act on (what was wrong, with which
value, what is accepted). The CLI turns it into one stderr line and exit code 2; the app into a
visible error. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a missing file, a mask of the wrong size, an unknown option, ..."""

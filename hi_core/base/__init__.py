"""What every layer uses: the one error type users see (`errors`: InputError and the checks that raise it),
writing results whole or not at all (`outputs`), and the rank of this process in a distributed run
(`distributed`).

May import: nothing of hi_core.
"""

"""The chaos suite: real daemons killed at random against a real PostgreSQL, then invariants checked.

Run it with ``make chaos`` (``python -m tests.chaos.harness --seconds N``); ``make test`` runs a
short version (tests/test_chaos_short.py).  pytest does not collect this directory.
"""

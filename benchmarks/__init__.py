"""parrot-ipc's benchmark suite (``python -m benchmarks``) and standalone benchmark scripts.

Plain scripts, not tests: ``suite.py`` (the entry point), ``scenarios.py``, ``servers.py``,
``floor.py`` (the floor server); ``store_commit.py``, ``hostile.py`` and ``fuzz_live.py`` run on
their own.
"""

"""Fixtures of the federation tests: see :mod:`fed_harness`."""

from fed_harness import nats_server, nodes

__all__ = ["nats_server", "nodes"]

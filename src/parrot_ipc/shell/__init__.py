"""The trio shell: the only layer that awaits (the clients aside).

- :mod:`.server`: :class:`~.server.BrokerServer`: accept loop, ``max_connections`` refusal,
  ticker, the core's effects (Push, Wake, Drop), shutdown and drain, policy reload.
- :mod:`.connection`: one peer's reader, writer and outbox.
- :mod:`.phase`: a connection's state as one table (:data:`~.phase.TRANSITIONS`).
- :mod:`.commit`: group commit on the event loop or in a worker thread (the bookkeeping is
  :class:`parrot_ipc.store.committer.Committer`'s).
- :mod:`.supervisor`: signals (SIGTERM, SIGINT, SIGHUP) and sd_notify(3).
- :mod:`.clock`: the core's wall clock derived from trio's, so ``MockClock`` drives it.
"""

"""Faults on the federation path: nats-server stopped mid-stream, and SIGKILL of each relay and
each broker during a 5,000-message transfer. Counted by idempotency key: 0 lost, 0 doubled."""

from __future__ import annotations

import collections
import contextlib
import time

from fed_harness import Node, drain

from parrot_ipc import BrokerUnavailable


class Sender:
    """alice@h1, sending with an idempotency key per message; reconnects (and takes her name
    again) when her broker was killed, and resends the same key: never a second message."""

    def __init__(self, node: Node, name: str = "alice") -> None:
        self.node, self.name = node, name
        self.client = node.client(name)

    def send(self, to: str, key: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.send(to, key, idempotency_key=key)
                return
            except (BrokerUnavailable, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                with contextlib.suppress(BrokerUnavailable, OSError):
                    self.client = self.node.client(self.name)


def _count(node: Node, name: str, want: int, timeout_s: float) -> collections.Counter[str]:
    """Drain ``name``'s mailbox until ``want`` arrived, then a while longer for any repeat."""
    client = node.client(name)
    got = drain(client, want, timeout_s)
    got += drain(client, want + 1, 5.0)  # lease (2 s) and ack-wait (2 s) redeliveries show up here
    return collections.Counter(m.content for m in got)


def _alice_and_bob(nodes) -> tuple[Node, Node, Sender]:
    """Nodes h1 and h2, bob registered on h2 (so mail for him is delivered, not unclaimed) and
    alice sending from h1."""
    h1, h2 = nodes("h1"), nodes("h2")
    h2.client("bob")
    return h1, h2, Sender(h1)


def _assert_each_key_once(h2: Node, keys: list[str], timeout_s: float, label: str) -> None:
    """Every key reached bob@h2 exactly once: none lost, none doubled; prints the tally."""
    counts = _count(h2, "bob", len(keys), timeout_s)
    lost = [k for k in keys if counts[k] == 0]
    doubled = {k: n for k, n in counts.items() if n > 1}
    assert (lost, doubled) == ([], {}), f"lost {len(lost)} (e.g. {lost[:5]}), doubled {len(doubled)}"
    assert sum(counts.values()) == len(keys)
    print(f"{label}: sent {len(keys)}, delivered {sum(counts.values())}, lost {len(lost)}, doubled {len(doubled)}")


def test_nats_down_mid_stream_loses_and_doubles_nothing(nodes) -> None:
    h1, h2, alice = _alice_and_bob(nodes)
    keys = [f"k{i}" for i in range(1000)]
    for i, key in enumerate(keys):
        if i == 300:
            h1.nats.stop()
        alice.send("bob@h2", key)  # still accepted: it goes to the outbox
    h1.nats.start()
    _assert_each_key_once(h2, keys, 60, "NATS down")


def test_sigkill_of_each_relay_and_each_broker_loses_and_doubles_nothing(nodes) -> None:
    h1, h2, alice = _alice_and_bob(nodes)
    keys = [f"k{i}" for i in range(5000)]
    faults = {1000: (h1, "relay"), 2000: (h2, "relay"), 3000: (h2, "broker"), 4000: (h1, "broker")}
    for i, key in enumerate(keys):
        if i in faults:
            node, which = faults[i]
            node.kill(which)  # SIGKILL
            getattr(node, f"start_{which}")()
        alice.send("bob@h2", key)
    _assert_each_key_once(h2, keys, 120, "SIGKILL x4")


def test_the_outbox_holds_mail_while_the_far_side_is_down(nodes) -> None:
    h1, h2 = nodes("h1"), nodes("h2")
    h2.kill("relay")
    alice = Sender(h1)
    for i in range(50):
        alice.send("bob@h2", f"k{i}")
    h2.start_relay()
    counts = _count(h2, "bob", 50, 30)
    assert counts == collections.Counter({f"k{i}": 1 for i in range(50)})

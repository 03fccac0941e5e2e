"""What the bridge tells the agent when it cannot use the broker: a listener it does not trust
gets the doctor hint (issue 13, finding 5), never "Is a broker running? Start one"."""

from __future__ import annotations

from parrot_ipc.client.wire import unreachable_hint
from parrot_ipc.errors import BrokerUnavailable, UntrustedBroker


def test_an_untrusted_listener_gets_the_doctor_hint_not_the_start_hint() -> None:
    exc = UntrustedBroker("/tmp/x/mcp.sock", 65534, 4242, "the listener is uid 65534, not root")
    hint = unreachable_hint(exc, "/tmp/x/mcp.sock")
    assert "parrot-ipc doctor" in hint
    assert "Start one" not in hint


def test_a_missing_broker_gets_the_start_hint_naming_its_socket() -> None:
    exc = BrokerUnavailable("/tmp/x/mcp.sock", "No such file or directory")
    hint = unreachable_hint(exc, "/tmp/x/mcp.sock")
    assert hint.startswith("Is a broker running? Start one with: parrot-ipc serve")
    assert "--socket /tmp/x/mcp.sock" in hint

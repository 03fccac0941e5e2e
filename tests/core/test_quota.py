"""Sender quota (issue 14): per sending UID, the messages and bytes it has queued in other
mailboxes; counted on enqueue, given back on ack, expiry and release, rebuilt at start."""

from __future__ import annotations

from core_harness import BROKER_UID, AuditLog, FakeClock, Harness, Peer

from parrot_ipc.core import Broker, BrokerConfig, DefaultPolicy

MAILBOX_FULL = -32007
OTHER = 0  # root: the default policy admits the broker UID and root


def _cfg(**kw: int) -> BrokerConfig:
    return BrokerConfig(max_sender_queued_messages=kw.get("msgs", 3), max_sender_queued_bytes=kw.get("bytes", 10**6),
                        max_unclaimed_mailboxes=100)


def _a_sent_to_b(make_harness: type[Harness], msgs: int, sent: int = 1) -> tuple[Harness, Peer, Peer]:
    """A harness whose sender quota is ``msgs`` messages, with ``a`` and ``b`` registered (both as
    BROKER_UID) and ``sent`` messages "1", "2", ... already sent from a to b."""
    h = make_harness(_cfg(msgs=msgs))
    a, b = h.register("a"), h.register("b")
    for i in range(1, sent + 1):
        a.ok("send", {"to": "b", "content": str(i)})
    return h, a, b


def test_past_the_message_quota_sends_get_32007_with_the_quota(make_harness: type[Harness]) -> None:
    h = make_harness(_cfg(msgs=3))
    a, b = h.register("a"), h.register("b")
    for i in range(3):
        a.ok("send", {"to": "b", "content": f"m{i}"})
    err = a.err("send", {"to": "b", "content": "one too many"})
    assert err["code"] == MAILBOX_FULL and err["data"]["reason"] == "sender_quota_exceeded"
    assert err["data"]["queued_messages"] == 3 and err["data"]["max_sender_queued_messages"] == 3
    assert [m["content"] for m in b.receive()] == ["m0", "m1", "m2"]  # nothing lost
    assert h.broker.quota.usage(BROKER_UID) == (3, 6)


def test_the_byte_quota_counts_content_bytes_over_all_mailboxes(make_harness: type[Harness]) -> None:
    h = make_harness(_cfg(msgs=100, bytes=10))
    a = h.register("a")
    h.register("b")
    h.register("c")
    a.ok("send", {"to": "b", "content": "12345"})
    a.ok("send", {"to": "c", "content": "12345"})  # 10 bytes in two mailboxes: at the quota
    err = a.err("send", {"to": "c", "content": "x"})
    assert err["data"]["reason"] == "sender_quota_exceeded" and err["data"]["queued_bytes"] == 10


def test_ack_gives_the_charge_back(make_harness: type[Harness]) -> None:
    h, a, b = _a_sent_to_b(make_harness, msgs=2, sent=2)
    assert a.err("send", {"to": "b", "content": "3"})["data"]["reason"] == "sender_quota_exceeded"
    msgs = b.receive(max=1)
    assert h.broker.quota.usage(BROKER_UID) == (2, 2)  # leased is still queued
    b.ok("ack", {"ids": [m["id"] for m in msgs]})
    assert h.broker.quota.usage(BROKER_UID) == (1, 1)
    a.ok("send", {"to": "b", "content": "3"})


def test_a_lease_running_out_keeps_the_charge(make_harness: type[Harness]) -> None:
    h, _, b = _a_sent_to_b(make_harness, msgs=5)
    b.receive()
    h.clock.advance(h.broker.config.lease_s + 1)
    h.broker.tick()
    assert h.broker.quota.usage(BROKER_UID) == (1, 1)


def test_expired_unclaimed_mail_gives_the_charge_back(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(max_sender_queued_messages=1, unclaimed_mail_ttl_s=100))
    a = h.register("a")
    a.ok("send", {"to": "nobody", "content": "hello"})
    assert a.err("send", {"to": "nobody", "content": "again"})["data"]["reason"] == "sender_quota_exceeded"
    h.clock.advance(10_000)
    h.broker.tick()
    assert h.broker.quota.usage(BROKER_UID) == (0, 0)
    a.ok("send", {"to": "nobody", "content": "again"})


def test_release_gives_the_charge_back(make_harness: type[Harness]) -> None:
    h, _, b = _a_sent_to_b(make_harness, msgs=1)
    b.ok("release", {"instance_id": "b"})
    assert h.broker.quota.usage(BROKER_UID) == (0, 0)


def test_the_quota_is_per_uid_and_mail_to_ones_own_name_is_free(make_harness: type[Harness]) -> None:
    h = make_harness(_cfg(msgs=1))
    a, other = h.register("a"), h.register("o", uid=OTHER)
    a.ok("send", {"to": "o", "content": "1"})
    assert a.err("send", {"to": "o", "content": "2"})["data"]["reason"] == "sender_quota_exceeded"
    other.ok("send", {"to": "a", "content": "from the other uid"})  # its own quota
    a.ok("send", {"to": "a", "content": "note to self"})  # not charged
    assert h.broker.quota.usage(OTHER) == (1, 18)


def test_refusals_are_audited_once_per_stretch(make_harness: type[Harness]) -> None:
    h, a, b = _a_sent_to_b(make_harness, msgs=1)
    for _ in range(5):
        a.err("send", {"to": "b", "content": "x"})
    assert len(h.audit.named("sender_quota_exceeded")) == 1
    b.ok("ack", {"ids": [m["id"] for m in b.receive()]})
    a.ok("send", {"to": "b", "content": "2"})  # ends the stretch
    a.err("send", {"to": "b", "content": "x"})
    assert len(h.audit.named("sender_quota_exceeded")) == 2


def test_broadcast_skips_recipients_past_the_quota(make_harness: type[Harness]) -> None:
    h = make_harness(_cfg(msgs=2))
    a = h.register("a")
    for n in ("b", "c", "d"):
        h.register(n)
    got = a.ok("broadcast", {"content": "hi"})
    assert len(got["recipients"]) == 2
    assert h.broker.quota.usage(BROKER_UID) == (2, 4)


def test_the_charges_are_rebuilt_from_the_store_at_start(make_harness: type[Harness]) -> None:
    h = make_harness(_cfg(msgs=3))
    a, other = h.register("a"), h.register("o", uid=OTHER)
    a.ok("send", {"to": "o", "content": "one"})
    a.ok("send", {"to": "o", "content": "two"})
    other.ok("send", {"to": "a", "content": "three"})
    a.ok("send", {"to": "a", "content": "self"})
    again = Broker(config=_cfg(msgs=3), store=h.broker.store, policy=DefaultPolicy(BROKER_UID),
                   clock=FakeClock(h.clock.now), audit=AuditLog())
    assert again.quota.usage(BROKER_UID) == (2, 6)
    assert again.quota.usage(OTHER) == (1, 5)


def test_the_mailbox_bound_applies_to_a_held_name(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(max_mailbox_messages=2))
    a = h.register("a")
    h.register("b")
    a.ok("send", {"to": "b", "content": "1"})
    a.ok("send", {"to": "b", "content": "2"})
    assert a.err("send", {"to": "b", "content": "3"})["data"]["reason"] == "mailbox_full"

"""The broker's ``admin_stats`` counters (core/stats.py): a bounded ring fed by the audit path,
routine events counted but not kept, rates over a sliding window (issue 16, ``top``)."""

from __future__ import annotations

from parrot_ipc.core.stats import RING_EVENTS, Stats


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_ring_is_bounded_and_keeps_the_newest_non_routine_events() -> None:
    clock, seen = FakeClock(), []
    st = Stats(clock, ring_events=5)
    sink = st.tee(lambda ev, f: seen.append(ev))
    for i in range(8):
        sink("rate_limited", {"uid": 1000, "n": i})
        sink("peer_admitted", {"uid": 1000})
    assert [f["n"] for _, ev, f in st.recent] == [3, 4, 5, 6, 7]
    assert all(ev == "rate_limited" for _, ev, _ in st.recent)
    assert st.event_counts == {"rate_limited": 8, "peer_admitted": 8}
    assert len(seen) == 16  # every event still reaches the real sink
    assert Stats(clock).recent.maxlen == RING_EVENTS


def test_the_ring_keeps_a_copy_of_the_fields() -> None:
    st = Stats(FakeClock())
    fields = {"uid": 1}
    st.record("peer_refused", fields)
    fields["uid"] = 2
    assert st.recent[0][2] == {"uid": 1}


def test_rates_average_over_the_window_and_forget_older_seconds() -> None:
    clock = FakeClock()
    st = Stats(clock, window_s=10)
    st.count(queued=20)
    clock.t += 1
    st.count(queued=10, acked=5)
    assert st.rates() == (3.0, 0.5)
    clock.t += 9.5  # the first second has left the window
    assert st.rates() == (1.0, 0.5)
    clock.t += 5
    assert st.rates() == (0.0, 0.0)
    assert (st.messages_in, st.messages_out) == (30, 5)

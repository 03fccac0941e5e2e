"""THE crash test: SIGKILL the broker in the middle of a load, restart it, lose nothing.

4 sender threads push 5,000 messages (each with an idempotency key) to 2 receivers, which
receive and ack all along. The broker is SIGKILLed mid-load and restarted on the same state
dir. Each sender then re-authenticates with its saved token and re-sends, with the same key,
every message that got no response. The receivers drain and ack.

Pass: every message that ever got a ``send`` response is received; after dedupe by message id
no message arrives twice (duplicate *deliveries* are allowed and counted); and no idempotency
key maps to two message ids. The counts are printed (``pytest -s``) and written to
``crash_counts.json`` in the test's tmp dir.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from parrot_ipc import Client, ParrotError

from .conftest import BrokerProcess

SENDERS = 4
RECEIVERS = 2
TOTAL = 5000
PER_SENDER = TOTAL // SENDERS
KILL_AFTER_RESPONSES = 2000
BROKEN = (ParrotError, OSError, TimeoutError)  # BrokerUnavailable is a ParrotError


def test_sigkill_mid_load_loses_nothing(broker_proc: BrokerProcess, tmp_path: Path) -> None:
    t_start = time.monotonic()
    broker_proc.start()
    s = broker_proc.socket
    senders = [f"sender{i}" for i in range(SENDERS)]
    receivers = [f"recv{i}" for i in range(RECEIVERS)]
    tokens: dict[str, str] = {}
    for name in senders + receivers:
        with Client(s) as c:
            tokens[name] = c.get_token(name).token

    responses: dict[str, dict[str, str]] = {n: {} for n in senders}  # key -> id, per sender
    in_flight: dict[str, str] = {}  # sender -> the key it last sent (its response may never come)
    deliveries: list[tuple[str, str]] = []  # (message id, content = its key), every delivery
    deliveries_lock = threading.Lock()
    stop_receivers = threading.Event()

    def key_of(sender: str, i: int) -> str:
        return f"{sender}-{i}"

    def send_loop(name: str, keys: list[tuple[int, str]]) -> None:
        try:
            with Client(s, timeout_s=15) as c:
                c.authenticate(tokens[name])
                for i, key in keys:
                    in_flight[name] = key
                    res = c.send(receivers[i % RECEIVERS], key, idempotency_key=key)
                    responses[name][key] = res.id
        except BROKEN:
            pass  # the broker was killed under us

    def receive_loop(name: str) -> None:
        try:
            with Client(s, timeout_s=15) as c:
                c.authenticate(tokens[name])
                while not stop_receivers.is_set():
                    msgs = c.receive(max=200, wait_s=0.2)
                    if msgs:
                        with deliveries_lock:
                            deliveries.extend((m.id, m.content) for m in msgs)
                        c.ack([m.id for m in msgs])
        except BROKEN:
            pass

    # --- phase 1: load, then SIGKILL in the middle of it
    all_keys = {n: [(i, key_of(n, i)) for i in range(PER_SENDER)] for n in senders}
    threads = [threading.Thread(target=send_loop, args=(n, all_keys[n])) for n in senders]
    rthreads = [threading.Thread(target=receive_loop, args=(n,)) for n in receivers]
    for t in threads + rthreads:
        t.start()
    while sum(len(r) for r in responses.values()) < KILL_AFTER_RESPONSES and any(t.is_alive() for t in threads):
        time.sleep(0.001)
    broker_proc.kill()
    for t in threads + rthreads:
        t.join(timeout=30)
    with_response_at_kill = sum(len(r) for r in responses.values())
    unanswered = {n: k for n, k in in_flight.items() if k not in responses[n]}
    assert with_response_at_kill < TOTAL, "the load finished before the kill: raise TOTAL or lower the threshold"

    # --- phase 2: restart; resend whatever got no response, with the same key; drain
    with deliveries_lock:
        deliveries_before = list(deliveries)
    # which unanswered sends had been committed when the broker died (read-only look)
    db = sqlite3.connect(f"file:{Path(broker_proc.state_dir) / 'parrot.db'}?mode=ro", uri=True)
    committed_at_kill: dict[str, str] = {}  # key -> the id it was stored with
    for n, k in unanswered.items():
        row = db.execute("SELECT id FROM idempotency WHERE sender = ? AND key = ?", (n, k)).fetchone()
        if row is not None:
            committed_at_kill[k] = row[0]
    db.close()
    broker_proc.start()
    missing = {n: [(i, k) for i, k in all_keys[n] if k not in responses[n]] for n in senders}
    resent = sum(len(m) for m in missing.values())
    stop_receivers.clear()
    threads = [threading.Thread(target=send_loop, args=(n, missing[n])) for n in senders]
    rthreads = [threading.Thread(target=receive_loop, args=(n,)) for n in receivers]
    for t in threads + rthreads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    sent_ids = {mid for r in responses.values() for mid in r.values()}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with deliveries_lock:
            seen = {mid for mid, _ in deliveries}
        if sent_ids <= seen:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # let a last receive/ack round finish
    stop_receivers.set()
    for t in rthreads:
        t.join(timeout=30)
    broker_proc.stop()

    # --- verdict
    # an unanswered send that the broker had committed comes back with its first id, which a
    # receiver may even have got before the kill; else the resend queues it afresh
    committed_unanswered = sum(1 for n, k in unanswered.items() if any(c == k for _, c in deliveries_before))
    with_response = sum(len(r) for r in responses.values())
    delivered_ids = Counter(mid for mid, _ in deliveries)
    ids_by_key: dict[str, set[str]] = defaultdict(set)
    for r in responses.values():
        for key, mid in r.items():
            ids_by_key[key].add(mid)
    for mid, key in deliveries:
        ids_by_key[key].add(mid)
    lost = sent_ids - set(delivered_ids)
    two_ids = {k: sorted(v) for k, v in ids_by_key.items() if len(v) > 1}
    counts = {
        "total_messages": TOTAL,
        "sent_with_response_before_kill": with_response_at_kill,
        "unanswered_in_flight_at_kill": len(unanswered),
        "of_which_committed": len(committed_at_kill),
        "of_which_received_before_kill": committed_unanswered,
        "resent_after_kill": resent,
        "sent_with_response": with_response,
        "deliveries": len(deliveries),
        "received_unique_ids": len(delivered_ids),
        "duplicate_deliveries": len(deliveries) - len(delivered_ids),
        "lost": len(lost),
        "keys_with_two_ids": len(two_ids),
        "seconds": round(time.monotonic() - t_start, 2),
    }
    print("\ncrash test counts:", json.dumps(counts))
    (tmp_path / "crash_counts.json").write_text(json.dumps(counts, indent=2) + "\n")

    assert with_response == TOTAL, "every message got a response in the end"
    assert not lost, f"{len(lost)} message(s) with a send response never arrived: {sorted(lost)[:5]}"
    assert not two_ids, f"idempotency keys with two message ids: {list(two_ids.items())[:5]}"
    for n, k in unanswered.items():  # a committed but unanswered send kept its id through the restart
        if k in committed_at_kill:
            assert responses[n][k] == committed_at_kill[k]
    assert len(delivered_ids) == len(ids_by_key) == TOTAL, "after dedupe by id, each message arrives once"

"""The broker's bounds: per-UID rate limits and connection caps, shared-secret failure
throttling, and mailbox bounds.

Every limit's number comes from :class:`~parrot_ipc.core.config.BrokerConfig` (units in the
field names); ``docs/protocol.md`` ("Limits") lists them with their defaults. A request over a
bound is -32003 (rate limited, with ``data.retry_after_s``) or -32007 (mailbox full).

Pure: the current time is passed in, in seconds since the Unix epoch.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import msgspec

from ..errors import ErrorCode, RpcError
from .config import BrokerConfig


class TokenBucket:
    """A token bucket (RFC 2697's idea, one rate): ``rate_per_s`` tokens a second, at most
    ``burst`` banked. One per peer UID, shared by all its connections.

    Args:
        rate_per_s: tokens added per second (> 0).
        burst: the most tokens banked; the bucket starts full.
        now: the current time, seconds since the Unix epoch.

    Attributes ``limited`` (in a limited stretch: audit once per stretch) and ``users`` (the
    connections sharing it) are kept by :class:`ConnectionLimits` and the broker.
    """

    __slots__ = ("burst", "limited", "rate_per_s", "stamp", "tokens", "users")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self.tokens, self.stamp = burst, now
        self.limited = False  # in a limited stretch (audit once per stretch)
        self.users = 0  # connections sharing it

    def take(self, now: float) -> float:
        """Spend one token at ``now`` (epoch s): 0.0 if there was one, else the seconds until
        there will be. A clock that steps back adds no tokens."""
        elapsed = now - self.stamp
        tokens = self.tokens + (elapsed * self.rate_per_s if elapsed > 0 else 0.0)
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate_per_s

    def give_back(self) -> None:
        """Return the token the last successful :meth:`take` spent (a batch frame's: its
        members take theirs; ``docs/protocol.md``, "Batches"). Never above ``burst``."""
        self.tokens = min(self.burst, self.tokens + 1.0)


class ConnectionLimits:
    """Per-UID connection caps and token buckets (``max_connections_per_uid``,
    ``rate_per_s``, ``burst``).

    A UID's bucket lives while at least one of its connections is open, and is shared by them
    all, so opening more connections buys no more requests.
    """

    __slots__ = ("_buckets", "_config")

    def __init__(self, config: BrokerConfig) -> None:
        self._config = config
        self._buckets: dict[int, TokenBucket] = {}

    def at_cap(self, uid: int) -> bool:
        """True if ``uid`` already has ``max_connections_per_uid`` connections open."""
        bucket = self._buckets.get(uid)
        return bucket is not None and bucket.users >= self._config.max_connections_per_uid

    def join(self, uid: int, now: float) -> TokenBucket:
        """Count one more connection of ``uid``; return the UID's bucket (made full if new)."""
        bucket = self._buckets.get(uid)
        if bucket is None:
            cfg = self._config
            bucket = self._buckets[uid] = TokenBucket(cfg.rate_per_s, cfg.burst, now)
        bucket.users += 1
        return bucket

    def leave(self, uid: int, bucket: TokenBucket) -> None:
        """Count one connection of ``uid`` fewer; forget the bucket when none is left."""
        bucket.users -= 1
        if bucket.users <= 0 and self._buckets.get(uid) is bucket:
            del self._buckets[uid]


class SecretFailures:
    """Wrong shared-secret proofs per UID, in a sliding window.

    Past ``max_secret_failures`` within ``secret_failure_window_s`` seconds, ``get_token`` from
    that UID is refused (-32003 ``secret_rate_limited``) until the window slides.
    """

    __slots__ = ("_config", "_failures")

    def __init__(self, config: BrokerConfig) -> None:
        self._config = config
        self._failures: dict[int, deque[float]] = {}

    def retry_after(self, uid: int, now: float) -> int | None:
        """Whole seconds (>= 1) until ``uid`` may try again, or None if it may try now."""
        failures = self._failures.get(uid)
        if failures is None:
            return None
        window = self._config.secret_failure_window_s
        while failures and failures[0] <= now - window:
            failures.popleft()
        if len(failures) < self._config.max_secret_failures:
            return None
        return max(1, math.ceil(failures[0] + window - now))

    def record(self, uid: int, now: float) -> None:
        """Count one wrong proof from ``uid`` at ``now`` (epoch s)."""
        self._failures.setdefault(uid, deque()).append(now)


def message_size(content: str, data: dict[str, Any] | None) -> int:
    """A message's size for the mailbox byte bound: UTF-8 bytes of ``content`` plus the JSON
    bytes of ``data`` (0 without)."""
    size = len(content) if content.isascii() else len(content.encode())
    return size + (len(msgspec.json.encode(data)) if data else 0)


def check_mailbox(config: BrokerConfig, target: str, size: int, count: int, used: int) -> None:
    """Refuse one more message of ``size`` bytes to a mailbox holding ``count`` messages and
    ``used`` bytes, past ``max_mailbox_messages`` or ``max_mailbox_bytes``.

    Raises:
        RpcError: -32007 ``mailbox_full`` (``data.to`` = ``target``).
    """
    if count >= config.max_mailbox_messages or used + size > config.max_mailbox_bytes:
        raise RpcError(ErrorCode.MAILBOX_FULL, "mailbox_full",
                       f"The mailbox of {target!r} is full.", to=target)


def check_unclaimed(config: BrokerConfig, target: str, unclaimed: int) -> None:
    """Refuse a new mailbox for a name nobody holds when ``unclaimed`` such mailboxes exist
    and that reaches ``max_unclaimed_mailboxes``.

    Raises:
        RpcError: -32007 ``too_many_unclaimed_mailboxes`` (``data.to`` = ``target``).
    """
    limit = config.max_unclaimed_mailboxes
    if unclaimed >= limit:
        raise RpcError(ErrorCode.MAILBOX_FULL, "too_many_unclaimed_mailboxes",
                       f"Too many mailboxes for names nobody holds (limit {limit}).", to=target)

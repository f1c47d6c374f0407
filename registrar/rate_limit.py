"""Token buckets per client, in bounded memory: how a server answers a flood (429 + Retry-After).

Each client key (a source address, a registrar's certificate) has a bucket of
at most `burst` tokens that refills at `rate_per_s`; a request takes a token,
or is refused with the time until the next one. A new key starts with a full
bucket. At most `capacity` buckets are kept: a new key arriving at a full
table evicts the bucket used least recently. A forgotten bucket comes back
full, so eviction can only be generous, and only to the client idle longest:
a client cycling through many keys gains nothing beyond what each of those
keys is allowed anyway.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable

from .web import Refusal


@dataclass(frozen=True)
class Limit:
    rate_per_s: float
    burst: int


def take(tokens: float, at: float, now: float, limit: Limit, count: int = 1) -> tuple[float, float]:
    """A bucket that held `tokens` at time `at`, refilled until `now`, after taking `count`:
    (tokens left, 0.0) when it held them, else (tokens, seconds until it will) with nothing taken."""
    tokens = min(float(limit.burst), tokens + max(0.0, now - at) * limit.rate_per_s)
    if tokens >= count:
        return tokens - count, 0.0
    return tokens, (count - tokens) / limit.rate_per_s


class TokenBuckets:
    def __init__(self, limit: Limit, capacity: int):
        if limit.rate_per_s <= 0 or limit.burst < 1 or capacity < 1:
            raise ValueError("a rate limit needs rate_per_s > 0, burst >= 1 and capacity >= 1")
        self.limit = limit
        self.capacity = capacity
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, now: float) -> float:
        """Take a token for `key` at monotonic time `now`: 0.0 when there was one,
        otherwise the seconds until there will be one (nothing is taken then)."""
        tokens, at = self._buckets.pop(key, (float(self.limit.burst), now))
        tokens, wait = take(tokens, at, now, self.limit)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)
        return wait


def too_many(who: str, wait: float) -> Refusal:
    """429 with a Retry-After in whole seconds (RFC 6585)."""
    seconds = max(1, math.ceil(wait))
    return Refusal(429, f"too many requests from {who}; retry after {seconds} s",
                   {"Retry-After": str(seconds)})


def charge(buckets: TokenBuckets, key: Hashable, who: str, now: float) -> None:
    """Take a token for `key`, or refuse with 429 and a Retry-After."""
    wait = buckets.take(key, now)
    if wait > 0:
        raise too_many(who, wait)

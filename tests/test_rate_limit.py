"""Token buckets: the arithmetic of refill and refusal, and memory that stays bounded (pure logic)."""

from __future__ import annotations

import pytest

from pledgeforge.registrar.rate_limit import Limit, TokenBuckets, charge
from pledgeforge.registrar.web import Refusal


def test_burst_then_refill_at_the_rate():
    buckets = TokenBuckets(Limit(rate_per_s=2.0, burst=3), capacity=10)
    assert [buckets.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 100.0) == pytest.approx(0.5)  # one token comes every 0.5 s
    assert buckets.take("a", 100.25) == pytest.approx(0.25)  # a refusal takes nothing
    assert buckets.take("a", 100.5) == 0.0
    assert buckets.take("b", 100.5) == 0.0  # every key has its own bucket
    # Idle time refills no more than the burst.
    assert [buckets.take("a", 1000.0) for _ in range(4)][-1] > 0


def test_memory_is_bounded_and_forgets_the_least_recently_used():
    buckets = TokenBuckets(Limit(rate_per_s=0.001, burst=1), capacity=3)
    for key in ("a", "b", "c"):
        assert buckets.take(key, 0.0) == 0.0
    assert buckets.take("a", 1.0) > 0  # "a" is now the most recently used
    for i in range(1000):
        buckets.take(f"flood-{i}", 2.0)
    assert len(buckets) == 3
    # A forgotten key starts again with a full bucket; the floods' own keys gained nothing.
    assert buckets.take("b", 3.0) == 0.0
    assert buckets.take("flood-999", 3.0) > 0


def test_refusal_is_429_with_retry_after_in_whole_seconds():
    buckets = TokenBuckets(Limit(rate_per_s=0.1, burst=1), capacity=5)
    charge(buckets, "r", "registrar r", 0.0)
    with pytest.raises(Refusal) as refused:
        charge(buckets, "r", "registrar r", 0.05)
    assert refused.value.status == 429
    assert refused.value.headers == {"Retry-After": "10"}
    assert "registrar r" in refused.value.message


def test_nonsense_limits_are_refused():
    for limit, capacity in ((Limit(0, 1), 1), (Limit(1, 0), 1), (Limit(1, 1), 0)):
        with pytest.raises(ValueError):
            TokenBuckets(limit, capacity)

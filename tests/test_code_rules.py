"""The verification codes' pure rules (SPEC §3), no AWS: the SMS channel's per-second counter in shards."""
from __future__ import annotations

import pytest

from chalicelib.codes import channel_counters


@pytest.mark.parametrize("per_second, shards, limits", [
    (100, 10, [10] * 10),  # deployed
    (20, 10, [2] * 10),
    (15, 10, [2] * 5 + [1] * 5),  # rate // shards alone gave 10 and refused 2 of 12
    (25, 10, [3] * 5 + [2] * 5),
    (5, 10, [1] * 5),  # max(1, rate // shards) alone let 10 through a 5/s channel
    (1, 10, [1]),
    (10, 1, [10]),
])
def test_the_channels_shards_add_up_to_its_rate_exactly(per_second: int, shards: int, limits: list[int]) -> None:
    counters = channel_counters(1_796_000_000, per_second, shards)
    assert [c.limit for c in counters] == limits
    assert sum(c.limit for c in counters) == per_second
    assert len({c.key for c in counters}) == len(counters)
    assert {c.window_end for c in counters} == {1_796_000_001}


@pytest.mark.parametrize("source, client", [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # the same subscriber's /64: one client
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("unknown", "unknown"),
])
def test_a_client_is_its_ipv4_address_or_its_ipv6_64(source: str, client: str) -> None:
    from chalicelib.api.views import client_of

    assert client_of(source) == client

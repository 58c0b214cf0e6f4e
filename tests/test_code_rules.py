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


@pytest.mark.parametrize("client, counted_as", [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2::/64", "2001:db8:1::/48"),  # one home line's /56 or a tunnel's /48: one client for wrong tries
    ("2001:db8:1:ff00::/64", "2001:db8:1::/48"),
    ("2001:db8:2::/64", "2001:db8:2::/48"),
    ("unknown", "unknown"),
])
def test_wrong_tries_count_an_ipv6_client_by_its_48(client: str, counted_as: str) -> None:
    from chalicelib.codes import wrong_try_client

    assert wrong_try_client(client) == counted_as


@pytest.mark.parametrize("conflicts, outcome", [(3, "written"), (4, "service_busy")])
def test_a_single_item_write_meeting_a_transaction_is_retried_then_busy(conflicts: int, outcome: str) -> None:
    from botocore.exceptions import ClientError
    from pynamodb.exceptions import UpdateError

    from chalicelib import errors
    from chalicelib.throttle import ConflictRetry

    left = [conflicts]

    def write() -> str:
        if left[0]:
            left[0] -= 1
            cause = ClientError({"Error": {"Code": "TransactionConflictException", "Message": "ongoing"}}, "UpdateItem")
            raise UpdateError("Failed to update item", cause)
        return "written"

    retry = ConflictRetry(3, sleep=lambda _: None)
    if outcome == "written":
        assert retry.run(write) == "written"
    else:
        with pytest.raises(errors.ServiceBusy):
            retry.run(write)


def test_other_single_item_errors_are_not_retried() -> None:
    from botocore.exceptions import ClientError
    from pynamodb.exceptions import UpdateError

    from chalicelib.throttle import ConflictRetry

    calls = []

    def write() -> None:
        calls.append(1)
        cause = ClientError({"Error": {"Code": "ConditionalCheckFailedException", "Message": "no"}}, "UpdateItem")
        raise UpdateError("Failed to update item", cause)

    with pytest.raises(UpdateError):
        ConflictRetry(3, sleep=lambda _: None).run(write)
    assert calls == [1]

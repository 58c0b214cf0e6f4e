"""The last callback and the deadline both claiming one query's reply (issue 14, Done when; SPEC §6: one SMS).

tests/test_deadlines.py races them by timing only: most runs, one side claims long before the other looks.
Here both are held at the claim's conditional write (engine/deadlines.py `_take`: an UpdateItem on the query
that sets `completion_claimed_at` if it is unset) by a botocore hook on the DynamoDB client PynamoDB uses,
until both sides are there; then one side is let through first, and the other only once that write returned.
No project code is patched and nothing waits on a timer: the race is forced, in each order.
"""
from __future__ import annotations

import threading
from typing import Any

import pytest

from local.lambdas import CURRENT
from local.stack import LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS, wait_for
from tests.helpers import COMPANIES, replies_to, submit, wait_closed

PHONE, ID_LAST6 = "13812345678", "12345X"  # local/fixtures: jd holds 1 account for it
# Every other partner answers in the fan-out, so jd's callback is the query's last answer and claims its reply;
# it calls back about when the deadline falls, so neither side waits long for the other.
LAST_IS_JD = ",".join(f"{c}=immediate" for c in COMPANIES if c != "jd") + ",jd=late"
DEADLINE_SECONDS = 4
LATE_SECONDS = "3"
HOLD_SECONDS = 15  # how long one side waits for the other: a bound for a loaded machine, not a pace


def options(**changes: Any) -> StackOptions:
    return StackOptions(**{**BASE_OPTIONS.__dict__, **changes})


class ClaimRace:
    """Holds the reply claims of one query at their conditional write until the callback's and the deadline's
    are both there, then lets `first` write, and the other once that write has returned.

    A side is told by who runs it (local/lambdas.py CURRENT): the callback runs in the API's request thread
    (local/http.py acts as APIHandler), the deadline's sweep in the deadline step's threads. A second claim
    from a side already held (the next slot's deadline execution finding the query still open) waits until
    the race is decided."""

    SIDES = ("callback", "deadline")

    def __init__(self, query_id: str, first: str) -> None:
        self.query_id, self.first = query_id, first
        self.arrived = {side: threading.Event() for side in self.SIDES}
        self.written = {side: threading.Event() for side in self.SIDES}
        self.outcome: dict[str, str] = {}  # side -> "claimed", or the error code of its write
        self._held: dict[int, str] = {}  # thread -> the side whose claim it is writing
        self._lock = threading.Lock()

    def is_claim(self, params: dict[str, Any]) -> bool:
        """An UpdateItem of this query that sets `completion_claimed_at` on condition that it is unset (the carrier
        step's write names it in its condition only; a re-armed claim sets it unconditionally)."""
        if params.get("Key", {}).get("query_id", {}).get("S") != self.query_id:
            return False
        claimed = [ref for ref, name in params.get("ExpressionAttributeNames", {}).items()
                   if name == "completion_claimed_at"]
        return any(f"{ref} = " in params.get("UpdateExpression", "")
                   and f"attribute_not_exists ({ref})" in params.get("ConditionExpression", "") for ref in claimed)

    def hold(self, params: dict[str, Any], **kwargs: Any) -> None:
        """before-parameter-build.dynamodb.UpdateItem: the claim has decided to write and not yet written."""
        if not self.is_claim(params):
            return
        # The deadline step sweeps its shards in threads of its own, which carry no function name.
        side = {"APIHandler": "callback", "DeadlineStep": "deadline", None: "deadline"}.get(
            getattr(CURRENT, "function", None))
        if side is None:
            return  # another claimer (the fan-out, a retry): not expected here, and the outcome check would say so
        with self._lock:  # two deadline executions may sweep at the same instant: one of them races
            later = self.arrived[side].is_set()
            if not later:
                self._held[threading.get_ident()] = side
                self.arrived[side].set()
        if later:  # a later claimer of a side already in the race
            for written in self.written.values():
                written.wait(HOLD_SECONDS)
            return
        other = next(s for s in self.SIDES if s != side)
        if self.arrived[other].wait(HOLD_SECONDS) and side != self.first:
            self.written[self.first].wait(HOLD_SECONDS)

    def done(self, parsed: dict[str, Any], **kwargs: Any) -> None:
        """after-call.dynamodb.UpdateItem: the held claim's write has returned (claimed, or its condition failed)."""
        side = self._held.pop(threading.get_ident(), None)
        if side is not None:
            self.outcome[side] = parsed.get("Error", {}).get("Code", "claimed")
            self.written[side].set()


@pytest.mark.parametrize("stack_options", [options(partner_modes=LAST_IS_JD, deadline_seconds=DEADLINE_SECONDS)])
@pytest.mark.parametrize("first", ClaimRace.SIDES)
def test_last_callback_and_deadline_both_claiming_the_reply_send_one_sms_with_the_callbacks_answer(
        stack: LocalStack, api: Any, monkeypatch: pytest.MonkeyPatch, first: str) -> None:
    """GIVEN a query whose last partner (jd) calls back as its deadline falls,
    WHEN the callback and the deadline both reach the claim's conditional write and `first` writes first,
    THEN `first` claims, the other's condition fails, and exactly one SMS goes: it reports jd's answer either
    way, since the callback stored it before claiming and the reply is composed from the record when sent."""
    from chalicelib.storage.models import QueryRecord

    monkeypatch.setenv("LATE_SECONDS", LATE_SECONDS)
    response = submit(api, stack, PHONE, ID_LAST6)
    assert response.status_code == 202, response.body
    query_id = response.json_body["query_id"]
    race = ClaimRace(query_id, first)
    events = QueryRecord._get_connection().connection.client.meta.events  # the client every model write goes by
    events.register("before-parameter-build.dynamodb.UpdateItem", race.hold)
    events.register("after-call.dynamodb.UpdateItem", race.done)
    try:
        # WHEN: the query runs; jd's callback and the deadline meet at the claim.
        assert stack.pump_once() == 1
        record = wait_closed(stack, query_id, timeout=30)
        wait_for(lambda: stack.partners["jd"].callbacks, 20, "jd's callback")
    finally:
        events.unregister("before-parameter-build.dynamodb.UpdateItem", race.hold)
        events.unregister("after-call.dynamodb.UpdateItem", race.done)

    # THEN: both tried to claim, in the order forced; one claimed, the other's conditional write failed.
    assert all(arrived.is_set() for arrived in race.arrived.values())
    second = next(s for s in ClaimRace.SIDES if s != first)
    assert race.outcome == {first: "claimed", second: "ConditionalCheckFailedException"}
    assert stack.partners["jd"].callbacks == [200]
    assert record["status"] == "replied"
    assert replies_to(stack, PHONE) == [
        "【一证通查】您的手机号138****5678关联的互联网账号：腾讯2个，阿里巴巴0个，支付宝1个，百度0个，快手0个，"
        "抖音1个，京东1个，美团0个。已返回企业共5个账号。如有异议，请通过“解绑与明细查询”联系相关企业。"]

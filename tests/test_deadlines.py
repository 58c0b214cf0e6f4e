"""Executions that live seconds; replies sent once, by the last answer or by the deadline executions
(SPEC §2, issue 14): stepfunctions/deadline.asl.json run by moto, the reply queue pumped as Lambda does."""
from __future__ import annotations

import json
import time
from typing import Any

import pytest

from local.stack import StackOptions
from tests.conftest import BASE_OPTIONS, wait_for
from tests.helpers import aws, execution_arn, replies_to, submit, wait_closed

ACTIVE = [("13812345678", "12345X"), ("13900001111", "010203"), ("13700002222", "150617"),
          ("15012345678", "281234"), ("18812345678", "31002X"), ("19212345678", "090909"),
          ("18612345678", "110358"), ("13012345678", "230416"), ("15612345678", "05123X"),
          ("16612345678", "190827")]  # local/fixtures/subscribers.csv, active


def options(**changes: Any) -> StackOptions:
    return StackOptions(**{**BASE_OPTIONS.__dict__, **changes})


def accepted(api: Any, stack: Any, phone: str, id_last6: str) -> str:
    response = submit(api, stack, phone, id_last6)
    assert response.status_code == 202, response.body
    return str(response.json_body["query_id"])


def execution_ended(stack: Any, query_id: str) -> dict[str, Any]:
    sfn = aws("stepfunctions")

    def ended() -> dict[str, Any] | None:
        try:
            described = sfn.describe_execution(executionArn=execution_arn(stack, query_id))
        except sfn.exceptions.ExecutionDoesNotExist:
            return None
        return described if described["status"] != "RUNNING" else None

    return wait_for(ended, 20, "the execution to end")  # type: ignore[no-any-return]


def open_records(stack: Any, count: int, deadline_at: int) -> list[str]:
    """`count` open queries written straight into the table, as intake leaves them (no partner asked)."""
    from chalicelib.contracts import QueryStatus, ReplyType
    from chalicelib.engine.deadlines import Deadlines
    from chalicelib.storage.models import QueryRecord, at

    deadlines = Deadlines()
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(count)]
    with QueryRecord.batch_write() as batch:
        for query_id in ids:
            batch.save(QueryRecord(query_id, status=QueryStatus.LOOKING_UP, created_at=deadline_at - 60,
                                   deadline_at=deadline_at, data_key="x", phone_sealed="x", lock_key="x",
                                   ttl=at(deadline_at + 86400),
                                   **deadlines.entry(ReplyType.QUERY, query_id, deadline_at)))
    return ids


def reply_messages(stack: Any) -> list[dict[str, Any]]:
    sqs = aws("sqs")
    found = []
    while batch := sqs.receive_message(QueueUrl=stack.env["REPLY_QUEUE_URL"], MaxNumberOfMessages=10,
                                       VisibilityTimeout=600).get("Messages", []):
        found += [json.loads(m["Body"]) for m in batch]
    return found


@pytest.mark.parametrize("stack_options", [options(partner_modes="jd=late", deadline_seconds=40)])
def test_late_partner_answer_after_the_execution_ended_is_in_the_reply_sent_at_that_answer(
        stack: Any, api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a partner that calls back 4 s later, WHEN the query runs, THEN the execution has ended long
    before, and the reply counts that partner's answer and is sent at it, not at the 40 s deadline."""
    monkeypatch.setenv("LATE_SECONDS", "4")
    started = time.monotonic()
    query_id = accepted(api, stack, "13812345678", "12345X")
    assert stack.pump_once() == 1
    ended = execution_ended(stack, query_id)
    assert ended["status"] == "SUCCEEDED"
    assert replies_to(stack, "13812345678") == []  # jd has not answered yet
    wait_closed(stack, query_id, timeout=30)
    assert time.monotonic() - started < 20  # at jd's answer, well before the deadline
    (reply,) = replies_to(stack, "13812345678")
    assert "京东1个" in reply and "暂未返回" not in reply


@pytest.mark.parametrize("stack_options", [options(partner_modes="jd=late", deadline_seconds=5)])
def test_last_callback_racing_the_deadline_sends_one_sms(stack: Any, api: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN the last partner calls back at the very moment the deadline falls, THEN exactly one SMS."""
    monkeypatch.setenv("LATE_SECONDS", "4.5")
    query_id = accepted(api, stack, "13900001111", "010203")
    assert stack.pump_once() == 1
    wait_closed(stack, query_id, timeout=30)
    wait_for(lambda: stack.partners["jd"].callbacks, 20, "jd's callback")  # answered (200), after or before
    assert len(replies_to(stack, "13900001111")) == 1


@pytest.mark.parametrize("stack_options", [options(deadline_seconds=6, pump=False)])
def test_a_query_whose_execution_never_started_is_answered_at_its_deadline(stack: Any, api: Any) -> None:
    """GIVEN an accepted query whose execution never starts (Step Functions refusing it for 6 s),
    THEN it is in the deadline index from acceptance and gets the 'try later' SMS at its deadline."""
    query_id = accepted(api, stack, "13700002222", "150617")
    wait_closed(stack, query_id, timeout=30)
    assert replies_to(stack, "13700002222") == [
        "【一证通查】您的手机号137****2222查询未成功：暂时无法完成查询，请于24小时后重新查询。"]


@pytest.mark.parametrize("stack_options", [options(deadlines=False, replies=False)])
def test_a_deadline_slot_holding_more_than_a_page_loops_until_every_record_is_enqueued(stack: Any) -> None:
    """GIVEN 350 queries due in one slot (more than one page per shard, and more than one budget),
    WHEN the slot's step runs with a budget that runs out, THEN it asks to loop, and the loop enqueues
    every one exactly once."""
    from chalicelib.config import settings
    from chalicelib.contracts import ReplyType
    from chalicelib.engine.deadlines import Deadlines

    now = int(time.time())
    ids = open_records(stack, 350, deadline_at=now - 5)
    ticks = iter(range(10**9))
    clock = lambda: now + next(ticks) * 0.01  # noqa: E731 - 100 claims per simulated second
    deadlines = Deadlines(settings(), clock=clock)
    first = deadlines.sweep(ReplyType.QUERY, until=now, budget_end=now + 1.5)
    assert first is True  # the budget ran out: the execution loops (DueYet -> DeadlineStep)
    # The loop's next turn, a moment later on the same clock: the first turn's claims are fresh, not stale (a
    # real clock here made the test depend on how fast a loaded machine wrote the 350 records).
    later = Deadlines(settings(), clock=lambda: now + 2)
    assert later.step({"kind": "query", "slot": now - 1})["more"] is False
    messages = reply_messages(stack)
    assert sorted(m["id"] for m in messages) == sorted(ids)  # each once


@pytest.mark.parametrize("stack_options", [options(deadlines=False, replies=False)])
def test_the_deadline_step_of_every_kind_reports_its_lag_each_slot_even_with_nothing_due(
        stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN nothing due, WHEN a slot's step of each kind the starter starts reaches its slot, THEN it emits
    DeadlineLag for that kind (the deadline-late alarms treat a silent minute as breaching, so an idle service
    must still report); before its slot it reports nothing and only asks to wait."""
    from chalicelib.config import settings
    from chalicelib.contracts import ReplyType
    from chalicelib.engine.deadlines import Deadlines

    slot = int(time.time()) // 60 * 60

    def lags() -> list[tuple[str, list[float]]]:
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        return [(line["kind"], line["DeadlineLag"]) for line in lines if "DeadlineLag" in line]

    for kind in ReplyType:
        early = Deadlines(settings(), clock=lambda: slot - 3).step({"kind": kind.value, "slot": slot})
        assert early["wait_seconds"] == 3 and lags() == []
        due = Deadlines(settings(), clock=lambda: slot + 2.5).step({"kind": kind.value, "slot": slot})
        assert due["wait_seconds"] == 0 and due["more"] is False
        assert lags() == [(kind.value, [2500.0])]  # EMF: a list of values


@pytest.mark.parametrize("stack_options", [options(deadlines=False, replies=False)])
def test_a_missed_deadline_slot_is_caught_up_by_the_next(stack: Any) -> None:
    """GIVEN queries due in a slot whose execution never ran, WHEN a later slot's execution runs,
    THEN it replies to them too."""
    from chalicelib.engine.deadlines import Deadlines

    now = int(time.time())
    ids = open_records(stack, 12, deadline_at=now - 120)  # two minutes ago: that slot was missed
    result = Deadlines().step({"kind": "query", "slot": now})
    assert result == {"kind": "query", "slot": now, "wait_seconds": 0, "more": False}
    assert sorted(m["id"] for m in reply_messages(stack)) == sorted(ids)


@pytest.mark.parametrize("stack_options", [options(deadlines=False, replies=False)])
def test_a_claim_whose_reply_was_never_enqueued_is_enqueued_again_after_the_reclaim_delay(stack: Any) -> None:
    """GIVEN the last answer claimed a query's reply and its Lambda died before enqueueing it, WHEN the
    slot `claim + reclaim` is swept, THEN the reply is enqueued (nothing is lost); before then, it is not."""
    from chalicelib.config import settings
    from chalicelib.contracts import ReplyType
    from chalicelib.engine.deadlines import Deadlines
    from chalicelib.storage.models import QueryRecord

    now = int(time.time())
    (query_id,) = open_records(stack, 1, deadline_at=now + 86400)
    record = QueryRecord.get(query_id)
    assert Deadlines(settings(), clock=lambda: now)._take(QueryRecord, record)  # claimed, then the crash
    reclaim = settings().reply_reclaim_seconds
    assert not Deadlines(settings(), clock=lambda: now + 1).sweep(ReplyType.QUERY, now + 1, budget_end=now + 60)
    assert reply_messages(stack) == []
    later = now + reclaim + settings().deadline_slot_seconds
    Deadlines(settings(), clock=lambda: later).sweep(ReplyType.QUERY, later, budget_end=later + 60)
    assert [m["id"] for m in reply_messages(stack)] == [query_id]


def test_deadline_executions_are_named_by_kind_and_minute() -> None:
    from chalicelib.contracts import ReplyType
    from chalicelib.engine.deadlines import execution_name, shard_of, slot_of

    assert execution_name(ReplyType.QUERY, 1796060520, 60) == "deadline-query-202611301742"
    assert execution_name(ReplyType.DISPUTE, 1796060525, 5) == "deadline-dispute-20261130174205"
    assert slot_of(1796060579, 60) == 1796060520  # rounded down: never after the deadline
    assert {shard_of(ReplyType.QUERY, f"q{n}", 16) for n in range(500)} == {f"query#{n}" for n in range(16)}


@pytest.mark.parametrize("stack_options", [options(partner_modes="jd=flaky,douyin=flaky", deadline_seconds=150)])
def test_flaky_partners_answer_every_one_of_ten_concurrent_queries_well_before_the_deadline(
        stack: Any, api: Any) -> None:
    """GIVEN two partners that fail each lookup's first two tries, WHEN 10 queries run at once,
    THEN their circuits stay closed and every reply has their answer, long before the 150 s deadline."""
    started = time.monotonic()
    ids = [accepted(api, stack, phone, id_last6) for phone, id_last6 in ACTIVE]
    while stack.pump_once():
        pass
    for query_id in ids:
        wait_closed(stack, query_id, timeout=120)
    assert time.monotonic() - started < 90
    for phone, _ in ACTIVE:
        (reply,) = replies_to(stack, phone)
        assert "暂未返回" not in reply
    from chalicelib.partners.circuit import Circuits

    states = Circuits(5, 60).states(["jd", "douyin"])
    assert not states["jd"].is_open and not states["douyin"].is_open


@pytest.mark.parametrize("stack_options", [options(deadlines=False, replies=False, deadline_slot_seconds=60,
                                                   deadline_lead_slots=3)])
def test_the_starter_starts_each_slot_once_and_only_the_missing_ones(stack: Any) -> None:
    """GIVEN no deadline execution runs, WHEN the starter runs, THEN it starts the current slot and the
    next three per kind, each waiting until its slot; run again, it starts nothing (the StartExecution
    quota is the queries')."""
    from chalicelib.engine.deadlines import Deadlines

    now = time.time()
    first = Deadlines().start_ahead(now)
    assert len(first) == 2 * 4 and len(set(first)) == 8
    assert Deadlines().start_ahead(now + 1) == []
    sfn = aws("stepfunctions")
    (execution,) = [e for e in sfn.list_executions(stateMachineArn=stack.env["DEADLINE_STATE_MACHINE_ARN"])[
        "executions"] if e["name"] == sorted(first)[-1]]
    started = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert started["kind"] == "query" and 120 < started["wait_seconds"] <= 240  # the third slot ahead


@pytest.mark.parametrize("stack_options", [options(deadlines=False, replies=False)])
def test_cut_over_drains_task_token_executions_into_the_deadline_index(stack: Any) -> None:
    """GIVEN executions of the previous version still waiting on a task token (one query with every answer
    in, one still waiting for a partner) and one the new version started after the update, WHEN
    infra/cutover.py drains those started before the update, THEN both old executions are stopped, both
    records are in the deadline index, the complete one's reply is enqueued now, and the new execution runs on
    untouched (its reply not claimed, though every answer is in)."""
    import datetime as dt

    import time_machine

    from chalicelib.contracts import QueryStatus, ReplyType
    from chalicelib.engine.deadlines import Deadlines
    from chalicelib.storage.models import QueryRecord, at
    from infra.cutover import drain

    sfn = aws("stepfunctions")
    old = sfn.create_state_machine(name="yztc-query-previous", roleArn="arn:aws:iam::123456789012:role/x",
                                   definition=json.dumps({"StartAt": "Token", "States": {
                                       "Token": {"Type": "Wait", "Seconds": 600, "End": True}}}))["stateMachineArn"]
    now = int(time.time())
    complete, waiting = "00000000-0000-4000-8000-00000000c001", "00000000-0000-4000-8000-00000000c002"
    for query_id, results in ((complete, {"tencent": 1, "jd": -1}), (waiting, {"tencent": 1})):
        QueryRecord(query_id, status=QueryStatus.LOOKING_UP, created_at=now, deadline_at=now + 3600,
                    data_key="x", phone_sealed="x", lock_key="x", asked={"tencent", "jd"}, results=results,
                    ttl=at(now + 86400)).save()
        sfn.start_execution(stateMachineArn=old, name=query_id, input="{}")
    wait_for(lambda: len(sfn.list_executions(stateMachineArn=old, statusFilter="RUNNING")["executions"]) == 2,
             10, "the old executions running")
    # The update: a minute later (the clock moved, not slept), the same machine starts the new version's
    # execution of a query already in the deadline index, every answer in (its reply is the new route's).
    update = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    newer = "00000000-0000-4000-8000-00000000c003"
    QueryRecord(newer, status=QueryStatus.LOOKING_UP, created_at=now, deadline_at=now + 3600, data_key="x",
                phone_sealed="x", lock_key="x", asked={"tencent"}, results={"tencent": 1}, ttl=at(now + 86400),
                **Deadlines().entry(ReplyType.QUERY, newer, now + 3600)).save()
    with time_machine.travel(update + dt.timedelta(seconds=30), tick=True):
        sfn.start_execution(stateMachineArn=old, name=newer, input="{}")
    try:
        wait_for(lambda: len(sfn.list_executions(stateMachineArn=old, statusFilter="RUNNING")["executions"]) == 3,
                 10, "the new execution running")
        assert drain(sfn, {ReplyType.QUERY: old}, before=update) == 2
        # moto stops an execution on its own thread: wait for both to report ABORTED.
        statuses = {complete: "ABORTED", waiting: "ABORTED", newer: "RUNNING"}
        wait_for(lambda: {e["name"]: e["status"] for e in sfn.list_executions(stateMachineArn=old)["executions"]}
                 == statuses, 10, "the old executions stopped")
        for query_id in (complete, waiting):
            assert QueryRecord.get(query_id).deadline_slot is not None
        assert QueryRecord.get(newer).completion_claimed_at is None
        assert [m["id"] for m in reply_messages(stack)] == [complete]
    finally:
        sfn.stop_execution(executionArn=old.replace(":stateMachine:", ":execution:") + ":" + newer)


def test_the_cut_over_refuses_a_time_without_its_zone() -> None:
    """A naive time would be read in the operator's shell's zone: hours off, stopping new executions."""
    import argparse

    from infra.cutover import instant

    assert instant("2026-12-01T18:30:05Z") == instant("2026-12-02T02:30:05+08:00")
    for text in ("2026-12-01T18:30:05", "yesterday"):
        with pytest.raises(argparse.ArgumentTypeError):
            instant(text)


# Each refusal hands the claim back for the reclaim delay: two seconds, not the stack's six, as nothing else runs.
@pytest.mark.parametrize("stack_options", [options(partner_modes="jd=immediate", reply_reclaim_seconds=2)])
def test_a_reply_the_sms_channel_throttles_is_sent_later_not_dead_lettered(stack: Any, api: Any) -> None:
    """GIVEN SNS throttles the reply SMS for its first 3 tries, WHEN the query completes, THEN the query
    stays open (its claim handed back to the deadline machinery), and its one reply goes out once the
    channel takes it: nothing in the dead-letter queue, no `failed`."""
    from botocore.exceptions import ClientError

    from chalicelib import clients

    refusals = {"left": 3}

    def throttle(**kwargs: Any) -> None:
        if "验证码" not in kwargs["params"]["Message"] and refusals["left"] > 0:
            refusals["left"] -= 1
            raise ClientError({"Error": {"Code": "Throttling", "Message": "rate exceeded"}}, "Publish")

    clients.client("sns").meta.events.register("before-parameter-build.sns.Publish", throttle)
    query_id = accepted(api, stack, "13812345678", "12345X")
    assert stack.pump_once() == 1
    record = wait_closed(stack, query_id, timeout=90)
    assert refusals["left"] == 0 and record["status"] == "replied"
    assert len(replies_to(stack, "13812345678")) == 1
    sqs = aws("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=stack.env["REPLY_DLQ_URL"],
                                          AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"

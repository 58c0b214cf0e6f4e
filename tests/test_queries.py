"""Query intake (SPEC §1.6, §3): 24-hour limit, one execution per query, nothing lost."""
from __future__ import annotations

import datetime as dt
import json
import threading
from typing import TYPE_CHECKING, Any

import pytest
import time_machine

from chalicelib.queries import StartDeferred
from tests.conftest import CLIENT_PROJECT, post_json
from tests.helpers import aws, error_code, execution_arn, latest_code, request_code, submit

if TYPE_CHECKING:
    from chalice.test import Client

    from local.stack import LocalStack

PHONE, ID6 = "13900001111", "010203"
START = dt.datetime(2026, 11, 28, 2, 0, tzinfo=dt.UTC)
# Intake and the start of the execution: no reply or deadline is waited for (tests/conftest.py, routes_only). No
# deadline execution is started beside the ones these tests count, nor refused by the StartExecution fault injected.
pytestmark = pytest.mark.routes_only


def executions(stack: LocalStack) -> list[dict[str, Any]]:
    sfn = aws("stepfunctions")
    return sfn.list_executions(stateMachineArn=stack.env["STATE_MACHINE_ARN"])["executions"]


def test_accepted_query_answers_202_with_the_spec_body(stack: LocalStack, api: Client) -> None:
    response = submit(api, stack, PHONE, ID6)
    assert response.status_code == 202
    body = response.json_body
    assert set(body) == {"query_id", "status", "reply_within_hours", "sms_sender"}
    assert body["status"] == "accepted"
    assert body["reply_within_hours"] == 48
    assert body["sms_sender"] == "10699000"
    status = api.http.get(f"/v1/queries/{body['query_id']}")
    assert status.status_code == 200
    assert status.json_body["status"] == "accepted"
    assert set(status.json_body) == {"query_id", "status", "created_at"}


def test_second_query_within_24h_is_rejected_with_retry_after(stack: LocalStack, api: Client) -> None:
    with time_machine.travel(START, tick=False) as traveller:
        assert submit(api, stack, PHONE, ID6).status_code == 202
        traveller.shift(3600)
        response = submit(api, stack, PHONE, ID6)
        assert response.status_code == 429
        assert error_code(response) == "query_limit"
        assert response.headers["Retry-After"] == str(86400 - 3600)


def test_refused_query_leaves_its_code_usable(stack: LocalStack, api: Client) -> None:
    """query_limit changes nothing: the code is not consumed by the refused attempt."""
    with time_machine.travel(START, tick=False) as traveller:
        assert submit(api, stack, PHONE, ID6).status_code == 202
        traveller.shift(86400 - 120)
        request_code(api, PHONE)
        code = latest_code(stack, PHONE)
        refused = post_json(api, "/v1/queries", {"phone": PHONE, "id_last6": ID6, "code": code})
        assert error_code(refused) == "query_limit"
        assert refused.headers["Retry-After"] == "120"
        traveller.shift(121)
        again = post_json(api, "/v1/queries", {"phone": PHONE, "id_last6": ID6, "code": code})
        assert again.status_code == 202


def test_query_after_24h_is_accepted(stack: LocalStack, api: Client) -> None:
    with time_machine.travel(START, tick=False) as traveller:
        assert submit(api, stack, PHONE, ID6).status_code == 202
        traveller.shift(86400)
        assert submit(api, stack, PHONE, ID6).status_code == 202


def test_the_limit_holds_whatever_the_id_digits(stack: LocalStack, api: Client) -> None:
    """A failed (mismatching) query still counts: 若查询不成功……24小时后重新查询."""
    with time_machine.travel(START, tick=False) as traveller:
        assert submit(api, stack, PHONE, "111111").status_code == 202
        traveller.shift(61)
        assert error_code(submit(api, stack, PHONE, ID6)) == "query_limit"


def test_the_api_answer_does_not_depend_on_the_id_digits(stack: LocalStack, api: Client) -> None:
    matching = submit(api, stack, "13900001111", ID6)
    other = submit(api, stack, "13700002222", "010101")  # not this subscriber's digits
    assert matching.status_code == other.status_code == 202
    assert set(matching.json_body) == set(other.json_body)
    assert {k: v for k, v in matching.json_body.items() if k != "query_id"} == \
        {k: v for k, v in other.json_body.items() if k != "query_id"}


def test_accepted_query_starts_one_execution_named_by_its_id_without_personal_data(stack: LocalStack,
                                                                                   api: Client) -> None:
    query_id = submit(api, stack, PHONE, ID6).json_body["query_id"]
    assert executions(stack) == []  # started from the queue, not on the request path
    assert stack.pump_once() == 1
    started = executions(stack)
    assert [e["name"] for e in started] == [query_id]
    described = aws("stepfunctions").describe_execution(executionArn=execution_arn(stack, query_id))
    assert set(json.loads(described["input"])) == {"query_id", "deadline_at"}
    assert PHONE not in described["input"] and ID6 not in described["input"]


def test_two_concurrent_submissions_with_one_code_start_at_most_one_execution(stack: LocalStack, api: Client) -> None:
    from chalice.test import Client

    request_code(api, PHONE)
    code = latest_code(stack, PHONE)
    body = {"phone": PHONE, "id_last6": ID6, "code": code}
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def submit_once() -> None:
        with Client(stack.app_module.app, project_dir=CLIENT_PROJECT) as client:
            barrier.wait()
            statuses.append(post_json(client, "/v1/queries", body).status_code)

    threads = [threading.Thread(target=submit_once) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses).count(202) == 1, statuses
    assert all(s in (202, 403, 429) for s in statuses)
    while stack.pump_once():
        pass
    assert len(executions(stack)) == 1
    assert len(aws("dynamodb").scan(TableName=stack.env["QUERIES_TABLE"])["Items"]) == 1


@pytest.mark.parametrize("refusal", ["ThrottlingException", "ExecutionLimitExceeded"])
def test_refused_start_execution_loses_no_query(stack: LocalStack, api: Client, refusal: str) -> None:
    """GIVEN Step Functions refuses StartExecution, WHEN the refusal stops, THEN the query starts once."""
    from moto.core.exceptions import JsonRESTError
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend as StepFunctionBackend

    original = StepFunctionBackend.start_execution
    refusing = {"on": True}

    def start_execution(self: StepFunctionBackend, *args: Any, **kwargs: Any) -> Any:
        if refusing["on"]:
            raise JsonRESTError(refusal, "refused (injected into moto)")
        return original(self, *args, **kwargs)

    StepFunctionBackend.start_execution = start_execution  # type: ignore[method-assign]  # the fault injected into moto
    try:
        query_id = submit(api, stack, PHONE, ID6).json_body["query_id"]
        for _ in range(3):  # three deliveries, three refusals: the message stays queued
            with pytest.raises(StartDeferred):
                stack.pump_once(visibility_on_failure=0)
        assert executions(stack) == []
        refusing["on"] = False
        assert stack.pump_once(visibility_on_failure=0) == 1
    finally:
        StepFunctionBackend.start_execution = original  # type: ignore[method-assign]
    assert [e["name"] for e in executions(stack)] == [query_id]
    assert stack.pump_once() == 0  # the queue is empty


def test_redelivered_start_message_is_harmless(stack: LocalStack, api: Client) -> None:
    import app as app_module

    query_id = submit(api, stack, PHONE, ID6).json_body["query_id"]
    sqs = aws("sqs")
    message = sqs.receive_message(QueueUrl=stack.env["START_QUEUE_URL"])["Messages"][0]
    from local.lambdas import FakeContext, sqs_event

    event = sqs_event([message, message], "arn:aws:sqs:us-east-1:123456789012:q")
    app_module.start_queries(event, FakeContext("start_queries"))
    app_module.start_queries(event, FakeContext("start_queries"))
    assert [e["name"] for e in executions(stack)] == [query_id]

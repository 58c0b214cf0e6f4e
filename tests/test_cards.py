"""Phone cards registered to my ID (SPEC §9), end to end: the same engine as internet accounts,
asking every operator of the registry, with the operator simulator over real HTTP."""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import time_machine

from local.stack import ROOT, LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS, post_json, wait_for
from tests.helpers import (
    FIXTURE_OPERATORS,
    OPERATORS,
    aws,
    clock_past,
    deadline_of,
    error_code,
    history,
    latest_code,
    lookup_states,
    replies_to,
    request_code,
    wait_closed,
    wait_finished,
)
from tests.privacy import assert_clean

if TYPE_CHECKING:
    from chalice.test import Client

with open(os.path.join(ROOT, "local", "fixtures", "subscribers.csv"), encoding="utf-8") as _fh:
    SUBSCRIBERS = {row["phone"]: row for row in csv.DictReader(_fh)}

ZHANG = SUBSCRIBERS["13812345678"]  # 44010619850212345X: 2 cards at cmcc-gd, 1 at cucc-bj; a second phone
SPEC_EXAMPLE = ("【一证通查】您名下在网移动电话卡共3张：中国移动广东公司2张，中国联通北京分公司1张。"
                "如有异议，请联系相关企业核实、关停或销户。")


def options(**changes: Any) -> StackOptions:
    # A card query on moto in-process takes longer than 8 companies' (all 132 operators: over 15 s on a loaded
    # machine): a deadline that is never the reason a test passes (a query ends once every operator answered).
    return StackOptions(**{**BASE_OPTIONS.__dict__, "deadline_seconds": 120, "operators": FIXTURE_OPERATORS,
                           **changes})


EVERY_OPERATOR = options(operators=())


@pytest.fixture
def stack_options() -> StackOptions:
    return options()


def card_body(row: dict[str, str], **changes: str) -> dict[str, str]:
    return {"name": row["name"], "id_number": row["id_number"], "phone": row["phone"], **changes}


def submit_card(api: Any, stack: Any, body: dict[str, str]) -> Any:
    assert request_code(api, body["phone"]).status_code == 202
    return post_json(api, "/v1/card-queries", {**body, "code": latest_code(stack, body["phone"])})


def start_card_query(api: Any, stack: Any, body: dict[str, str]) -> str:
    """Accepted, and its execution started: the query id."""
    response = submit_card(api, stack, body)
    assert response.status_code == 202, response.body
    assert response.json_body["status"] == "accepted" and response.json_body["sms_sender"] == "10699000"
    assert stack.pump_once() == 1
    return str(response.json_body["query_id"])


def wait_settled_but(query_id: str, unsettled: set[str]) -> None:
    """Every operator's lookup of the query settled except `unsettled`'s (those its deadline answers for)."""
    wait_for(lambda: {op for op, state in lookup_states(query_id).items() if state != "settled"} == unsettled, 120,
             f"every operator but {sorted(unsettled)} settled")


def run_card_query(api: Any, stack: Any, body: dict[str, str]) -> str:
    query_id = start_card_query(api, stack, body)
    # 133 operators on a loaded machine: wait up to the deadline (the reply's text says if it came from it).
    assert wait_finished(stack, query_id, timeout=150)["status"] == "SUCCEEDED"
    return query_id


def transitions(stack: Any, query_id: str) -> int:
    return sum(1 for e in history(stack, query_id) if e["type"].endswith("StateEntered"))


@pytest.mark.parametrize("stack_options", [EVERY_OPERATOR])
def test_a_card_query_asks_every_operator_and_replies_as_spec_says(stack: LocalStack, api: Client) -> None:
    query_id = run_card_query(api, stack, card_body(ZHANG))
    assert replies_to(stack, ZHANG["phone"]) == [SPEC_EXAMPLE]
    assert api.http.get(f"/v1/card-queries/{query_id}").json_body["status"] == "replied"
    assert api.http.get(f"/v1/queries/{query_id}").status_code == 404  # not an internet-account query
    # 132 operators cost the same three state transitions as 8 companies (the execution asks and ends).
    assert transitions(stack, query_id) == 3
    assert {op for op in OPERATORS if stack.operators.requests_to(op)} == set(OPERATORS)
    sent = stack.operators.requests_to("cmcc-gd")[0]
    assert set(sent) >= {"lookup_id"} and "phone" not in json.dumps(sent)


# The silent operator holds the reply to its deadline. The deadline leaves a loaded machine all the time it needs for
# the flaky one's two retries (1 s, 2 s) and callback; once every other operator has settled, the clock passes it.
@pytest.mark.parametrize("stack_options", [options(
    operator_modes="cmcc-gd=silent,cucc-bj=down,ctcc-sh=flaky,mvno-xiaomi=reject", deadline_seconds=600)])
def test_silent_down_flaky_and_refusing_operators_are_counted_as_spec_says(stack: LocalStack, api: Client) -> None:
    query_id = start_card_query(api, stack, card_body(ZHANG))
    wait_settled_but(query_id, {"cmcc-gd", "cucc-bj"})  # silent, and down: retried until the deadline
    assert replies_to(stack, ZHANG["phone"]) == []  # held for the silent and the down one
    with clock_past(deadline_of(stack, query_id)):
        assert wait_finished(stack, query_id)["status"] == "SUCCEEDED"
    (reply,) = replies_to(stack, ZHANG["phone"])
    # cmcc-gd (2 cards) never answers, cucc-bj (1) is down, mvno-xiaomi refuses: three without an answer.
    assert reply == ("【一证通查】您名下在网移动电话卡共0张。另有3家企业暂未返回。"
                     "如有异议，请联系相关企业核实、关停或销户。")
    assert transitions(stack, query_id) == 3
    assert len(stack.operators.requests_to("ctcc-sh")) == 3  # flaky: two 503s, then answered


@pytest.mark.routes_only
@pytest.mark.parametrize("field, value, code", [
    ("id_number", "44010619850212345Y", "invalid_id_number"),
    ("id_number", "440106198502123450", "invalid_id_number"),  # wrong check character
    ("id_number", "440106198502303457", "invalid_id_number"),  # 30 February
    ("id_number", "440106209902123453", "invalid_id_number"),  # born in the future
    ("id_number", "4401061985021²345X", "invalid_id_number"),
    ("name", "张", "invalid_name"),
    ("name", "张三3", "invalid_name"),
    ("phone", "12345", "invalid_phone"),
])
def test_invalid_card_query_fields_are_400_and_change_nothing(stack: LocalStack, api: Client, field: str, value: str,
                                                              code: str) -> None:
    body = card_body(ZHANG, **{field: value})
    response = post_json(api, "/v1/card-queries", {**body, "code": "123456"})
    assert response.status_code == 400
    assert error_code(response) == code
    assert stack.pump_once() == 0


def test_mismatch_gets_the_failure_sms_cancelled_none_and_the_api_answers_alike(stack: LocalStack, api: Client) -> None:
    mismatch = card_body(ZHANG, name="张三")
    cancelled_row = next(r for r in SUBSCRIBERS.values() if r["status"] == "cancelled")
    answers = []
    for body in (mismatch, card_body(cancelled_row)):
        response = submit_card(api, stack, body)
        answers.append({k: v for k, v in response.json_body.items() if k != "query_id"})
        assert stack.pump_once() == 1
        wait_finished(stack, response.json_body["query_id"])
    assert answers[0] == answers[1]
    assert replies_to(stack, ZHANG["phone"]) == [
        "【一证通查】您的手机号138****5678查询未成功：手机号码与姓名、身份证号码不匹配，请核对后于24小时后重新查询。"]
    assert replies_to(stack, cancelled_row["phone"]) == []
    assert stack.operators.requests_to("cmcc-gd") == []  # no operator is asked


def _second_phone(row: dict[str, str]) -> dict[str, str]:
    return next(r for r in SUBSCRIBERS.values() if r["id_number"] == row["id_number"] and r is not row)


def _stranger(*not_these: dict[str, str]) -> dict[str, str]:
    """An active subscriber whose own ID number is not ZHANG's."""
    return next(r for r in SUBSCRIBERS.values() if r["status"] == "active" and r["id_number"] != ZHANG["id_number"]
                and all(r is not other for other in not_these))


@pytest.mark.parametrize("strangers_phone", ["mismatching", "registered to the same ID"])
def test_a_strangers_card_query_with_someones_id_number_leaves_their_own_query_accepted_and_answered(
        stack: LocalStack, api: Client, strangers_phone: str) -> None:
    """SPEC §9: no limit keyed by the ID number alone. GIVEN someone who knows ZHANG's name and ID number
    (from a phone of their own, or holding a card opened with that ID) has made a card query today, WHEN
    ZHANG queries from his own phone, THEN it is accepted and answered as any day."""
    phone = _stranger()["phone"] if strangers_phone == "mismatching" else _second_phone(ZHANG)["phone"]
    wait_finished(stack, start_card_query(api, stack, card_body(ZHANG, phone=phone)), timeout=150)
    run_card_query(api, stack, card_body(ZHANG))
    assert replies_to(stack, ZHANG["phone"]) == [SPEC_EXAMPLE]


def test_card_query_answers_are_the_same_bytes_for_a_just_queried_a_fresh_and_a_mismatching_id_number(
        stack: LocalStack, api: Client) -> None:
    """Nothing in the API's answer depends on someone else's lookup: no Retry-After, no other message."""
    from chalicelib.cards.validation import check_character

    run_card_query(api, stack, card_body(ZHANG))  # ZHANG's ID number was just queried
    fresh = "11010520000101123" + check_character("11010520000101123")
    mismatching = _stranger()["id_number"]
    answers = []
    strangers: list[dict[str, str]] = []
    for id_number in (ZHANG["id_number"], fresh, mismatching):
        stranger = _stranger(*strangers)
        strangers.append(stranger)
        response = submit_card(api, stack, card_body(ZHANG, phone=stranger["phone"], id_number=id_number))
        assert response.status_code == 202, response.body
        assert "Retry-After" not in response.headers
        query_id = response.json_body["query_id"]
        body = response.body if isinstance(response.body, bytes) else response.body.encode()
        answers.append((response.status_code, body.replace(query_id.encode(), b"<id>"),
                        sorted(response.headers.items())))
    assert answers[0] == answers[1] == answers[2]


def test_the_owners_card_query_from_a_second_phone_the_same_day_is_answered(stack: LocalStack, api: Client) -> None:
    run_card_query(api, stack, card_body(ZHANG))
    second = _second_phone(ZHANG)
    run_card_query(api, stack, card_body(ZHANG, phone=second["phone"]))
    assert replies_to(stack, second["phone"]) == [SPEC_EXAMPLE]


def test_a_second_card_query_from_the_same_phone_within_24_hours_is_refused(stack: LocalStack, api: Client) -> None:
    run_card_query(api, stack, card_body(ZHANG))
    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61), tick=True):  # a new code
        response = submit_card(api, stack, card_body(ZHANG))
    assert response.status_code == 429
    assert error_code(response) == "query_limit"
    assert int(response.headers["Retry-After"]) > 86000


def test_card_query_reply_redelivered_after_the_sms_went_out_sends_one_sms(stack: LocalStack, api: Client) -> None:
    """GIVEN a card query replied, WHEN its reply message comes again — as if the consumer had died after
    SNS accepted the SMS and before the record was committed — THEN no second SMS goes out."""
    query_id = run_card_query(api, stack, card_body(ZHANG))
    assert replies_to(stack, ZHANG["phone"]) == [SPEC_EXAMPLE]
    table = boto3.resource("dynamodb").Table(stack.env["QUERIES_TABLE"])
    # Undo the commit (the crash), then deliver the message twice more (SQS delivers at least once).
    table.update_item(Key={"query_id": query_id},
                      UpdateExpression="SET #s = :s, deadline_slot = :d, deadline_shard = :h",
                      ExpressionAttributeNames={"#s": "status"},
                      ExpressionAttributeValues={":s": "looking_up", ":d": 0, ":h": "query#0"})
    sqs = aws("sqs")
    for _ in range(2):
        sqs.send_message(QueueUrl=stack.env["REPLY_QUEUE_URL"],
                         MessageBody=json.dumps({"type": "query", "id": query_id}))
    wait_closed(stack, query_id)
    assert replies_to(stack, ZHANG["phone"]) == [SPEC_EXAMPLE]
    assert api.http.get(f"/v1/card-queries/{query_id}").json_body["status"] == "replied"


NEWCOMER = {"id": "mvno-newco", "name": "新来移动", "group": "转售企业", "details": "", "unbind": "", "hotline": "",
            "base_url": "https://yztc-operator.mvno-newco.example/api", "secret_name": "yztc/operators/mvno-newco",
            "max_requests_per_second": 20}


@pytest.mark.parametrize("stack_options", [options(operators=(), extra_operators=[NEWCOMER])])
def test_a_133rd_operator_added_by_data_alone_is_asked_and_reported(stack: LocalStack, api: Client) -> None:
    query_id = run_card_query(api, stack, card_body(ZHANG))
    assert len(stack.operators.requests_to("mvno-newco")) == 1
    assert replies_to(stack, ZHANG["phone"]) == [SPEC_EXAMPLE]  # it answered 0 cards: not named
    # Its answer is kept on the query record with every other operator's (the execution carries none).
    from chalicelib.partners.lookups import stored_results
    from chalicelib.storage.models import QueryRecord

    results = stored_results(QueryRecord.get(query_id, consistent_read=True))
    assert set(results) == {*OPERATORS, "mvno-newco"}
    assert results["mvno-newco"] == {"company": "mvno-newco", "answered": True, "count": 0}
    assert "results" not in json.dumps(history(stack, query_id), default=str)


def test_name_and_id_number_are_never_in_clear_and_are_deleted_after_the_last_answer(
        stack: LocalStack, api: Client, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    from chalicelib.storage.models import TABLE_VARS

    caplog.set_level("INFO")
    query_id = run_card_query(api, stack, card_body(ZHANG))
    ddb = aws("dynamodb")
    record = ddb.get_item(TableName=stack.env["QUERIES_TABLE"], Key={"query_id": {"S": query_id}})["Item"]
    assert "id_sealed" not in record and "name_sealed" not in record and "phone_sealed" in record
    items = json.dumps([ddb.scan(TableName=stack.env[t])["Items"] for t in TABLE_VARS.values()], ensure_ascii=False)
    events = json.dumps(history(stack, query_id), default=str, ensure_ascii=False)
    captured = capfd.readouterr()
    formatter = LambdaPowertoolsFormatter()
    logs = "\n".join([captured.out, captured.err, *(formatter.format(r) for r in caplog.records)])
    for where, text in (("dynamodb", items), ("history", events), ("logs", logs)):
        assert ZHANG["id_number"] not in text and ZHANG["id_number"][:17] not in text, where
        assert ZHANG["name"] not in text, where
        assert_clean(text, where, phone=ZHANG["phone"], id_last6=ZHANG["id_number"][-6:], code="000000")

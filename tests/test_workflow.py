"""The query workflow, executed by moto's interpreter from stepfunctions/query.asl.json,
with the carrier and the eight partners as real HTTP simulators (SPEC §1.5, §4, §5)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from local.stack import LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS
from tests.helpers import COMPANIES, aws, clock_past, deadline_of, history, replies_to, submit, wait_finished

if TYPE_CHECKING:
    from chalice.test import Client

ALL_CALLBACK = ",".join(f"{c}=callback" for c in COMPANIES)


def options(**changes: Any) -> StackOptions:
    return StackOptions(**{**BASE_OPTIONS.__dict__, **changes})


def run_query(api: Client, stack: LocalStack, phone: str, id_last6: str) -> tuple[str, dict[str, Any]]:
    response = submit(api, stack, phone, id_last6)
    assert response.status_code == 202, response.body
    query_id = response.json_body["query_id"]
    assert stack.pump_once() == 1
    execution = wait_finished(stack, query_id)
    return query_id, execution


def status_of(api: Client, query_id: str) -> str:
    return api.http.get(f"/v1/queries/{query_id}").json_body["status"]


def state_transitions(events: list[dict[str, Any]]) -> int:
    return sum(1 for e in events if e["type"].endswith("StateEntered"))


# Fixture partners.csv mixes immediate (alibaba, baidu), callback and flaky (douyin: 503 twice).
def test_happy_path_reports_every_company_in_registry_order(stack: LocalStack, api: Client) -> None:
    query_id, execution = run_query(api, stack, "13812345678", "12345x")
    assert execution["status"] == "SUCCEEDED"
    assert replies_to(stack, "13812345678") == [
        "【一证通查】您的手机号138****5678关联的互联网账号：腾讯2个，阿里巴巴0个，支付宝1个，百度0个，快手0个，"
        "抖音1个，京东1个，美团0个。已返回企业共5个账号。如有异议，请通过“解绑与明细查询”联系相关企业。"]
    assert status_of(api, query_id) == "replied"
    assert len(stack.partners["douyin"].requests) == 3  # flaky: two 503s, then answered from the retry queue
    assert stack.partners["alibaba"].callbacks == []   # immediate: answered in the 200 response


@pytest.mark.parametrize("stack_options", [
    options(partner_modes=ALL_CALLBACK),
    options(partner_modes="jd=flaky"),
    options(partner_modes="jd=silent", deadline_seconds=6),
    options(partner_modes="jd=down", deadline_seconds=6),
], ids=["all-answer", "flaky", "silent", "down"])
def test_a_query_execution_costs_three_state_transitions_whatever_a_partner_does(stack: LocalStack,
                                                                                 api: Client) -> None:
    query_id, _ = run_query(api, stack, "13900001111", "010203")
    events = history(stack, query_id)
    # VerifyCarrier, IsRegisteredToId, AskCompanies (asks every partner and ends)
    assert state_transitions(events) == 3
    assert [e["type"] for e in events if e["type"].endswith("StateEntered")] == ["TaskStateEntered",
                                                                                  "ChoiceStateEntered",
                                                                                  "TaskStateEntered"]
    assert len(replies_to(stack, "13900001111")) == 1


@pytest.mark.parametrize("stack_options", [options(partner_modes="meituan=silent,douyin=callback", deadline_seconds=8)])
def test_silent_partner_is_reported_as_no_answer_at_the_deadline(stack: LocalStack, api: Client) -> None:
    """GIVEN a partner that never answers, WHEN the query runs, THEN its execution has SUCCEEDED within
    seconds while the query is still looking_up, and the one reply comes at the deadline with 暂未返回."""
    response = submit(api, stack, "13900001111", "010203")
    query_id = response.json_body["query_id"]
    assert stack.pump_once() == 1
    sfn = aws("stepfunctions")
    from tests.conftest import wait_for
    from tests.helpers import execution_arn, wait_closed

    ended = wait_for(lambda: (d := sfn.describe_execution(executionArn=execution_arn(stack, query_id)))["status"]
                     != "RUNNING" and d, 20, "the execution to end")
    assert ended["status"] == "SUCCEEDED"
    assert (ended["stopDate"] - ended["startDate"]).total_seconds() < 5
    assert status_of(api, query_id) == "looking_up"  # the partners have not all answered: no reply yet
    assert replies_to(stack, "13900001111") == []
    record = wait_closed(stack, query_id, timeout=30)
    # At the deadline (its 1-second slot here; plus the local queue poll), not before it.
    assert int(record["deadline_at"]) - 1 <= int(record["updated_at"]) <= int(record["deadline_at"]) + 5
    assert replies_to(stack, "13900001111") == [
        "【一证通查】您的手机号139****1111关联的互联网账号：腾讯3个，阿里巴巴1个，支付宝1个，百度0个，快手0个，"
        "抖音0个，京东0个，美团暂未返回。已返回企业共5个账号。如有异议，请通过“解绑与明细查询”联系相关企业。"]
    assert status_of(api, query_id) == "replied"


# The deadline leaves a loaded machine all the time the fan-out's retries need; once it has failed, the clock passes it.
@pytest.mark.parametrize("stack_options", [options(deadline_seconds=600)])
def test_a_fan_out_failing_every_retry_fails_its_execution_and_the_deadline_reports_every_company_unanswered(
        stack: LocalStack, api: Client) -> None:
    """GIVEN AskCompanies fails every try before recording whom it asks (its query-table write refused), WHEN the
    query runs, THEN its execution ends FAILED (FanOutFailed: the ExecutionsFailed alarm sees it), and the one reply
    comes at the deadline with every company 暂未返回 — not a reply listing no company."""
    from botocore.exceptions import ClientError

    from chalicelib import registry
    from chalicelib.storage.models import QueryRecord
    from local.lambdas import CURRENT
    from tests.conftest import wait_for
    from tests.helpers import execution_arn, wait_closed

    def refuse(params: dict[str, Any], **_: Any) -> None:
        if getattr(CURRENT, "function", None) == "AskCompanies" and params.get("TableName") == \
                stack.env["QUERIES_TABLE"]:
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"}}, "UpdateItem")

    events = QueryRecord._get_connection().connection.client.meta.events
    events.register("provide-client-params.dynamodb.UpdateItem", refuse)
    try:
        response = submit(api, stack, "13812345678", "12345X")
        query_id = response.json_body["query_id"]
        assert stack.pump_once() == 1
        sfn = aws("stepfunctions")
        ended = wait_for(lambda: (d := sfn.describe_execution(executionArn=execution_arn(stack, query_id)))[
            "status"] != "RUNNING" and d, 30, "the execution to end")
        assert ended["status"] == "FAILED" and ended["error"] == "FanOutFailed"
        entered = [e["stateEnteredEventDetails"]["name"] for e in history(stack, query_id)
                   if e["type"].endswith("StateEntered")]
        assert entered == ["VerifyCarrier", "IsRegisteredToId", "AskCompanies", "FanOutFailed"]
        assert all(p.requests == [] for p in stack.partners.values())  # nobody was asked
        assert status_of(api, query_id) == "looking_up" and replies_to(stack, "13812345678") == []
        deadline_at = deadline_of(stack, query_id)
        with clock_past(deadline_at):  # the execution ended long before: the deadline machinery replies
            record = wait_closed(stack, query_id, timeout=40)
    finally:
        events.unregister("provide-client-params.dynamodb.UpdateItem", refuse)
    assert deadline_at < int(record["updated_at"]) <= deadline_at + 30
    pending = "，".join(f"{company.name}暂未返回" for company in registry.companies())
    assert replies_to(stack, "13812345678") == [
        f"【一证通查】您的手机号138****5678关联的互联网账号：{pending}。已返回企业共0个账号。"
        "如有异议，请通过“解绑与明细查询”联系相关企业。"]
    assert status_of(api, query_id) == "replied"


@pytest.mark.parametrize("stack_options", [options(partner_modes="jd=reject")])
def test_partner_answering_4xx_is_reported_as_no_answer_without_retry(stack: LocalStack, api: Client) -> None:
    run_query(api, stack, "18912345678", "071234")
    (reply,) = replies_to(stack, "18912345678")
    assert "京东暂未返回" in reply
    assert "腾讯1个" in reply and "美团1个" in reply
    assert "已返回企业共2个账号" in reply
    assert len(stack.partners["jd"].requests) == 1


def test_mismatching_id_digits_get_the_failure_sms(stack: LocalStack, api: Client) -> None:
    query_id, execution = run_query(api, stack, "13812345678", "254321")
    assert execution["status"] == "SUCCEEDED"
    assert replies_to(stack, "13812345678") == [
        "【一证通查】您的手机号138****5678查询未成功：手机号码与身份证号码后六位不匹配，请核对后于24小时后重新查询。"]
    assert status_of(api, query_id) == "failed"
    assert all(p.requests == [] for p in stack.partners.values())  # no partner is asked


def test_cancelled_number_gets_no_sms_and_fails(stack: LocalStack, api: Client) -> None:
    query_id, execution = run_query(api, stack, "13512340000", "201015")
    assert execution["status"] == "SUCCEEDED"
    assert replies_to(stack, "13512340000") == []
    assert status_of(api, query_id) == "failed"


def test_carrier_down_then_up_is_retried(stack: LocalStack, api: Client) -> None:
    stack.carrier.unavailable_for = 2
    query_id, _ = run_query(api, stack, "13812345678", "12345X")
    assert len(stack.carrier.requests) == 3
    assert "腾讯2个" in replies_to(stack, "13812345678")[0]
    retried = [e for e in history(stack, query_id) if e["type"] == "LambdaFunctionFailed"]
    assert [json.loads(e["lambdaFunctionFailedEventDetails"]["cause"])["errorType"] for e in retried] == \
        ["CarrierUnavailable", "CarrierUnavailable"]


def test_carrier_unknown_number_gets_the_try_later_sms(stack: LocalStack, api: Client) -> None:
    # A valid China Mobile number the carrier simulator does not know answers "unknown".
    query_id, _ = run_query(api, stack, "13712349876", "010101")
    assert replies_to(stack, "13712349876") == [
        "【一证通查】您的手机号137****9876查询未成功：暂时无法完成查询，请于24小时后重新查询。"]
    assert status_of(api, query_id) == "failed"


def test_reply_redelivered_after_the_sms_went_out_sends_no_second_sms(stack: LocalStack, api: Client) -> None:
    """GIVEN a query replied, WHEN its reply message comes again — as if the consumer had died after SNS
    accepted the SMS and before the record was committed — THEN no second SMS goes out."""
    query_id, _ = run_query(api, stack, "13812345678", "12345X")
    assert len(replies_to(stack, "13812345678")) == 1
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
    from tests.helpers import wait_closed

    wait_closed(stack, query_id)
    assert len(replies_to(stack, "13812345678")) == 1
    assert status_of(api, query_id) == "replied"


def test_execution_history_and_tables_hold_no_personal_data(
        stack: LocalStack, api: Client, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    caplog.set_level("INFO")  # the deployed log level
    phone, id_last6 = "18612345678", "110358"
    query_id, _ = run_query(api, stack, phone, id_last6)
    code_messages = [m["message"] for m in stack.read_outbox() if "验证码" in m["message"]]
    code = code_messages[0].split("验证码为")[1][:6]
    events = json.dumps(history(stack, query_id), default=str, ensure_ascii=False)
    ddb = aws("dynamodb")
    from chalicelib.storage.models import TABLE_VARS

    items = json.dumps([ddb.scan(TableName=stack.env[t])["Items"] for t in TABLE_VARS.values()], ensure_ascii=False)
    captured = capfd.readouterr()
    formatter = LambdaPowertoolsFormatter()
    logs = "\n".join([captured.out, captured.err, *(formatter.format(r) for r in caplog.records)])
    assert "AskCompanies" in events  # we did look at a real run
    assert "query_id" in logs
    from tests.privacy import assert_clean

    for where, text in (("history", events), ("dynamodb", items), ("logs", logs)):
        assert_clean(text, where, phone=phone, id_last6=id_last6, code=code)
    record = ddb.get_item(TableName=stack.env["QUERIES_TABLE"], Key={"query_id": {"S": query_id}})["Item"]
    assert "id_sealed" not in record  # the ID digits are discarded after the carrier check

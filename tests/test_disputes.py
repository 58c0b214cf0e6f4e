"""Disputes (SPEC §8): "this account is not mine", forwarded to the company, tracked, answered by SMS.

The dispute workflow runs from stepfunctions/dispute.asl.json on moto's interpreter; partners are the
HTTP simulators, answering /disputes per their mode.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from chalicelib import signing
from local.stack import LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS, post_json, wait_for
from tests.helpers import (
    COMPANIES,
    FIXTURE_OPERATORS,
    aws,
    error_code,
    latest_code,
    make_run,
    request_code,
    submit,
    wait_finished,
)
from tests.privacy import assert_clean

if TYPE_CHECKING:
    from pathlib import Path

    from chalice.test import Client, HTTPResponse
    from playwright.sync_api import Locator, Page
    from pynamodb.expressions.update import Action

    from chalicelib.storage.models import Dispute

PHONE, ID6 = "13812345678", "12345X"  # fixture accounts: 腾讯2, 支付宝1, 抖音1, 京东1, others 0
NAMES = {"tencent": "腾讯", "alipay": "支付宝", "douyin": "抖音", "jd": "京东", "alibaba": "阿里巴巴"}
HOTLINES = {"tencent": "0755-83765566", "jd": "950618"}


def options(modes: dict[str, str] | None = None, **changes: Any) -> StackOptions:
    """Every partner answers lookups and disputes at once unless told otherwise: queries reply in a second."""
    chosen = {c: "immediate" for c in COMPANIES} | (modes or {})
    return StackOptions(**{**BASE_OPTIONS.__dict__, "partner_modes": ",".join(f"{c}={m}" for c, m in chosen.items()),
                           **changes})


IMMEDIATE = options()
CALLBACK_TENCENT = options({"tencent": "callback"})


@pytest.fixture
def stack_options() -> StackOptions:
    """Unless a test parametrizes its own."""
    return IMMEDIATE


pytestmark = pytest.mark.usefixtures("codes_without_resend_gap")  # tests/conftest.py


# -- helpers ---------------------------------------------------------------------------------
def replied_query(api: Client, stack: LocalStack, phone: str = PHONE, id_last6: str = ID6) -> str:
    response = submit(api, stack, phone, id_last6)
    assert response.status_code == 202, response.body
    query_id = response.json_body["query_id"]
    assert stack.pump_once() == 1
    assert wait_finished(stack, query_id)["status"] == "SUCCEEDED"
    return query_id


def from_now_on(stack: LocalStack, company: str, mode: str) -> None:
    """The partner answered the query; it treats what comes next (the dispute) in `mode`."""
    stack.partners[company].mode = mode


def dispute(api: Client, stack: LocalStack, company: str, phone: str = PHONE, code: str | None = None) -> HTTPResponse:
    if code is None:
        assert request_code(api, phone).status_code == 202
        code = latest_code(stack, phone)
    return post_json(api, "/v1/disputes", {"phone": phone, "code": code, "company": company})


def accepted(response: HTTPResponse) -> str:
    assert response.status_code == 202, response.body
    body = response.json_body
    assert body["status"] == "submitted" and body["respond_within_days"] == 15
    return str(body["dispute_id"])


def dispute_arn(stack: LocalStack, dispute_id: str) -> str:
    return stack.env["DISPUTE_STATE_MACHINE_ARN"].replace(":stateMachine:", ":execution:") + ":" + dispute_id


def wait_execution_ended(stack: LocalStack, dispute_id: str, timeout: float = 60) -> dict[str, Any]:
    """The dispute's execution ended (Forward only: it does not wait for the partner's answer)."""
    sfn = aws("stepfunctions")

    def finished() -> dict[str, Any] | None:
        try:
            described = sfn.describe_execution(executionArn=dispute_arn(stack, dispute_id))
        except sfn.exceptions.ExecutionDoesNotExist:
            return None
        return described if described["status"] != "RUNNING" else None

    return wait_for(finished, timeout, f"dispute {dispute_id}'s execution to end")


def wait_dispute_closed(stack: LocalStack, dispute_id: str, timeout: float = 60) -> Dispute:
    """The outcome SMS is committed (app.send_replies): resolved or expired, out of the deadline index."""
    from chalicelib.storage.models import Dispute

    def closed() -> Dispute | None:
        item = Dispute.get(dispute_id, consistent_read=True)
        return item if item.status in ("resolved", "expired") and item.deadline_slot is None else None

    return wait_for(closed, timeout, f"dispute {dispute_id}'s outcome SMS")


def wait_dispute_finished(stack: LocalStack, dispute_id: str, timeout: float = 60) -> dict[str, Any]:
    """Its execution ended and its one outcome SMS is committed (sent from the reply queue, later)."""
    execution = wait_execution_ended(stack, dispute_id, timeout)
    wait_dispute_closed(stack, dispute_id, timeout)
    return execution


def entered_states(stack: LocalStack, dispute_id: str) -> list[str]:
    return [e.get("stateEnteredEventDetails", {}).get("name") for e in dispute_history(stack, dispute_id)
            if e["type"].endswith("StateEntered")]


def dispute_history(stack: LocalStack, dispute_id: str) -> list[dict[str, Any]]:
    sfn = aws("stepfunctions")
    return sfn.get_execution_history(executionArn=dispute_arn(stack, dispute_id), maxResults=1000)["events"]


def sms_about(stack: LocalStack, dispute_id: str, phone: str = PHONE) -> list[str]:
    return [m["message"] for m in stack.read_outbox() if m["phone"] == phone and dispute_id in m["message"]]


def status(api: Client, dispute_id: str) -> dict[str, Any]:
    response = api.http.get(f"/v1/disputes/{dispute_id}")
    assert response.status_code == 200, response.body
    return response.json_body


def call_back(api: Client, stack: LocalStack, company: str, body: Any, *, key: str | None = None,
              timestamp: float | None = None, headers: dict[str, str] | None = None) -> HTTPResponse:
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    signed = signing.signed_headers(key or stack.secrets[f"yztc/partners/{company}"], raw, timestamp)
    return api.http.post(f"/v1/partners/{company}/disputes", headers={**signed, **(headers or {})}, body=raw)


def submitted_text(company: str, dispute_id: str) -> str:
    return (f"【一证通查】您对{NAMES[company]}账号的核查申请已提交（编号{dispute_id}），"
            "企业将在15天内处理，结果将以短信告知。")


# -- the whole loop ----------------------------------------------------------------------------
@pytest.mark.parametrize("stack_options", [CALLBACK_TENCENT])
def test_whole_loop_with_a_callback_partner_and_an_immediate_one(stack: LocalStack, api: Client) -> None:
    """GIVEN a reply listing 腾讯2个 and 支付宝1个, WHEN the citizen disputes both, THEN each is forwarded
    (tencent answers by callback, alipay in its 200) and each gets the submitted SMS and one outcome SMS."""
    replied_query(api, stack)
    tencent = accepted(dispute(api, stack, "tencent"))
    alipay = accepted(dispute(api, stack, "alipay"))
    assert re.fullmatch(r"[A-Z2-7]{16}", tencent) and tencent != alipay
    for dispute_id in (tencent, alipay):
        execution = wait_dispute_finished(stack, dispute_id)
        assert execution["status"] == "SUCCEEDED"
    assert sms_about(stack, tencent) == [
        submitted_text("tencent", tencent),
        f"【一证通查】腾讯已处理您的核查申请（编号{tencent}）：已解除2个账号与您手机号的绑定。"]
    assert sms_about(stack, alipay) == [
        submitted_text("alipay", alipay),
        f"【一证通查】支付宝已处理您的核查申请（编号{alipay}）：已解除1个账号与您手机号的绑定。"]
    assert stack.partners["tencent"].callbacks[-1] == 200  # its dispute callback was recorded
    assert [d["dispute_id"] for d in stack.partners["tencent"].disputes] == [tencent]
    assert [d["dispute_id"] for d in stack.partners["alipay"].disputes] == [alipay]
    for company, dispute_id in (("tencent", tencent), ("alipay", alipay)):
        shown = status(api, dispute_id)
        assert shown["status"] == "resolved" and shown["company"] == company
        assert set(shown) == {"dispute_id", "company", "status", "created_at"}  # never the outcome
    # One state per dispute: Forward; the outcome SMS came from the reply queue, after the execution ended.
    for dispute_id in (tencent, alipay):
        assert entered_states(stack, dispute_id) == ["Forward"]


def test_accepted_answer_and_status_before_the_outcome(stack: LocalStack, api: Client) -> None:
    replied_query(api, stack)
    response = dispute(api, stack, "jd")
    dispute_id = accepted(response)
    assert response.json_body == {"dispute_id": dispute_id, "status": "submitted", "company": "jd",
                                  "respond_within_days": 15}
    assert status(api, dispute_id)["status"] in {"submitted", "forwarded", "resolved"}
    wait_dispute_finished(stack, dispute_id)
    shown = status(api, dispute_id)
    assert shown["status"] == "resolved"
    assert status(api, dispute_id.lower()) == shown  # an id typed in lower case is the same id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", shown["created_at"])


@pytest.mark.routes_only
@pytest.mark.parametrize("path", ["/v1/disputes/AAAAAAAAAAAAAAAA", "/v1/disputes/nope",
                                  "/v1/disputes/" + "A" * 200])
def test_unknown_dispute_is_404(stack: LocalStack, api: Client, path: str) -> None:
    response = api.http.get(path)
    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_flaky_partner_gets_the_dispute_through_the_retry_queue(stack: LocalStack, api: Client) -> None:
    replied_query(api, stack)
    from_now_on(stack, "douyin", "flaky")
    dispute_id = accepted(dispute(api, stack, "douyin"))
    assert wait_dispute_finished(stack, dispute_id)["status"] == "SUCCEEDED"
    assert len(stack.partners["douyin"].disputes) == 3  # two 503s, then answered
    assert sms_about(stack, dispute_id)[-1] == \
        f"【一证通查】抖音已处理您的核查申请（编号{dispute_id}）：已解除1个账号与您手机号的绑定。"


def test_partner_refusing_the_dispute_gets_the_rejected_sms(stack: LocalStack, api: Client) -> None:
    replied_query(api, stack, "18912345678", "071234")  # 腾讯1, 京东2, 美团1
    from_now_on(stack, "jd", "reject")
    dispute_id = accepted(dispute(api, stack, "jd", phone="18912345678"))
    wait_dispute_finished(stack, dispute_id)
    assert sms_about(stack, dispute_id, "18912345678")[-1] == \
        f"【一证通查】京东未能受理您的核查申请（编号{dispute_id}），请致电950618。"
    assert len(stack.partners["jd"].disputes) == 1  # a 4xx is not retried


# -- a partner that never answers ------------------------------------------------------------
@pytest.mark.parametrize("stack_options", [options(dispute_deadline_seconds=6)])
def test_partner_that_never_answers_gets_the_expired_sms_at_the_deadline(stack: LocalStack, api: Client) -> None:
    """GIVEN tencent never answers, THEN the dispute's execution ends in seconds (Forward only) while the
    dispute waits `forwarded`; at the deadline the deadline executions send the expired SMS, once."""
    from chalicelib.storage.models import Dispute

    replied_query(api, stack)
    from_now_on(stack, "tencent", "silent")
    dispute_id = accepted(dispute(api, stack, "tencent"))
    execution = wait_execution_ended(stack, dispute_id, timeout=10)
    assert execution["status"] == "SUCCEEDED"
    assert entered_states(stack, dispute_id) == ["Forward"]
    assert status(api, dispute_id)["status"] == "forwarded"  # still waiting for tencent
    assert sms_about(stack, dispute_id) == [submitted_text("tencent", dispute_id)]
    deadline_at = int(Dispute.get(dispute_id, consistent_read=True).deadline_at)
    assert execution["stopDate"].timestamp() < deadline_at  # nothing waits on the partner
    wait_dispute_closed(stack, dispute_id, timeout=30)
    assert time.time() >= deadline_at - 1  # at the deadline (its 1 s slot, rounded down), not before
    assert sms_about(stack, dispute_id) == [
        submitted_text("tencent", dispute_id),
        f"【一证通查】腾讯未在15天内答复您的核查申请（编号{dispute_id}），请致电0755-83765566。"]
    assert status(api, dispute_id)["status"] == "expired"
    assert "deadline_step" in stack.dispatcher.calls  # the deadline machinery claimed it, not the execution
    assert not [e for e in dispute_history(stack, dispute_id) if e["type"] == "TaskTimedOut"]
    # Closed: a late answer is acknowledged (SPEC §4) and changes nothing; the citizen may dispute again.
    late = call_back(api, stack, "tencent", {"dispute_id": dispute_id, "outcome": "unbound", "accounts": 2})
    assert late.status_code == 200 and late.json_body == {"status": "recorded"}
    assert status(api, dispute_id)["status"] == "expired"
    assert len(sms_about(stack, dispute_id)) == 2
    again = accepted(dispute(api, stack, "tencent"))
    assert again != dispute_id


# -- partner callbacks -------------------------------------------------------------------------
@pytest.fixture
def waiting(stack: LocalStack, api: Client) -> str:
    """A dispute forwarded to tencent, which will answer only by the callbacks the test makes."""
    replied_query(api, stack)
    from_now_on(stack, "tencent", "silent")
    dispute_id = accepted(dispute(api, stack, "tencent"))
    wait_for(lambda: status(api, dispute_id)["status"] == "forwarded", 10, "tencent asked (its 202 recorded)")
    return dispute_id


def test_duplicate_callback_is_200_and_conflicting_one_is_409_one_outcome_sms(stack: LocalStack, api: Client,
                                                                              waiting: str) -> None:
    dispute_id = waiting
    body = {"dispute_id": dispute_id, "outcome": "owner_confirmed", "accounts": 0}
    first = call_back(api, stack, "tencent", body)
    assert first.status_code == 200 and first.json_body == {"status": "recorded"}
    assert call_back(api, stack, "tencent", body).status_code == 200
    conflicting = call_back(api, stack, "tencent", {**body, "outcome": "unbound", "accounts": 2})
    assert conflicting.status_code == 409
    assert error_code(conflicting) == "conflict"
    wait_dispute_finished(stack, dispute_id)
    assert call_back(api, stack, "tencent", body).status_code == 200  # a late duplicate: still recorded
    assert sms_about(stack, dispute_id) == [
        submitted_text("tencent", dispute_id),
        f"【一证通查】腾讯已处理您的核查申请（编号{dispute_id}）：经核实，相关账号为您本人注册。如有疑问请致电0755-83765566。"]
    assert status(api, dispute_id)["status"] == "resolved"


@pytest.mark.parametrize(("outcome", "accounts", "text"), [
    ("no_account", 0, "腾讯已处理您的核查申请（编号{id}）：未发现与您手机号绑定的账号。"),
    ("rejected", 0, "腾讯未能受理您的核查申请（编号{id}），请致电0755-83765566。"),
    ("unbound", 2, "腾讯已处理您的核查申请（编号{id}）：已解除2个账号与您手机号的绑定。"),
])
def test_each_outcome_has_its_sms(stack: LocalStack, api: Client, waiting: str, outcome: str, accounts: int,
                                  text: str) -> None:
    dispute_id = waiting
    body = {"dispute_id": dispute_id, "outcome": outcome, "accounts": accounts}
    assert call_back(api, stack, "tencent", body).status_code == 200
    wait_dispute_finished(stack, dispute_id)
    assert sms_about(stack, dispute_id)[-1] == "【一证通查】" + text.format(id=dispute_id)


@pytest.mark.parametrize("tamper", ["wrong_key", "missing", "stale", "future", "garbled", "body"])
def test_forged_or_stale_callback_is_401_and_records_nothing(stack: LocalStack, api: Client, waiting: str,
                                                             tamper: str) -> None:
    dispute_id = waiting
    body = {"dispute_id": dispute_id, "outcome": "unbound", "accounts": 2}
    if tamper == "wrong_key":
        response = call_back(api, stack, "tencent", body, key=stack.secrets["yztc/partners/jd"])
    elif tamper == "missing":
        response = api.http.post("/v1/partners/tencent/disputes", headers={"Content-Type": "application/json"},
                                 body=json.dumps(body))
    elif tamper == "stale":
        response = call_back(api, stack, "tencent", body, timestamp=time.time() - 301)
    elif tamper == "future":
        # Well past the 300 s window: a loaded machine may take a second or more to check it.
        response = call_back(api, stack, "tencent", body, timestamp=time.time() + 360)
    elif tamper == "garbled":
        response = call_back(api, stack, "tencent", body, headers={"X-Signature": "00" * 32})
    else:
        raw = json.dumps(body).encode()
        headers = signing.signed_headers(stack.secrets["yztc/partners/tencent"], raw)
        response = api.http.post("/v1/partners/tencent/disputes", headers=headers, body=raw.replace(b"2}", b"9}"))
    assert response.status_code == 401
    assert error_code(response) == "bad_signature"
    assert status(api, dispute_id)["status"] == "forwarded"
    assert call_back(api, stack, "tencent", {**body, "outcome": "no_account", "accounts": 0}).status_code == 200


def test_callback_for_unknown_or_another_companys_dispute_is_404(stack: LocalStack, api: Client, waiting: str) -> None:
    dispute_id = waiting
    body = {"dispute_id": dispute_id, "outcome": "unbound", "accounts": 2}
    assert call_back(api, stack, "jd", body).status_code == 404
    assert call_back(api, stack, "tencent", {**body, "dispute_id": "A" * 16}).status_code == 404
    assert call_back(api, stack, "tencent", {**body, "dispute_id": "x"}).status_code == 404
    response = api.http.post("/v1/partners/pinduoduo/disputes", headers={"X-Timestamp": "1"}, body=b"{}")
    assert response.status_code == 404


@pytest.mark.parametrize("body", [
    {"outcome": "unbound", "accounts": 1},
    {"dispute_id": "D", "outcome": "expired"},
    {"dispute_id": "D", "outcome": "unbound"},
    {"dispute_id": "D", "outcome": "unbound", "accounts": -1},
    {"dispute_id": "D", "outcome": "unbound", "accounts": 1.0},
    {"dispute_id": "D", "outcome": "unbound", "accounts": True},
    {"dispute_id": "D", "outcome": "unbound", "accounts": 100_001},
    {"dispute_id": "D", "outcome": "【一证通查】请登录 http://evil.example", "accounts": 1},
    {"dispute_id": "D", "outcome": 1},
    {"dispute_id": 5, "outcome": "unbound", "accounts": 1},
    [1, 2],
], ids=lambda body: json.dumps(body, ensure_ascii=False)[:40])
def test_malformed_callback_is_400(stack: LocalStack, api: Client, waiting: str, body: Any) -> None:
    dispute_id = waiting
    if isinstance(body, dict) and body.get("dispute_id") == "D":
        body = {**body, "dispute_id": dispute_id}
    response = call_back(api, stack, "tencent", body)
    assert response.status_code == 400
    assert error_code(response) == "invalid_request"
    assert status(api, dispute_id)["status"] == "forwarded"


# -- who may dispute what ---------------------------------------------------------------------
def test_nothing_to_dispute_without_a_recent_query(stack: LocalStack, api: Client) -> None:
    response = dispute(api, stack, "tencent", phone="13900001111")
    assert response.status_code == 409
    assert error_code(response) == "nothing_to_dispute"


def test_nothing_to_dispute_at_a_company_that_reported_no_account(stack: LocalStack, api: Client) -> None:
    replied_query(api, stack)
    response = dispute(api, stack, "alibaba")  # 阿里巴巴0个
    assert response.status_code == 409
    assert error_code(response) == "nothing_to_dispute"


def test_nothing_to_dispute_after_seven_days(stack: LocalStack, api: Client) -> None:
    replied_query(api, stack)
    # Eight days later: the reply's record is older than 7 days (DynamoDB's TTL deletes lazily).
    from chalicelib.storage.models import ReportedAccounts

    key = stack.app_module.hasher().digest("phone", PHONE)
    ReportedAccounts.get(key, "tencent").update(actions=[ReportedAccounts.replied_at.add(-8 * 86400)])
    response = dispute(api, stack, "tencent")
    assert response.status_code == 409
    assert error_code(response) == "nothing_to_dispute"
    assert accepted(dispute(api, stack, "jd"))  # still recent


def test_dispute_limit_for_an_open_dispute_at_the_same_company(stack: LocalStack, api: Client) -> None:
    replied_query(api, stack)
    from_now_on(stack, "tencent", "silent")
    accepted(dispute(api, stack, "tencent"))
    response = dispute(api, stack, "tencent")
    assert response.status_code == 429
    assert error_code(response) == "dispute_limit"
    assert 3600 < int(response.headers["Retry-After"]) <= BASE_OPTIONS.dispute_deadline_seconds + 3600


def test_dispute_limit_for_the_fourth_dispute_of_the_day(stack: LocalStack, api: Client) -> None:
    replied_query(api, stack)
    for company in ("tencent", "alipay", "douyin"):
        accepted(dispute(api, stack, company))
    response = dispute(api, stack, "jd")
    assert response.status_code == 429
    assert error_code(response) == "dispute_limit"
    assert 0 < int(response.headers["Retry-After"]) <= 86400


def test_wrong_or_used_code_is_403(stack: LocalStack, api: Client) -> None:
    replied_query(api, stack)
    assert request_code(api, PHONE).status_code == 202
    code = latest_code(stack, PHONE)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    response = dispute(api, stack, "tencent", code=wrong)
    assert response.status_code == 403 and error_code(response) == "wrong_code"
    accepted(dispute(api, stack, "tencent", code=code))
    used = dispute(api, stack, "jd", code=code)
    assert used.status_code == 403 and error_code(used) == "wrong_code"


def test_the_query_code_cannot_be_reused_for_a_dispute(stack: LocalStack, api: Client) -> None:
    assert request_code(api, PHONE).status_code == 202
    code = latest_code(stack, PHONE)
    assert submit(api, stack, PHONE, ID6, code).status_code == 202
    response = dispute(api, stack, "tencent", code=code)
    assert response.status_code == 403 and error_code(response) == "wrong_code"


@pytest.mark.routes_only
@pytest.mark.parametrize(("body", "code"), [
    ({"phone": PHONE, "code": "123456"}, "invalid_request"),
    ({"phone": PHONE, "company": "tencent"}, "invalid_request"),
    ({"phone": "12345", "code": "123456", "company": "tencent"}, "invalid_phone"),
    ({"phone": PHONE, "code": "12345", "company": "tencent"}, "invalid_code_format"),
    ({"phone": PHONE, "code": "123456", "company": "pinduoduo"}, "invalid_company"),
    ({"phone": PHONE, "code": "123456", "company": ["tencent"]}, "invalid_company"),
    ([PHONE], "invalid_request"),
])
def test_invalid_dispute_requests_are_400(stack: LocalStack, api: Client, body: Any, code: str) -> None:
    response = post_json(api, "/v1/disputes", body)
    assert response.status_code == 400
    assert error_code(response) == code


# -- exactly once, and no personal data ---------------------------------------------------------
def test_notify_step_retried_after_sns_succeeded_sends_no_second_sms(stack: LocalStack, api: Client,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN send_replies dies after SNS accepted the outcome SMS and before the dispute was closed, WHEN
    the reply message comes back (SQS, after its visibility timeout), THEN no second SMS goes out; nor when
    the message is delivered once more after the dispute closed (SQS delivers at least once)."""
    from chalicelib.disputes import notify
    from chalicelib.storage.models import Dispute

    real = notify.finished_actions
    crashes = {"left": 1, "commits": 0}

    def crash_once(model: Any) -> list[Action]:
        if model is Dispute:
            crashes["commits"] += 1
            if crashes["left"]:
                crashes["left"] -= 1
                raise RuntimeError("send_replies died after SNS accepted the SMS (injected)")
        return real(model)

    monkeypatch.setattr(notify, "finished_actions", crash_once)
    replied_query(api, stack)
    dispute_id = accepted(dispute(api, stack, "tencent"))
    assert wait_dispute_finished(stack, dispute_id)["status"] == "SUCCEEDED"
    assert crashes == {"left": 0, "commits": 2}  # the message came back and was handled again
    assert len(sms_about(stack, dispute_id)) == 2  # submitted + one outcome
    assert status(api, dispute_id)["status"] == "resolved"
    sqs = aws("sqs")
    sqs.send_message(QueueUrl=stack.env["REPLY_QUEUE_URL"], MessageBody=json.dumps({"type": "dispute",
                                                                                    "id": dispute_id}))

    def reply_queue_drained() -> bool:
        attributes = sqs.get_queue_attributes(
            QueueUrl=stack.env["REPLY_QUEUE_URL"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return all(int(v) == 0 for v in attributes.values())

    wait_for(reply_queue_drained, 20, "the redelivered reply message handled")
    assert len(sms_about(stack, dispute_id)) == 2
    assert status(api, dispute_id)["status"] == "resolved"


def test_forward_step_retried_sends_no_second_submitted_sms(stack: LocalStack, api: Client) -> None:
    stack.dispatcher.lose_results["forward_dispute"] = 1
    replied_query(api, stack)
    dispute_id = accepted(dispute(api, stack, "tencent"))
    assert wait_dispute_finished(stack, dispute_id)["status"] == "SUCCEEDED"
    assert stack.dispatcher.calls.count("forward_dispute") == 2
    assert sms_about(stack, dispute_id) == [
        submitted_text("tencent", dispute_id),
        f"【一证通查】腾讯已处理您的核查申请（编号{dispute_id}）：已解除2个账号与您手机号的绑定。"]


def test_no_phone_number_in_clear_in_tables_executions_logs(
        stack: LocalStack, api: Client, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    from chalicelib.storage.models import TABLE_VARS

    caplog.set_level("INFO")
    replied_query(api, stack)
    dispute_id = accepted(dispute(api, stack, "tencent"))
    wait_dispute_finished(stack, dispute_id)
    codes = [m["message"].split("验证码为")[1][:6] for m in stack.read_outbox() if "验证码" in m["message"]]
    events = json.dumps(dispute_history(stack, dispute_id), default=str, ensure_ascii=False)
    ddb = aws("dynamodb")
    items = json.dumps([ddb.scan(TableName=stack.env[t])["Items"] for t in TABLE_VARS.values()], ensure_ascii=False)
    captured = capfd.readouterr()
    formatter = LambdaPowertoolsFormatter()
    logs = "\n".join([captured.out, captured.err, *(formatter.format(r) for r in caplog.records)])
    assert "Forward" in events and "dispute_id" in logs and "yztc-reported" in stack.env["REPORTED_TABLE"]
    assert dispute_id in items
    for where, text in (("history", events), ("dynamodb", items), ("logs", logs),
                        ("status", json.dumps(status(api, dispute_id)))):
        for code in codes:
            assert_clean(text, where, phone=PHONE, id_last6=ID6, code=code)
    record = ddb.get_item(TableName=stack.env["DISPUTES_TABLE"], Key={"dispute_id": {"S": dispute_id}})["Item"]
    assert "phone_sealed" not in record  # deleted once the outcome SMS went out


# -- delivery through the partner's circuit breaker (SPEC §4, §8) ----------------------------------
def open_circuit(stack: LocalStack, company: str) -> int:
    """Open `company`'s circuit as SPEC §4 does: 5 transient failures while it answered nothing for 30 s."""
    circuits = stack.app_module.lookups().circuits
    now = int(time.time())
    for at in (now - 30, now - 23, now - 15, now - 8, now):
        circuits.failed(company, at)
    assert circuits.states([company])[company].is_open
    return now


def test_open_circuit_parks_the_dispute_until_a_probe_closes_it(stack: LocalStack, api: Client) -> None:
    """GIVEN jd's circuit is open, WHEN a dispute for jd is submitted, THEN nothing is sent to jd;
    WHEN the delivery job's probe (the oldest due task of any kind) is answered, THEN the same run replays
    the rest of jd's backlog, the dispute and a parked lookup alike."""
    replied_query(api, stack)
    circuits = stack.app_module.lookups().circuits
    open_circuit(stack, "jd")
    dispute_id = accepted(dispute(api, stack, "jd"))
    wait_for(lambda: len(sms_about(stack, dispute_id)) == 1, 10, "the submitted SMS")
    assert stack.partners["jd"].disputes == []
    assert status(api, dispute_id)["status"] == "submitted"
    # Another citizen's query parks its jd lookup behind the open circuit too.
    other = submit(api, stack, "18912345678", "071234").json_body["query_id"]
    assert stack.pump_once() == 1
    wait_for(lambda: len(stack.partners["tencent"].requests) >= 2, 10, "the second query's fan-out")
    sent = stack.deliver_once(now=time.time() + 61)  # a minute later: the probe is due
    assert sent["jd"] >= 2  # the probe (a lookup), then the dispute
    assert not circuits.states(["jd"])["jd"].is_open
    assert wait_dispute_finished(stack, dispute_id)["status"] == "SUCCEEDED"
    assert sms_about(stack, dispute_id)[-1] == \
        f"【一证通查】京东已处理您的核查申请（编号{dispute_id}）：已解除1个账号与您手机号的绑定。"
    assert wait_finished(stack, other)["status"] == "SUCCEEDED"


def test_open_circuit_with_no_lookup_waiting_the_parked_dispute_is_the_probe(stack: LocalStack, api: Client) -> None:
    """GIVEN jd's circuit is open and no lookup waits for jd, WHEN the delivery job's probe is due, THEN the
    parked dispute is the probe: answered, it closes the circuit and the citizen gets the outcome SMS."""
    replied_query(api, stack)
    circuits = stack.app_module.lookups().circuits
    now = open_circuit(stack, "jd")
    dispute_id = accepted(dispute(api, stack, "jd"))
    wait_for(lambda: len(sms_about(stack, dispute_id)) == 1, 10, "the submitted SMS")
    assert stack.partners["jd"].disputes == []
    assert stack.deliver_once(now=now + 30)["jd"] == 0  # the probe is not due yet: nothing is sent
    assert stack.partners["jd"].disputes == []
    assert stack.deliver_once(now=time.time() + 61)["jd"] == 1  # a minute later: the dispute is the probe
    assert [d["dispute_id"] for d in stack.partners["jd"].disputes] == [dispute_id]
    assert not circuits.states(["jd"])["jd"].is_open
    assert wait_dispute_finished(stack, dispute_id)["status"] == "SUCCEEDED"
    assert sms_about(stack, dispute_id)[-1] == \
        f"【一证通查】京东已处理您的核查申请（编号{dispute_id}）：已解除1个账号与您手机号的绑定。"


def test_partner_down_parks_the_dispute_and_the_retry_queue_brings_it_back(stack: LocalStack, api: Client) -> None:
    replied_query(api, stack)
    from_now_on(stack, "jd", "down")
    dispute_id = accepted(dispute(api, stack, "jd"))
    wait_for(lambda: len(stack.partners["jd"].disputes) >= 2, 15, "a retry from the queue")
    assert status(api, dispute_id)["status"] == "submitted"
    from_now_on(stack, "jd", "immediate")
    assert wait_dispute_finished(stack, dispute_id)["status"] == "SUCCEEDED"
    assert "已解除1个账号" in sms_about(stack, dispute_id)[-1]
    assert not stack.app_module.lookups().circuits.states(["jd"])["jd"].is_open


# -- the H5 page: 不是我注册的？申请核查 ------------------------------------------------------------
from tests import test_page  # noqa: E402

ARTIFACTS = test_page.ARTIFACTS
if hasattr(test_page, "browser"):  # the query page tests' headless Chromium (or tests/conftest.py's, if there)
    browser = test_page.browser


def _open_dispute_form(page: Page, company_name: str) -> Locator:
    entry = page.locator(".company", has_text=company_name)
    entry.get_by_role("button", name="不是我注册的？申请核查").click()
    panel = entry.locator(".dispute")
    panel.wait_for(state="visible")
    return panel


def _code_sms(stack: LocalStack, phone: str, count: int) -> str | None:
    codes = [m["message"] for m in stack.read_outbox() if m["phone"] == phone and "验证码" in m["message"]]
    return re.search(r"验证码为(\d{6})", codes[-1]).group(1) if len(codes) >= count else None  # type: ignore[union-attr]


def _fill_and_submit(stack: LocalStack, page: Page, panel: Locator, phone: str = PHONE) -> None:
    before = len([m for m in stack.read_outbox() if m["phone"] == phone and "验证码" in m["message"]])
    panel.get_by_label("手机号码").fill(phone)
    panel.get_by_role("button", name="获取验证码").click()
    code = wait_for(lambda: _code_sms(stack, phone, before + 1), 10, "the code SMS")
    page.wait_for_function("document.querySelector('.dispute .get-code').textContent.includes('秒后重新获取')")
    panel.get_by_label("验证码").fill(code)
    panel.get_by_role("button", name="提交核查申请").click()


def test_page_dispute_form_shows_the_id_and_where_the_answer_arrives(stack: LocalStack, api: Client,
                                                                     page: Page) -> None:
    import os

    replied_query(api, stack)
    panel = _open_dispute_form(page, "腾讯")
    assert "向腾讯申请核查" in panel.inner_text()
    _fill_and_submit(stack, page, panel)
    done = panel.locator(".dispute-done")
    done.wait_for(state="visible")
    dispute_id = panel.locator(".dispute-id").inner_text()
    assert re.fullmatch(r"[A-Z2-7]{16}", dispute_id)
    assert "10699000" in done.inner_text() and "15天内" in done.inner_text()
    wait_dispute_finished(stack, dispute_id)
    panel.get_by_role("link", name="查看申请进度").click()
    page.wait_for_function("document.querySelector('.dispute-status-text').textContent.startsWith('当前状态：')")
    assert "企业已处理" in panel.locator(".dispute-status-text").inner_text()
    assert not re.search(r"\d+个|已解除", panel.inner_text())  # the outcome goes only by SMS
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, "dispute-form-360.png")
    page.screenshot(path=path, full_page=True)
    assert os.path.getsize(path) > 10_000
    assert page.evaluate("document.documentElement.scrollWidth") <= 360


def test_page_dispute_form_at_360px_before_submitting(stack: LocalStack, page: Page) -> None:
    import os

    panel = _open_dispute_form(page, "京东")
    panel.get_by_label("手机号码").fill(PHONE)
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, "dispute-form-open-360.png")
    page.screenshot(path=path, full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    assert panel.get_by_role("button", name="获取验证码").bounding_box()["width"] > 0  # type: ignore[index]  # None: hidden


def test_page_nothing_to_dispute_is_explained(stack: LocalStack, api: Client, page: Page) -> None:
    replied_query(api, stack)
    panel = _open_dispute_form(page, "阿里巴巴")
    _fill_and_submit(stack, page, panel)
    page.wait_for_function("document.getElementById('dispute-form-error').textContent.length > 0")
    assert "近7天内该号码的查询结果中，阿里巴巴没有关联账号，无需申请核查" in panel.inner_text()


def test_page_dispute_limit_is_explained(stack: LocalStack, api: Client, page: Page) -> None:
    replied_query(api, stack)
    from_now_on(stack, "tencent", "silent")
    accepted(dispute(api, stack, "tencent"))
    panel = _open_dispute_form(page, "腾讯")
    _fill_and_submit(stack, page, panel)
    page.wait_for_function("document.getElementById('dispute-form-error').textContent.length > 0")
    message = page.locator("#dispute-form-error").inner_text()
    expected = r"您对腾讯已有正在处理的核查申请，或今天已提交3次核查申请，请于\d+小时(\d+分钟)?后再试。"
    assert re.fullmatch(expected, message), message


@pytest.mark.parametrize(("field", "value", "message"), [
    ("手机号码", "1381234567", "请输入正确的11位手机号码"),
    ("验证码", "12345", "请输入6位数字验证码"),
])
def test_page_dispute_field_errors_show_next_to_their_field(stack: LocalStack, page: Page, field: str, value: str,
                                                            message: str) -> None:
    panel = _open_dispute_form(page, "腾讯")
    good = {"手机号码": PHONE, "验证码": "123456"}
    for label, text in {**good, field: value}.items():
        panel.get_by_label(label).fill(text)
    panel.get_by_role("button", name="提交核查申请").click()
    input_id = {"手机号码": "dispute-phone", "验证码": "dispute-code"}[field]
    assert message in page.locator(f"#{input_id}-error").inner_text()
    assert page.locator(f"#{input_id}").get_attribute("aria-invalid") == "true"
    assert stack.read_outbox() == []


def test_page_wrong_code_for_a_dispute_shows_next_to_the_code(stack: LocalStack, api: Client, page: Page) -> None:
    replied_query(api, stack)
    panel = _open_dispute_form(page, "腾讯")
    panel.get_by_label("手机号码").fill(PHONE)
    panel.get_by_label("验证码").fill("000000")
    panel.get_by_role("button", name="提交核查申请").click()
    page.wait_for_function("document.getElementById('dispute-code-error').textContent.length > 0")
    assert "验证码错误或已失效" in page.locator("#dispute-code-error").inner_text()


# -- `make run`: the whole loop over HTTP, visible in the outbox and the local SMS page ---------------
@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with make_run(tmp_path_factory.mktemp("local-disputes"), QUERY_DEADLINE_SECONDS="8", CODE_RESEND_SECONDS="0",
                  PARTNER_MODES=",".join(f"{c}=immediate" for c in COMPANIES if c != "tencent")
                  + ",tencent=callback") as running:
        yield running


def test_make_run_shows_query_reply_dispute_submitted_and_outcome_sms(local_run: dict[str, Any]) -> None:
    import requests

    base, workdir = local_run["base"], local_run["workdir"]

    def outbox() -> list[dict[str, Any]]:
        path = workdir / "sms-outbox.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def code() -> str:
        assert requests.post(f"{base}/v1/verification-codes", json={"phone": PHONE}, timeout=10).status_code == 202
        return outbox()[-1]["message"].split("验证码为")[1][:6]

    response = requests.post(f"{base}/v1/queries", json={"phone": PHONE, "id_last6": ID6, "code": code()}, timeout=10)
    query_id = response.json()["query_id"]
    wait_for(lambda: requests.get(f"{base}/v1/queries/{query_id}", timeout=5).json()["status"] == "replied", 60,
             "the reply")
    response = requests.post(f"{base}/v1/disputes", json={"phone": PHONE, "code": code(), "company": "tencent"},
                             timeout=10)
    assert response.status_code == 202, response.text
    dispute_id = response.json()["dispute_id"]
    wait_for(lambda: requests.get(f"{base}/v1/disputes/{dispute_id}", timeout=5).json()["status"] == "resolved",
             60, "the outcome")
    messages = [m["message"] for m in outbox() if m["phone"] == PHONE and "验证码" not in m["message"]]
    assert messages[0].startswith("【一证通查】您的手机号138****5678关联的互联网账号：腾讯2个")
    assert messages[1:] == [submitted_text("tencent", dispute_id),
                            f"【一证通查】腾讯已处理您的核查申请（编号{dispute_id}）：已解除2个账号与您手机号的绑定。"]
    page = requests.get(f"{base}/local/sms", timeout=5).text
    assert "已解除2个账号" in page and dispute_id in page
    # An operator finds the dispute's execution by its id, as in the console.
    sfn = boto3.client("stepfunctions", endpoint_url=local_run["moto"], region_name="us-east-1",
                       aws_access_key_id="x", aws_secret_access_key="x")
    machine = next(m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]
                   if m["name"] == "yztc-dispute")
    assert dispute_id in [e["name"] for e in sfn.list_executions(stateMachineArn=machine)["executions"]]


# -- infra/disputes.py: the second state machine, its tables, roles, dashboard row and alarms ------------
def _stub_of_what_generate_provides(companies: list[str]) -> dict:
    """The resources infra/disputes.py refers to and infra/generate.py owns, as small as cfn-lint accepts."""
    def table(name: str) -> dict[str, Any]:
        return {"Type": "AWS::DynamoDB::Table", "Properties": {
            "BillingMode": "PAY_PER_REQUEST", "KeySchema": [{"AttributeName": "k", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "k", "AttributeType": "S"}], "TableName": name}}

    trust = {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    def role() -> dict[str, Any]:
        return {"Type": "AWS::IAM::Role", "Properties": {
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [trust]}, "Policies": []}}

    root = {"AWS": {"Fn::Sub": "arn:aws:iam::${AWS::AccountId}:root"}}
    resources = {
        "DataKey": {"Type": "AWS::KMS::Key", "Properties": {"EnableKeyRotation": True, "KeyPolicy": {
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*",
                                                    "Principal": root}]}}},
        "OperatorTopic": {"Type": "AWS::SNS::Topic", "Properties": {}},
        "RetryQueue": {"Type": "AWS::SQS::Queue", "Properties": {}},
        "ReplyQueue": {"Type": "AWS::SQS::Queue", "Properties": {}},
        "PepperSecret": {"Type": "AWS::SecretsManager::Secret", "Properties": {}},
        "CircuitsTable": table("c"), "IdempotencyTable": table("i"), "ThrottleTable": table("t"),
        "Dashboard": {"Type": "AWS::CloudWatch::Dashboard", "Properties": {
            "DashboardBody": {"Fn::Sub": ['{"widgets": []}', {}]}}},
        **{f"YztcPartners{c.capitalize()}Secret": {"Type": "AWS::SecretsManager::Secret", "Properties": {}}
           for c in companies},
    }
    for function in ("APIHandler", "SendReplies", "RetryLookups", "DeliverBacklog"):
        resources[f"{function}Role"] = role()
        resources[function] = {"Properties": {"Role": {"Fn::GetAtt": [f"{function}Role", "Arn"]}}}
    return {"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources}


def test_infra_adds_the_dispute_workflow_tables_roles_dashboard_row_and_alarms_and_lints_clean(tmp_path: Path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from infra import disputes, generate

    env = generate.stage_env("prod")
    # Once generate.py lists the dispute functions in its FUNCTION_ACCESS it builds their roles and every
    # model's table itself, and `make package` (tests/test_infra.py) lints the whole: check its template.
    integrated = all(fn in generate.FUNCTION_ACCESS for fn in disputes.NEW_FUNCTIONS)
    template = (generate.template("prod") if integrated
                else disputes.extend(_stub_of_what_generate_provides(COMPANIES), env, "prod", generate.FUNCTION_ACCESS))
    resources = template["Resources"]
    for name in ("DisputesTable", "ReportedTable"):
        table = resources[name]["Properties"]
        assert table["BillingMode"] == "PAY_PER_REQUEST" and table["TimeToLiveSpecification"]["Enabled"]
        assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"]
        assert table["SSESpecification"]["SSEType"] == "KMS"
    assert resources["DisputesTable"]["Properties"]["GlobalSecondaryIndexes"][0]["IndexName"] == "backlog"
    machine = resources["DisputeStateMachine"]["Properties"]
    placeholders = set(re.findall(r"\$\{(\w+)\}", machine["DefinitionString"]))
    assert placeholders == set(machine["DefinitionSubstitutions"]) == {"ForwardDisputeArn"}  # one state
    assert list(json.loads(machine["DefinitionString"])["States"]) == ["Forward", "ForwardFailed"]
    with open(disputes.ASL_FILE, encoding="utf-8") as fh:
        assert json.loads(machine["DefinitionString"]) == json.load(fh)  # the tested ASL is the deployed one
    assert machine["LoggingConfiguration"]["IncludeExecutionData"] is False
    assert resources["APIHandler"]["Properties"]["Environment"]["Variables"]["DISPUTE_STATE_MACHINE_ARN"] == \
        {"Ref": "DisputeStateMachine"}
    # Integrated: generate.py's FUNCTION_ACCESS grants the dispute code (the SMS from SendReplies, Forward's
    # delivery); infra/disputes.py adds only what it cannot say: the API starting the dispute workflow.
    policies = {role: [p["PolicyName"] for p in resources[role]["Properties"]["Policies"]]
                for role in ("APIHandlerRole", "SendRepliesRole", "ForwardDisputeRole")}
    assert policies == ({"APIHandlerRole": ["least-privilege", "disputes"], "SendRepliesRole": ["least-privilege"],
                         "ForwardDisputeRole": ["least-privilege"]} if integrated else
                        {"APIHandlerRole": ["disputes"], "SendRepliesRole": ["disputes"],
                         "ForwardDisputeRole": ["least-privilege"]})
    assert not [s for p in resources["ForwardDisputeRole"]["Properties"]["Policies"]
                for s in p["PolicyDocument"]["Statement"] if any(a.startswith("states:") for a in s["Action"])]
    for statement in (s for r in resources.values() if r.get("Type") in ("AWS::IAM::Role", "AWS::IAM::Policy")
                      for p in r["Properties"].get("Policies", [r["Properties"]]) if "PolicyDocument" in p
                      for s in p["PolicyDocument"]["Statement"]):
        assert not [a for a in statement["Action"] if a == "*" or a.endswith(":*")], statement
    body = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]
    for name in ("DisputeSubmitted", "DisputeResolved", "DisputeExpired"):
        assert name in body
    for company in COMPANIES:
        assert f'"{company}"' in body
        assert any(company in json.dumps(a) and "DisputeExpired" in json.dumps(a)
                   for a in resources.values() if a.get("Type") == "AWS::CloudWatch::Alarm")
    # SPEC §10.1: card disputes per operator group, the groups and their operators from the operator registry.
    from infra.cfn import registry

    groups: dict[str, list[str]] = {}
    for entry in registry("operators"):
        groups.setdefault(entry["group"], []).append(entry["id"])
    assert len(groups) >= 2 and all(groups.values())
    widgets = {w["properties"]["title"]: w["properties"]["metrics"] for w in json.loads(body)["widgets"]}
    row = {name: next(lines for title, lines in widgets.items() if title.startswith(f"Card disputes {word}"))
           for word, name in (("submitted", "DisputeSubmitted"), ("resolved", "DisputeResolved"),
                              ("expired", "DisputeExpired"))}
    for name, lines in row.items():
        sums = {line[0]["label"]: line[0] for line in lines if isinstance(line[0], dict)}
        assert set(sums) == set(groups), name  # one line per group, and nothing else shown
        hidden = {line[-1]["id"]: line for line in lines if isinstance(line[0], str)}
        for group, ids in groups.items():  # each group's line sums exactly its operators' counts
            summed = re.fullmatch(r"SUM\(\[(.*)\]\)", sums[group]["expression"])
            assert summed, sums[group]
            terms = summed.group(1).split(", ")
            assert sorted(hidden[t][5] for t in terms) == sorted(ids), (name, group)
            assert all(hidden[t][1] == name and hidden[t][4] == "company" and hidden[t][-1]["stat"] == "Sum"
                       and hidden[t][-1]["visible"] is False for t in terms)
    card_alarms = [a["Properties"] for a in resources.values() if a.get("Type") == "AWS::CloudWatch::Alarm"
                   and a["Properties"].get("MetricName") == "CardDisputeExpired"]
    # Alarmed on the per-group count the dispute code emits with the group's ASCII id (CloudWatch dimension
    # values must be ASCII): one per group.
    group_ids = {entry["group_id"] for entry in registry("operators")}
    assert len(group_ids) == len(groups) and all(g.isascii() for g in group_ids)
    assert sorted(d["Value"] for a in card_alarms for d in a["Dimensions"] if d["Name"] == "group") == sorted(
        group_ids)
    for group_alarm in card_alarms:
        assert group_alarm["Threshold"] == {"Ref": "CardDisputesExpiredAlarmThreshold"}
        assert group_alarm["Period"] == 86400 and group_alarm["Statistic"] == "Sum"
        assert group_alarm["AlarmActions"] == [{"Ref": "OperatorTopic"}]
        assert {"Name": "service", "Value": "yizhengtongcha"} in group_alarm["Dimensions"]
    assert template["Parameters"]["CardDisputesExpiredAlarmThreshold"]["Type"] == "Number"
    if integrated:
        return
    for function in ("APIHandler", "SendReplies", "RetryLookups", "DeliverBacklog", "ForwardDispute"):
        resources[function].update(Type="AWS::Lambda::Function")
        resources[function]["Properties"].update(Runtime="python3.11", Handler="app.handler",
                                                 Code={"ZipFile": "def handler(e, c): pass"})
    path = Path(tmp_path) / "disputes.json"
    path.write_text(json.dumps(template), encoding="utf-8")
    lint = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(path)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_the_api_description_covers_every_dispute_route_and_error() -> None:
    """The one OpenAPI description (chalicelib/api/openapi.json) describes the dispute routes as served."""
    import os

    import app as app_module

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chalicelib", "api",
                        "openapi.json")
    with open(path, encoding="utf-8") as fh:
        description = json.load(fh)
    fragment = {"paths": {p: item for p, item in description["paths"].items() if "disputes" in p}}
    # Routes registered only to answer 405 (refuse_other_methods, chalicelib/api/middleware.py) are not operations.
    served = {(p, m) for p, methods in app_module.app.routes.items() for m, entry in methods.items()
              if "disputes" in p and not entry.view_name.startswith("refuse")}
    described = {(p, m.upper()) for p, item in fragment["paths"].items() for m in item}
    assert described == served
    submit_responses = fragment["paths"]["/v1/disputes"]["post"]["responses"]
    text = json.dumps(submit_responses)
    for status, code in (("400", "invalid_company"), ("403", "wrong_code"), ("409", "nothing_to_dispute"),
                         ("429", "dispute_limit")):
        assert code in json.dumps(submit_responses[status]), (status, code)
    assert "Retry-After" in text
    callback = fragment["paths"]["/v1/partners/{company}/disputes"]["post"]["responses"]
    assert {"200", "400", "401", "404", "409"} <= set(callback)


def drive_every_dispute_path(stack: LocalStack, api: Client, queries: bool = True) -> None:
    """Every dispute path once, each request labelled with the function that makes it (tests/test_infra.py
    records the AWS calls): answers in the 200 and by callback, a refused start (undone), SNS failing once
    for each SMS, a transient failure and the retry queue, an open circuit and the minute job's probe (the
    parked dispute), the outcome SMS from the reply queue, statuses. Works whatever the code
    resend gap: it lets the 60 s pass (deletes the gap) before each fresh code, as time would.
    `queries=False`: the caller already had 13812345678 and 15012345678 replied (tencent, jd, douyin, alipay)."""
    from botocore.exceptions import ClientError

    from chalicelib import clients
    from chalicelib.storage.models import Dispute, Throttle
    from local.lambdas import CURRENT, acting_as

    def submit_dispute(company: str, phone: str = PHONE) -> HTTPResponse:
        Throttle(f"code-gap#{stack.app_module.hasher().digest('phone', phone)}").delete()
        with acting_as("APIHandler"):
            return dispute(api, stack, company, phone=phone)

    if queries:
        with acting_as("APIHandler"):
            replied_query(api, stack)
            replied_query(api, stack, "15012345678", "281234")  # another citizen (three disputes a day each)
    for company in ("tencent", "jd", "douyin", "alipay"):
        from_now_on(stack, company, "immediate")
    sfn = clients.client("stepfunctions")
    refusals = {"left": 1}

    def refuse_once(**_: Any) -> None:  # the API's start only (the deadline starter's thread shares the client)
        if refusals["left"] and getattr(CURRENT, "function", None) == "APIHandler":
            refusals["left"] -= 1
            raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "injected"}}, "StartExecution")

    sfn.meta.events.register("before-call.sfn.StartExecution", refuse_once)
    try:
        refused = submit_dispute("tencent")  # StartExecution refused: undone, the citizen may try again
    finally:
        sfn.meta.events.unregister("before-call.sfn.StartExecution", refuse_once)
    assert refused.status_code == 503, refused.body
    # SNS fails once for each SMS of a dispute: the idempotency record is given back and the step (Forward)
    # or the reply message (SendReplies, back after its visibility timeout) retried.
    sns = clients.client("sns")
    sns_failures: dict[str | None, int] = {"ForwardDispute": 1, "SendReplies": 1}

    def refuse_sms_once(**_: Any) -> None:
        function = getattr(CURRENT, "function", None)
        if sns_failures.get(function):
            sns_failures[function] -= 1
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "Publish")

    sns.meta.events.register("before-call.sns.Publish", refuse_sms_once)
    try:
        tencent = accepted(submit_dispute("tencent"))  # answered in the 200: ForwardDispute claims the outcome
        assert wait_dispute_finished(stack, tencent)["status"] == "SUCCEEDED"
    finally:
        sns.meta.events.unregister("before-call.sns.Publish", refuse_sms_once)
    assert sns_failures == {"ForwardDispute": 0, "SendReplies": 0}
    from_now_on(stack, "jd", "callback")
    jd = accepted(submit_dispute("jd"))  # answered by a signed callback over HTTP: the API claims the outcome
    from_now_on(stack, "douyin", "down")
    douyin = accepted(submit_dispute("douyin"))
    wait_for(lambda: Dispute.get(douyin).state == "unsent", 10, "douyin's dispute parked")
    from_now_on(stack, "douyin", "immediate")  # the retry queue's nudge finds it up: RetryLookups claims it
    wait_for(lambda: Dispute.get(douyin).state == "settled", 20, "douyin's dispute sent from the retry queue")
    open_circuit(stack, "alipay")  # SPEC §4: 5 failures while alipay answered nothing for 30 s
    alipay = accepted(submit_dispute("alipay", phone="15012345678"))  # parked behind the open circuit
    wait_for(lambda: Dispute.get(alipay).state == "unsent", 10, "alipay's dispute parked")
    # A minute later the minute job probes alipay: with no lookup waiting, the parked dispute is the probe.
    assert stack.deliver_once(now=time.time() + 61)["alipay"] >= 1
    for dispute_id in (tencent, jd, douyin, alipay):
        assert wait_dispute_finished(stack, dispute_id)["status"] == "SUCCEEDED"
        with acting_as("APIHandler"):
            assert status(api, dispute_id)["status"] == "resolved"


def _drive_card_disputes(stack: LocalStack, api: Client) -> dict[str, str]:
    """SPEC §10.1 on the same paths: a card query replied to 张's phone (2 cards at cmcc-gd, 1 at cucc-bj), then a
    card dispute answered in cmcc-gd's 200 (ForwardDispute claims the outcome) and one answered by cucc-bj's
    signed callback over HTTP (the API claims it); outcome SMS from the reply queue, statuses.
    Operator -> dispute id."""
    from chalicelib.storage.models import Dispute
    from local.lambdas import acting_as
    from tests.test_cards import ZHANG, card_body, run_card_query

    with acting_as("APIHandler"):
        run_card_query(api, stack, card_body(ZHANG))
    modes = {"cmcc-gd": "immediate", "cucc-bj": "callback"}
    for operator, mode in modes.items():
        stack.operators.set_mode(operator, mode, delay_seconds=0)
    answered_before = len(stack.operators.callbacks.get("cucc-bj", []))
    ids = {}
    for operator in modes:
        with acting_as("APIHandler"):
            assert request_code(api, ZHANG["phone"]).status_code == 202
            response = post_json(api, "/v1/card-disputes", {**card_body(ZHANG), "operator": operator,
                                                             "code": latest_code(stack, ZHANG["phone"])})
        ids[operator] = accepted(response)
        assert response.json_body["operator"] == operator
    for operator, dispute_id in ids.items():
        assert wait_dispute_finished(stack, dispute_id)["status"] == "SUCCEEDED"
        closed = Dispute.get(dispute_id, consistent_read=True)
        assert closed.kind == "cards" and closed.outcome == "suspended"
        assert closed.name_sealed is None and closed.id_sealed is None and closed.phone_sealed is None
        with acting_as("APIHandler"):
            assert status(api, dispute_id) | {"created_at": ""} == {
                "dispute_id": dispute_id, "operator": operator, "status": "resolved", "created_at": ""}
        assert len(sms_about(stack, dispute_id, ZHANG["phone"])) == 2  # submitted, then the outcome
    assert {d["dispute_id"] for d in stack.operators.disputes} >= set(ids.values())
    assert 200 in stack.operators.callbacks.get("cucc-bj", [])[answered_before:]  # the callback was recorded
    return ids


@pytest.mark.parametrize("stack_options", [options(operators=FIXTURE_OPERATORS)])
def test_every_aws_action_the_dispute_code_calls_is_granted_by_infra(stack: LocalStack, api: Client) -> None:
    """Drive every dispute path once (immediate, callback, SNS failures, transient failure and retry queue, open
    circuit and the minute job's probe, outcome SMS from the reply queue, status), and a card dispute (SPEC §10.1)
    answered each way, recording each AWS call by function: everything each function calls must be granted by
    its role in the deployed template (infra/generate.py FUNCTION_ACCESS, plus infra/disputes.py's policies)."""
    from chalicelib.storage.models import TABLE_VARS
    from infra import disputes, generate
    from local.recording import recording

    env = stack.env
    local_table = {disputes.table_logical(var): env[var] for var in TABLE_VARS.values()}
    with recording() as recorder:
        drive_every_dispute_path(stack, api)
        card_disputes = _drive_card_disputes(stack, api)
    assert [d for d in stack.partners["douyin"].disputes]  # it was down, then answered
    resources = generate.template("prod")["Resources"]

    def table_of(target: Any) -> str:
        if isinstance(target, dict) and "Fn::GetAtt" in target:
            return local_table.get(target["Fn::GetAtt"][0], "")
        if isinstance(target, dict) and "Fn::Sub" in target and isinstance(target["Fn::Sub"], str):
            index = re.fullmatch(r"\$\{(\w+)\.Arn\}/index/\w+", target["Fn::Sub"])
            return local_table.get(index.group(1), "") if index else ""
        return ""

    def granted(role: str) -> set[tuple[str, str]]:
        statements = [s for p in resources[role]["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]
        statements += [s for r in resources.values() if r.get("Type") == "AWS::IAM::Policy"
                       and {"Ref": role} in r["Properties"]["Roles"]
                       for s in r["Properties"]["PolicyDocument"]["Statement"]]
        out = set()
        for statement in statements:
            if "kms:ViaService" in json.dumps(statement.get("Condition", {})):
                continue  # Secrets Manager and SQS use the key on the caller's behalf
            targets = statement.get("Resource", statement.get("NotResource"))
            for action in statement["Action"]:
                for target in (targets if isinstance(targets, list) else [targets]):
                    out.add((action, table_of(target)))
        return out

    tables = set(local_table.values())
    dispute_tables = {env["DISPUTES_TABLE"], env["REPORTED_TABLE"]}
    functions = {f for f, _, _ in recorder.calls}
    assert {"APIHandler", "ForwardDispute", "SendReplies", "RetryLookups", "DeliverBacklog"} <= functions
    for function in functions:
        allowed = granted(f"{function}Role")
        # Tables (and indexes) are checked by name; other resources (queues, secrets) by action only.
        called = {("sqs:" + action[4:].removesuffix("Batch") if action.startswith("sqs:") else action,
                   target.split("/index/")[0] if target.split("/index/")[0] in tables else "")
                  for f, action, target in recorder.calls if f == function
                  and not action.startswith(("logs:", "xray:")) and action != "dynamodb:DescribeTable"}
        if function not in ("ForwardDispute", "SendReplies"):  # the rest is tests/test_infra.py's (and the
            called = {(a, t) for a, t in called if t in dispute_tables}  # test's own calls run as APIHandler)
        # A batch request may also be recorded without a table: its per-table entries decide.
        missing = {(a, t) for a, t in called if (a, t) not in allowed
                   and not (t == "" and a in ("dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"))}
        assert not missing, f"{function} calls what its role does not grant: {missing}"
    calls = set(recorder.calls)
    assert ("SendReplies", "dynamodb:BatchWriteItem", env["REPORTED_TABLE"]) in calls
    assert ("SendReplies", "dynamodb:UpdateItem", env["DISPUTES_TABLE"]) in calls  # an outcome SMS committed
    assert ("SendReplies", "dynamodb:DeleteItem", env["THROTTLE_TABLE"]) in calls  # its open-dispute lock
    assert ("RetryLookups", "dynamodb:BatchGetItem", env["DISPUTES_TABLE"]) in calls
    assert any(f == "DeliverBacklog" and a == "dynamodb:Query" and t.startswith(env["DISPUTES_TABLE"])
               for f, a, t in calls)  # the backlog index (recorded as table/index/backlog or as the table)
    forward = {a for f, a, _ in calls if f == "ForwardDispute"}
    assert {"sns:Publish", "kms:Decrypt"} <= forward
    assert forward & {"sqs:SendMessage", "sqs:SendMessageBatch"}  # its answer in the 200 enqueued the outcome
    assert not {a for a in forward if a.startswith("states:")}  # no task token: nothing waits on the partner
    assert {a for f, a, _ in calls if f == "SendReplies"} >= {"sns:Publish", "kms:Decrypt"}
    # SPEC §10.1: the card disputes' intake (the (ID number, phone) fact), forwarding and outcomes ran the same way.
    assert ("APIHandler", "dynamodb:GetItem", env["REPORTED_TABLE"]) in calls
    assert ("SendReplies", "dynamodb:BatchWriteItem", env["REPORTED_TABLE"]) in calls
    assert len(card_disputes) == 2
    # Secrets by name (the powertools cache may spare a read, so only what was read): each one a function read
    # (an operator's, to sign a card dispute or check its callback) is among its role's secret resources.
    for function, action, name in calls:
        if action != "secretsmanager:GetSecretValue":
            continue
        role = f"{function}Role"
        arns = [r for p in resources[role]["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]
                if "secretsmanager:GetSecretValue" in s["Action"]
                for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]
        local_names = {"PepperSecret": env["PEPPER_SECRET_NAME"], "AltchaSecret": env["ALTCHA_SECRET_NAME"]}
        names = {local_names.get(a["Ref"], resources[a["Ref"]]["Properties"]["Name"]) for a in arns if "Ref" in a}
        prefixes = {a["Fn::Sub"].split(":secret:", 1)[1].removesuffix("*") for a in arns if "Fn::Sub" in a}
        assert name in names or any(name.startswith(p) for p in prefixes), f"{function} reads secret {name}"


def test_concurrent_identical_callbacks_record_once_and_send_one_outcome_sms(stack: LocalStack, api: Client,
                                                                             waiting: str) -> None:
    """Partners retry: the same signed answer arriving eight times at once settles and releases once."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from tests.test_page import BASE

    dispute_id = waiting
    raw = json.dumps({"dispute_id": dispute_id, "outcome": "unbound", "accounts": 2}).encode()
    headers = signing.signed_headers(stack.secrets["yztc/partners/tencent"], raw)

    def post(_: int) -> int:
        return requests.post(f"{BASE}/v1/partners/tencent/disputes", data=raw, headers=headers, timeout=20).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(post, range(8))) == [200] * 8
    assert wait_dispute_finished(stack, dispute_id)["status"] == "SUCCEEDED"
    assert sms_about(stack, dispute_id) == [
        submitted_text("tencent", dispute_id),
        f"【一证通查】腾讯已处理您的核查申请（编号{dispute_id}）：已解除2个账号与您手机号的绑定。"]


def test_concurrent_submissions_with_one_code_accept_one_dispute(stack: LocalStack, api: Client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from tests.test_page import BASE

    replied_query(api, stack)
    assert request_code(api, PHONE).status_code == 202
    code = latest_code(stack, PHONE)

    def post(company: str) -> int:
        response = requests.post(f"{BASE}/v1/disputes", json={"phone": PHONE, "code": code, "company": company},
                                 timeout=20)
        return response.status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(post, ["tencent", "tencent", "jd", "alipay"]))
    assert statuses.count(202) == 1 and set(statuses) <= {202, 403, 429}, statuses

"""Partner callbacks (SPEC §4): authenticated, replay-protected, idempotent."""
from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib import signing
from local.stack import LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS, routes_only, wait_for
from tests.helpers import COMPANIES, aws, error_code, replies_to, submit, wait_finished
from tests.privacy import assert_clean

if TYPE_CHECKING:
    from chalice.test import Client, HTTPResponse

ALL_SILENT = dataclasses.replace(BASE_OPTIONS, partner_modes=",".join(f"{c}=silent" for c in COMPANIES))
PHONE, ID6 = "13812345678", "12345X"


@pytest.fixture
def stack_options() -> StackOptions:
    """Every partner waits for its callback, and the callbacks meet the API and the workflow's fan-out alone (no
    pollers, no deadline timer: tests/conftest.py, routes_only), but in the one test that needs its reply sent."""
    return routes_only(ALL_SILENT)


@pytest.fixture
def waiting(stack: LocalStack, api: Client) -> tuple[str, dict[str, str]]:
    """A query whose eight lookups all wait for a callback; returns (query_id, lookup ids)."""
    query_id = submit(api, stack, PHONE, ID6).json_body["query_id"]
    stack.pump_once()
    wait_for(lambda: all(p.requests for p in stack.partners.values()), 30, "every partner asked")
    return query_id, {c: p.requests[0]["lookup_id"] for c, p in stack.partners.items()}


def secret(stack: LocalStack, company: str) -> str:
    return stack.secrets[f"yztc/partners/{company}"]


def call_back(api: Client, stack: LocalStack, company: str, body: Any, *, key: str | None = None,
              timestamp: float | None = None, headers: dict[str, str] | None = None) -> HTTPResponse:
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    signed = signing.signed_headers(key or secret(stack, company), raw, timestamp)
    return api.http.post(f"/v1/partners/{company}/results", headers={**signed, **(headers or {})}, body=raw)


def test_valid_callback_is_recorded(stack: LocalStack, api: Client, waiting: tuple[str, dict[str, str]]) -> None:
    _, lookups = waiting
    response = call_back(api, stack, "tencent", {"lookup_id": lookups["tencent"], "account_count": 2})
    assert response.status_code == 200
    assert response.json_body == {"status": "recorded"}


def test_lookup_id_is_opaque_and_partner_sees_only_the_phone(stack: LocalStack, api: Client,
                                                             waiting: tuple[str, dict[str, str]]) -> None:
    query_id, lookups = waiting
    assert len(set(lookups.values())) == len(COMPANIES)
    for lookup_id in lookups.values():
        assert query_id.replace("-", "") not in lookup_id and query_id not in lookup_id


@pytest.mark.parametrize("tamper", ["wrong_key", "missing", "stale", "future", "garbled"])
def test_unauthenticated_callback_is_401(stack: LocalStack, api: Client, waiting: tuple[str, dict[str, str]],
                                         tamper: str) -> None:
    _, lookups = waiting
    body = {"lookup_id": lookups["jd"], "account_count": 1}
    if tamper == "wrong_key":
        response = call_back(api, stack, "jd", body, key=secret(stack, "meituan"))
    elif tamper == "missing":
        response = api.http.post("/v1/partners/jd/results", headers={"Content-Type": "application/json"},
                                 body=json.dumps(body))
    elif tamper == "stale":
        response = call_back(api, stack, "jd", body, timestamp=time.time() - 301)
    elif tamper == "future":
        # Well past the 300 s window: a loaded machine may take a second or more to check it.
        response = call_back(api, stack, "jd", body, timestamp=time.time() + 360)
    else:
        response = call_back(api, stack, "jd", body, headers={"X-Signature": "00" * 32})
    assert response.status_code == 401
    assert error_code(response) == "bad_signature"
    # nothing recorded: a correct answer is still taken afterwards
    assert call_back(api, stack, "jd", body).status_code == 200


def test_signature_covers_the_exact_body(stack: LocalStack, api: Client, waiting: tuple[str, dict[str, str]]) -> None:
    _, lookups = waiting
    raw = json.dumps({"lookup_id": lookups["jd"], "account_count": 1}).encode()
    headers = signing.signed_headers(secret(stack, "jd"), raw)
    forged = raw.replace(b"1}", b"9}")
    response = api.http.post("/v1/partners/jd/results", headers=headers, body=forged)
    assert response.status_code == 401


def test_unknown_company_is_404(stack: LocalStack, api: Client, waiting: tuple[str, dict[str, str]]) -> None:
    response = call_back(api, stack, "tencent", {"lookup_id": "x", "account_count": 1})
    assert response.status_code == 404
    response = api.http.post("/v1/partners/pinduoduo/results", headers={"X-Timestamp": "1"}, body=b"{}")
    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_unknown_lookup_is_404(stack: LocalStack, api: Client, waiting: tuple[str, dict[str, str]]) -> None:
    response = call_back(api, stack, "tencent", {"lookup_id": "0" * 32, "account_count": 1})
    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_another_companys_lookup_is_404(stack: LocalStack, api: Client, waiting: tuple[str, dict[str, str]]) -> None:
    _, lookups = waiting
    response = call_back(api, stack, "tencent", {"lookup_id": lookups["jd"], "account_count": 1})
    assert response.status_code == 404


@pytest.mark.parametrize("body", [
    {"account_count": 1},
    {"lookup_id": "L", "account_count": -1},
    {"lookup_id": "L", "account_count": 1.5},
    {"lookup_id": "L", "account_count": "1"},
    {"lookup_id": "L", "account_count": True},
    {"lookup_id": "L"},
    {"lookup_id": "L", "account_count": 3, "apps": {"微信": 1, "QQ": 1}},
    {"lookup_id": "L", "account_count": 1, "apps": {"微信": -1, "QQ": 2}},
    {"lookup_id": "L", "error": 5},
    {"lookup_id": "", "account_count": 1},
    {"lookup_id": "L", "account_count": 100_001},
    {"lookup_id": "L", "account_count": 2**63},
    {"lookup_id": "L", "account_count": 1, "apps": {"微信": 1.0}},
    {"lookup_id": "L", "account_count": 1, "apps": {"美团": 1}},  # another company's app
    {"lookup_id": "L", "account_count": 1, "apps": {"微" * 3000: 1}},
    {"lookup_id": "L", "account_count": 1,
     "apps": {"美团。【一证通查】您的账户存在风险，请登录 http://evil.example 核验。": 1}},
    {"lookup_id": "L", "account_count": 1, "apps": {"\ud800": 1}},
], ids=lambda body: json.dumps(body)[:40])
def test_malformed_or_unbounded_answer_is_400(stack: LocalStack, api: Client, waiting: tuple[str, dict[str, str]],
                                              body: dict[str, Any]) -> None:
    _, lookups = waiting
    if body.get("lookup_id") == "L":
        body = {**body, "lookup_id": lookups["tencent"]}
    response = call_back(api, stack, "tencent", body)
    assert response.status_code == 400
    assert error_code(response) == "invalid_request"
    # nothing was recorded: the lookup still takes a valid answer
    assert call_back(api, stack, "tencent", {"lookup_id": lookups["tencent"], "account_count": 1}).status_code == 200


def test_not_json_callback_is_400(stack: LocalStack, api: Client, waiting: tuple[str, dict[str, str]]) -> None:
    response = call_back(api, stack, "tencent", b"{not json")
    assert response.status_code == 400
    assert error_code(response) == "invalid_request"


def test_duplicate_callback_is_200_and_changes_nothing_conflicting_one_is_409(
        stack: LocalStack, api: Client, waiting: tuple[str, dict[str, str]]) -> None:
    _, lookups = waiting
    body = {"lookup_id": lookups["baidu"], "account_count": 1}
    assert call_back(api, stack, "baidu", body).status_code == 200
    assert call_back(api, stack, "baidu", body).status_code == 200
    conflicting = call_back(api, stack, "baidu", {**body, "account_count": 2})
    assert conflicting.status_code == 409
    assert error_code(conflicting) == "conflict"


@pytest.mark.parametrize("stack_options", [ALL_SILENT])
def test_every_company_answering_ends_the_execution_at_once_with_breakdowns(
        stack: LocalStack, api: Client, waiting: tuple[str, dict[str, str]]) -> None:
    """GIVEN all lookups wait, WHEN every partner calls back, THEN the reply goes out (no waiting
    for the deadline) with the per-app breakdown, and partner errors count as no answer."""
    query_id, lookups = waiting
    answers: dict[str, dict[str, Any]] = {
        "tencent": {"account_count": 3, "apps": {"微信": 1, "QQ": 2}},
        "alibaba": {"account_count": 0}, "alipay": {"account_count": 1}, "baidu": {"account_count": 0},
        "kuaishou": {"account_count": 0}, "douyin": {"account_count": 1}, "jd": {"account_count": 1},
        "meituan": {"error": "internal lookup failure"},
    }
    for company, answer in answers.items():
        assert call_back(api, stack, company, {"lookup_id": lookups[company], **answer}).status_code == 200
    execution = wait_finished(stack, query_id, timeout=20)
    assert execution["status"] == "SUCCEEDED"
    assert replies_to(stack, PHONE) == [
        "【一证通查】您的手机号138****5678关联的互联网账号：腾讯3个（微信1个，QQ2个），阿里巴巴0个，支付宝1个，百度0个，"
        "快手0个，抖音1个，京东1个，美团暂未返回。已返回企业共6个账号。如有异议，请通过“解绑与明细查询”联系相关企业。"]
    # A late duplicate after the reply changes nothing.
    assert call_back(api, stack, "jd", {"lookup_id": lookups["jd"], "account_count": 1}).status_code == 200
    assert len(replies_to(stack, PHONE)) == 1


def test_callback_responses_carry_no_personal_data(stack: LocalStack, api: Client,
                                                   waiting: tuple[str, dict[str, str]]) -> None:
    _, lookups = waiting
    for response in (
        call_back(api, stack, "tencent", {"lookup_id": lookups["tencent"], "account_count": 1}),
        call_back(api, stack, "tencent", {"lookup_id": lookups["tencent"], "account_count": 4}),
        call_back(api, stack, "tencent", {"lookup_id": "nope", "account_count": 1}),
    ):
        assert_clean(response.body.decode(), "callback response", phone=PHONE, id_last6=ID6, code="000000")
        assert "Traceback" not in response.body.decode()


def test_a_callback_after_the_query_record_expired_is_acknowledged(stack: LocalStack, api: Client,
                                                                   waiting: tuple[str, dict[str, str]]) -> None:
    """GIVEN a query record gone by its TTL while a lookup item lives on, WHEN its partner calls back
    (late, signed, valid), THEN 200 recorded and nothing else (SPEC §4), never a 500."""

    query_id, lookups = waiting
    aws("dynamodb").delete_item(TableName=stack.env["QUERIES_TABLE"], Key={"query_id": {"S": query_id}})
    response = call_back(api, stack, "tencent", {"lookup_id": lookups["tencent"], "account_count": 2})
    assert response.status_code == 200 and response.json_body == {"status": "recorded"}

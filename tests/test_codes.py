"""Verification-code lifecycle (SPEC §3): validity, single use, wrong tries, resend limits."""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pytest
import time_machine

from tests.conftest import post_json
from tests.helpers import aws, error_code, latest_code, request_code

if TYPE_CHECKING:
    from chalice.test import Client, HTTPResponse

    from local.stack import LocalStack

# Codes are sent, checked and spent by the routes: no pollers, no deadline timer (tests/conftest.py, routes_only).
pytestmark = pytest.mark.routes_only

PHONE, ID6 = "13900001111", "010203"
START = dt.datetime(2026, 11, 28, 2, 0, tzinfo=dt.UTC)  # 10:00 in Beijing


def query(api: Client, code: str) -> HTTPResponse:
    return post_json(api, "/v1/queries", {"phone": PHONE, "id_last6": ID6, "code": code})


def other(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_code_sms_has_the_spec_text_from_10699000(stack: LocalStack, api: Client) -> None:
    assert request_code(api, PHONE).status_code == 202
    message = stack.read_outbox()[-1]
    code = latest_code(stack, PHONE)
    assert message["message"] == f"【一证通查】您的验证码为{code}，5分钟内有效。如非本人操作，请忽略。"
    assert message["phone"] == PHONE


def test_code_is_valid_for_five_minutes(stack: LocalStack, api: Client) -> None:
    with time_machine.travel(START, tick=True) as traveller:
        request_code(api, PHONE)
        code = latest_code(stack, PHONE)
        traveller.shift(301)
        response = query(api, code)
    assert response.status_code == 403
    assert error_code(response) == "wrong_code"


def test_code_just_inside_five_minutes_is_accepted(stack: LocalStack, api: Client) -> None:
    with time_machine.travel(START, tick=True) as traveller:
        request_code(api, PHONE)
        code = latest_code(stack, PHONE)
        traveller.shift(290)
        assert query(api, code).status_code == 202


def test_code_is_single_use(stack: LocalStack, api: Client) -> None:
    request_code(api, PHONE)
    code = latest_code(stack, PHONE)
    assert query(api, code).status_code == 202
    again = query(api, code)
    assert again.status_code == 403
    assert error_code(again) == "wrong_code"


@pytest.mark.parametrize("wrong_tries, then", [(4, 202), (5, 403)])
def test_five_wrong_tries_from_the_owners_own_client_refuse_it(stack: LocalStack, api: Client, wrong_tries: int,
                                                               then: int) -> None:
    request_code(api, PHONE)
    code = latest_code(stack, PHONE)
    for _ in range(wrong_tries):
        assert error_code(query(api, other(code))) == "wrong_code"
    response = query(api, code)
    assert response.status_code == then
    if then == 403:
        assert error_code(response) == "wrong_code"


def test_a_new_code_leaves_the_earlier_one_valid(stack: LocalStack, api: Client) -> None:
    with time_machine.travel(START, tick=True) as traveller:
        request_code(api, PHONE)
        first = latest_code(stack, PHONE)
        traveller.shift(61)
        request_code(api, PHONE)
        assert query(api, first).status_code == 202


def test_a_fourth_code_while_three_are_live_is_refused_until_the_oldest_expires(stack: LocalStack,
                                                                               api: Client) -> None:
    codes = []
    with time_machine.travel(START, tick=False) as traveller:
        for _ in range(3):
            assert request_code(api, PHONE).status_code == 202
            codes.append(latest_code(stack, PHONE))
            traveller.shift(61)
        refused = request_code(api, PHONE)  # 183 s after the first: it lives 117 s more
        assert (refused.status_code, error_code(refused)) == (429, "too_many_requests")
        assert refused.headers["Retry-After"] == "120"  # whole minutes: not the second the owner asked
        assert len(stack.read_outbox()) == 3
        traveller.shift(117)
        assert request_code(api, PHONE).status_code == 202
        assert query(api, codes[1]).status_code == 202  # the newer ones were kept


def test_second_code_within_60_seconds_is_refused_with_retry_after(stack: LocalStack, api: Client) -> None:
    with time_machine.travel(START, tick=False) as traveller:
        assert request_code(api, PHONE).status_code == 202
        traveller.shift(20)
        response = request_code(api, PHONE)
        assert response.status_code == 429
        assert error_code(response) == "too_many_requests"
        assert response.headers["Retry-After"] == "40"
        traveller.shift(40)
        assert request_code(api, PHONE).status_code == 202
    assert len(stack.read_outbox()) == 2


def test_eleventh_code_of_the_day_is_refused_until_beijing_midnight(stack: LocalStack, api: Client) -> None:
    with time_machine.travel(START, tick=False) as traveller:
        for _ in range(10):
            assert request_code(api, PHONE).status_code == 202
            traveller.shift(301)  # the earlier code expired: never three live at once
        response = request_code(api, PHONE)
        assert response.status_code == 429
        assert error_code(response) == "too_many_requests"
        midnight_beijing = dt.datetime(2026, 11, 28, 16, 0, tzinfo=dt.UTC)
        now = START + dt.timedelta(seconds=301 * 10)
        assert int(response.headers["Retry-After"]) == int((midnight_beijing - now).total_seconds())
        traveller.move_to(midnight_beijing + dt.timedelta(seconds=1))
        assert request_code(api, PHONE).status_code == 202


def test_a_code_beyond_the_per_ip_hourly_limit_is_refused(stack: LocalStack, api: Client,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The default is in the hundreds (carrier-grade NAT, tests/test_contention.py); 5 here keeps it short.
    from chalicelib.config import settings

    monkeypatch.setenv("CODE_IP_HOURLY_LIMIT", "5")
    settings.cache_clear()
    import app as app_module

    app_module.code_service.cache_clear()
    phones = [f"139{n:08d}" for n in range(6)]
    with time_machine.travel(START, tick=False):
        for phone in phones[:5]:
            assert request_code(api, phone).status_code == 202, phone
        response = request_code(api, phones[5])
    assert response.status_code == 429
    assert error_code(response) == "too_many_requests"
    assert response.headers["Retry-After"] == "3600"
    assert {m["phone"] for m in stack.read_outbox()} == set(phones[:5])


def test_saturated_sms_channel_is_503_service_busy(stack: LocalStack, api: Client) -> None:
    from botocore.exceptions import ClientError

    from chalicelib import clients

    def throttled(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "Publish")

    # The SNS refusal comes from AWS; everything of ours runs as deployed.
    clients.client("sns").meta.events.register("before-call.sns.Publish", throttled)
    response = request_code(api, PHONE)
    assert response.status_code == 503
    assert error_code(response) == "service_busy"
    assert response.headers["Retry-After"] == "60"
    assert stack.read_outbox() == []
    # The code never sent holds none of the number's three live places.
    items = aws("dynamodb").scan(TableName=stack.env["CODES_TABLE"])["Items"]
    assert [item["codes"]["M"] for item in items] == [{}]


def test_a_number_sns_refuses_for_good_is_400_invalid_phone_not_500(stack: LocalStack, api: Client) -> None:
    from botocore.exceptions import ClientError

    from chalicelib import clients

    def opted_out(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "InvalidParameter", "Message": "opted out"}}, "Publish")

    clients.client("sns").meta.events.register("before-call.sns.Publish", opted_out)
    response = request_code(api, PHONE)
    assert response.status_code == 400
    assert error_code(response) == "invalid_phone"


@pytest.mark.parametrize("attempt", ["wrong", "expired"])
def test_refused_code_does_not_create_a_query(stack: LocalStack, api: Client, attempt: str) -> None:
    with time_machine.travel(START, tick=True) as traveller:
        request_code(api, PHONE)
        code = latest_code(stack, PHONE)
        if attempt == "expired":
            traveller.shift(400)
            response = query(api, code)
        else:
            response = query(api, other(code))
    assert response.status_code == 403
    assert aws("dynamodb").scan(TableName=stack.env["QUERIES_TABLE"])["Items"] == []


def test_codes_over_the_sms_channel_rate_are_refused_busy_and_change_nothing(stack: LocalStack, api: Client,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.config import settings

    monkeypatch.setenv("SMS_CODES_PER_SECOND", "2")
    monkeypatch.setenv("SMS_RATE_SHARDS", "1")  # one counter, so exactly the third is refused
    settings.cache_clear()
    import app as app_module

    app_module.code_service.cache_clear()
    with time_machine.travel(START, tick=False) as traveller:
        assert request_code(api, "13900001111").status_code == 202
        assert request_code(api, "13700002222").status_code == 202
        busy = request_code(api, "13812345678")
        assert busy.status_code == 503
        assert error_code(busy) == "service_busy"
        assert busy.headers["Retry-After"] == "1"
        traveller.shift(1)  # the next second has room again, and the refusal held no lock
        assert request_code(api, "13812345678").status_code == 202
    assert len(stack.read_outbox()) == 3

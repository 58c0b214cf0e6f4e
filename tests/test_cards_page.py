"""The H5 page's second tab, "移动电话卡" (SPEC §9), in Debian's headless Chromium driven by Playwright.

The page is served by the local stack over HTTP, and the code request is real. The card query route
itself (POST /v1/card-queries) is answered here by Playwright's `page.route` (a 202, a 400
invalid_id_number, a 403, a 429): these tests cover the page — tabs, client-side checks mirroring
SPEC §9, where each server error is shown, the accepted message — not the server. The route's own
answers, and the full loop from this page, are covered by the server-side card-query tests.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pytest

from chalicelib.cards.validation import check_character
from local.stack import LocalStack, StackOptions
from tests.conftest import API_PORT, BASE_OPTIONS, wait_for
from tests.test_cards import options as card_options
from tests.test_page import keep_screenshot_at_360

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts")
BASE = f"http://127.0.0.1:{API_PORT}"

GOOD = {"姓名": "阿依古丽·买买提", "身份证号码": "650102199203110358", "手机号码": "18612345678", "验证码": "123456"}
FIELD = {"姓名": "name", "身份证号码": "id_number", "手机号码": "phone", "验证码": "code"}
ACCEPTED = {"query_id": "0b9a4c1e-5d2f-4b7a-9c3e-1f2a3b4c5d6e", "status": "accepted", "reply_within_hours": 48,
            "sms_sender": "10699000"}


def cards_tab(page: Page) -> None:
    page.get_by_role("tab", name="移动电话卡").click()
    page.locator("#card-form").wait_for(state="visible")


def fill(page: Page, values: dict[str, str]) -> None:
    for label, value in values.items():
        page.get_by_label(label, exact=True).fill(value)


def intercept(page: Page, status: int, body: Any, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Answer POST /v1/card-queries in the browser; returns the bodies the page sent."""
    sent: list[dict] = []

    def handle(route: Route) -> None:
        sent.append(json.loads(route.request.post_data))  # type: ignore[arg-type]  # a POST: never None
        route.fulfill(status=status, content_type="application/json; charset=utf-8",
                      headers=headers or {}, body=json.dumps(body, ensure_ascii=False))

    page.route("**/v1/card-queries", handle)
    return sent


def card_queries_sent(page: Page) -> list[str]:
    return [u for u in page.requests_seen if urlparse(u).path.endswith("/v1/card-queries")]  # type: ignore[attr-defined]  # set by page()


@pytest.mark.routes_only
def test_tabs_switch_between_the_two_forms_keeping_what_was_typed(stack: LocalStack, page: Page) -> None:
    accounts, cards = page.get_by_role("tab", name="互联网账号"), page.get_by_role("tab", name="移动电话卡")
    assert accounts.get_attribute("aria-selected") == "true" and cards.get_attribute("aria-selected") == "false"
    assert page.locator("#query-form").is_visible() and page.locator("#card-form").count() == 0
    page.get_by_label("手机号码").fill("13812345678")
    cards.click()
    assert cards.get_attribute("aria-selected") == "true" and accounts.get_attribute("aria-selected") == "false"
    assert page.locator("#card-form").is_visible() and page.locator("#query-form").count() == 0
    assert page.get_by_role("heading", name="移动电话卡查询").is_visible()
    assert "中国移动、中国联通、中国电信" in page.locator("#panel-cards").inner_text()
    assert page.locator(".company").count() == 0  # the internet-account list belongs to the other tab
    assert page.url.endswith("/#cards")
    page.get_by_label("姓名").fill("张伟")
    # keyboard: arrows move between tabs, as the WAI-ARIA tabs pattern has it
    cards.focus()
    page.keyboard.press("ArrowLeft")
    assert accounts.get_attribute("aria-selected") == "true"
    assert page.evaluate("document.activeElement.id") == "tab-accounts"
    assert page.get_by_label("手机号码").input_value() == "13812345678"
    page.keyboard.press("End")
    assert page.get_by_label("姓名").input_value() == "张伟"
    # a link to the card tab opens it
    page.goto(BASE + "/#cards")
    page.reload()
    page.locator("#card-form").wait_for(state="visible")
    assert page.get_by_role("tab", name="移动电话卡").get_attribute("aria-selected") == "true"


@pytest.mark.routes_only
def test_each_form_has_its_fields_labels_keyboards_and_notes(stack: LocalStack, page: Page) -> None:
    cards_tab(page)
    form = page.locator("#card-form")
    for label, field in FIELD.items():
        field_input = form.get_by_label(label, exact=True)
        assert field_input.get_attribute("id") == f"card-{field}"
        # (Playwright types attributes as Optional: a missing one, None, fails the test all the same)
        assert f"card-{field}-error" in field_input.get_attribute("aria-describedby")  # type: ignore[operator]
    assert form.get_by_label("手机号码").get_attribute("inputmode") == "numeric"
    assert form.get_by_label("验证码").get_attribute("inputmode") == "numeric"
    assert form.get_by_label("身份证号码").get_attribute("inputmode") is None  # X needs letters
    notes = page.locator("#panel-cards").inner_text()
    assert "24小时内只能查询一次" in notes and "10699000" in notes and "页面不显示电话卡数量" in notes
    # SPEC §9: the limit is this phone's; nothing says an ID number is limited
    assert "同一手机号码24小时内只能查询一次" in notes and "同一身份证" not in notes
    for number in ("10086", "10010", "10000"):
        assert page.get_by_role("link", name=number).get_attribute("href") == f"tel:{number}"


def _wrong_check(number: str) -> str:
    return number[:17] + next(c for c in "0123456789X" if c != number[17])


def _with_check(first17: str) -> str:
    return first17 + check_character(first17)


# A birth date still ahead whenever the test runs: the date is taken at collection, a run can pass midnight, and
# the page judges by the browser's day (tomorrow was today by the time a run that started at 23:53 got there).
SOON = dt.date.today() + dt.timedelta(days=3)


@pytest.mark.routes_only
@pytest.mark.parametrize("label, value, message", [
    ("姓名", "张", "请输入正确的姓名"),
    ("姓名", "张三3", "请输入正确的姓名"),
    ("姓名", "张三😀", "请输入正确的姓名"),
    ("姓名", "张" * 31, "请输入正确的姓名"),
    ("姓名", "·张三", "请输入正确的姓名"),
    ("身份证号码", "65010219920311035", "身份证号码应为18位"),
    ("身份证号码", "6501021992031103A8", "身份证号码为17位数字加最后一位数字或X"),
    ("身份证号码", "65010219920311035²", "身份证号码为17位数字加最后一位数字或X"),
    ("身份证号码", _wrong_check("650102199203110358"), "校验位不符"),
    ("身份证号码", _with_check("11010519990230002"), "出生日期不正确"),  # 1999-02-30
    ("身份证号码", _with_check("110105" + SOON.strftime("%Y%m%d") + "002"), "出生日期不正确"),
    ("身份证号码", _with_check("11010518991231002"), "出生日期不正确"),
    ("身份证号码", _with_check("99010519491231002"), "地区码不正确"),
    ("手机号码", "1861234567", "请输入正确的11位手机号码"),
    ("验证码", "12345", "请输入6位数字验证码"),
])
def test_client_side_errors_show_next_to_their_field_and_nothing_is_sent(stack: LocalStack, page: Page, label: str,
                                                                         value: str, message: str) -> None:
    cards_tab(page)
    fill(page, {**GOOD, label: value})
    page.get_by_role("button", name="查询").click()
    field = FIELD[label]
    assert message in page.locator(f"#card-{field}-error").inner_text()
    assert page.locator(f"#card-{field}").get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == f"card-{field}"
    others = [f for f in FIELD.values() if f != field]
    assert all(page.locator(f"#card-{f}-error").inner_text() == "" for f in others)
    assert card_queries_sent(page) == []


@pytest.mark.routes_only
def test_every_field_wrong_at_once_shows_four_messages(stack: LocalStack, page: Page) -> None:
    cards_tab(page)
    fill(page, {"姓名": "1", "身份证号码": "123", "手机号码": "123", "验证码": "x"})
    page.get_by_role("button", name="查询").click()
    for field in FIELD.values():
        assert page.locator(f"#card-{field}-error").inner_text()
    assert card_queries_sent(page) == []


@pytest.mark.routes_only
def test_the_check_character_in_the_page_agrees_with_the_server_rule(stack: LocalStack, page: Page) -> None:
    """MOD 11-2 in JavaScript against chalicelib.cards.validation on random numbers, right and wrong."""
    cards_tab(page)
    sent = intercept(page, 400, {"error": {"code": "invalid_code_format", "message": "验证码为6位数字。"}})
    rng = random.Random(11)
    fill(page, GOOD)
    for index in range(24):
        first17 = f"{rng.choice([11, 31, 44, 65])}0102{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}" \
                  f"{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
        number = first17 + check_character(first17) if index % 2 else _wrong_check(first17 + check_character(first17))
        page.get_by_label("身份证号码").fill(number.lower())
        if index % 2:
            # (the route handler runs inside Playwright calls: wait with Playwright, not with a sleep loop)
            with page.expect_response("**/v1/card-queries"):
                page.get_by_role("button", name="查询").click()
            page.wait_for_function("document.getElementById('card-code-error').textContent.length > 0")
            assert sent[-1]["id_number"] == number
            assert page.locator("#card-id_number-error").inner_text() == ""
        else:
            page.get_by_role("button", name="查询").click()
            assert "校验位不符" in page.locator("#card-id_number-error").inner_text()
    assert len(sent) == 12


@pytest.mark.routes_only
def test_accepted_query_shows_the_sms_message_and_sends_normalised_fields(stack: LocalStack, page: Page) -> None:
    cards_tab(page)
    sent = intercept(page, 202, ACCEPTED)
    fill(page, {"姓名": " 阿依古丽・买买提 ", "身份证号码": "650102 19920311 0358", "手机号码": "+86 186-1234-5678",
                "验证码": "123456"})
    page.get_by_role("button", name="查询").click()
    done = page.locator("#card-done")
    done.wait_for(state="visible")
    assert sent == [{"name": "阿依古丽·买买提", "id_number": "650102199203110358", "phone": "18612345678",
                     "code": "123456"}]
    assert "查询已受理" in done.inner_text() and "48小时内通过10699000短信端口" in done.inner_text()
    assert not page.locator("#card-form").is_visible()
    link = page.get_by_role("link", name="查看查询进度")
    assert link.get_attribute("href").endswith(  # type: ignore[union-attr]  # None fails the test all the same
        f"/v1/card-queries/{ACCEPTED['query_id']}")
    status = {"query_id": ACCEPTED["query_id"], "status": "looking_up", "created_at": "2026-11-28T09:00:00Z"}
    page.route(f"**/v1/card-queries/{ACCEPTED['query_id']}", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(status)))
    link.click()
    page.wait_for_function("document.getElementById('card-status-text').textContent.startsWith('当前状态：')")
    assert "正在向各企业查询" in page.locator("#card-status-text").inner_text()
    assert not re.search(r"\d+张", page.locator("main").inner_text())  # never counts on screen
    # the other tab's form is untouched
    page.get_by_role("tab", name="互联网账号").click()
    assert page.locator("#query-form").is_visible()


@pytest.mark.routes_only
@pytest.mark.parametrize("status, body, headers, where, message", [
    (400, {"error": {"code": "invalid_id_number", "message": "请输入正确的18位身份证号码（最后一位为数字或X）。"}}, {},
     "#card-id_number-error", "请输入正确的18位身份证号码"),
    (400, {"error": {"code": "invalid_name", "message": "…"}}, {}, "#card-name-error", "请输入正确的姓名"),
    (400, {"error": {"code": "invalid_phone", "message": "…"}}, {}, "#card-phone-error", "请输入正确的11位手机号码"),
    (400, {"error": {"code": "invalid_code_format", "message": "…"}}, {}, "#card-code-error", "请输入6位数字验证码"),
    (403, {"error": {"code": "wrong_code", "message": "…"}}, {}, "#card-code-error", "验证码错误或已失效"),
    (429, {"error": {"code": "query_limit", "message": "…"}}, {"Retry-After": "82800"}, "#card-form-error",
     "该手机号码24小时内已查询过，请于23小时后再查询"),
    (429, {"error": {"code": "too_many_requests", "message": "…"}}, {"Retry-After": "30"}, "#card-form-error",
     "操作过于频繁，请于30秒后再试"),
    (500, {"error": {"code": "internal_error", "message": "…"}}, {}, "#card-form-error", "服务暂时出现问题"),
])
def test_server_errors_show_where_they_belong(stack: LocalStack, page: Page, status: int, body: dict[str, Any],
                                              headers: dict[str, str], where: str, message: str) -> None:
    cards_tab(page)
    sent = intercept(page, status, body, headers)
    fill(page, GOOD)
    page.get_by_role("button", name="查询").click()
    page.wait_for_function(f"document.querySelector('{where}').textContent.length > 0")
    assert message in page.locator(where).inner_text()
    assert len(sent) == 1 and page.locator("#card-form").is_visible()
    assert page.locator("#card-submit").is_enabled()


@pytest.mark.routes_only
def test_get_code_counts_down_in_the_card_form_with_the_real_server(stack: LocalStack, page: Page) -> None:
    cards_tab(page)
    page.get_by_label("手机号码").fill("18612345678")
    button = page.locator("#card-get-code")
    box = button.bounding_box()
    button.click()
    page.wait_for_function("document.getElementById('card-get-code').textContent.startsWith('60秒')")
    assert button.is_disabled() and button.bounding_box() == box
    code = wait_for(lambda: [m for m in stack.read_outbox() if m["phone"] == "18612345678"], 10, "the code SMS")
    assert re.search(r"验证码为\d{6}", code[0]["message"])
    assert page.evaluate("document.activeElement.id") == "card-code"
    # within the free codes no proof of work is asked, and no widget is shown
    assert page.locator("altcha-widget").count() == 0 and page.locator("#card-pow").is_hidden()


@pytest.mark.routes_only
def test_get_code_with_a_wrong_phone_is_caught_before_any_request(stack: LocalStack, page: Page) -> None:
    cards_tab(page)
    page.get_by_label("手机号码").fill("1861234567")
    page.get_by_role("button", name="获取验证码").click()
    assert "请输入正确的11位手机号码" in page.locator("#card-phone-error").inner_text()
    assert not [u for u in page.requests_seen if u.endswith("/v1/verification-codes")]  # type: ignore[attr-defined]  # page()
    assert stack.read_outbox() == []


@pytest.mark.routes_only
def test_screenshot_of_the_card_tab_at_360px(stack: LocalStack, page: Page) -> None:
    cards_tab(page)
    fill(page, {"姓名": "阿依古丽·买买提", "身份证号码": _wrong_check("650102199203110358"),
                "手机号码": "18612345678", "验证码": ""})
    page.get_by_role("button", name="查询").click()
    assert "校验位不符" in page.locator("#card-id_number-error").inner_text()
    keep_screenshot_at_360(page, "card-query-page-360.png")


@pytest.mark.parametrize("stack_options", [card_options()])
def test_full_card_flow_against_the_real_service_ends_with_the_reply_sms(stack: LocalStack, page: Page) -> None:
    """No interception: the real route, the real workflow over the fixtures' operators, the reply in the outbox."""
    cards_tab(page)
    page.get_by_label("手机号码").fill("13812345678")
    page.get_by_role("button", name="获取验证码").click()
    code = wait_for(lambda: [m for m in stack.read_outbox() if m["phone"] == "13812345678"], 10, "the code SMS")
    fill(page, {"姓名": "张伟", "身份证号码": "44010619850212345x", "手机号码": "13812345678",
                "验证码": re.search(r"验证码为(\d{6})", code[0]["message"]).group(1)})  # type: ignore[union-attr]
    page.get_by_role("button", name="查询").click()
    done = page.locator("#card-done")
    done.wait_for(state="visible")
    assert "查询已受理" in done.inner_text()
    assert stack.pump_once() == 1
    reply = wait_for(lambda: [m["message"] for m in stack.read_outbox() if "名下" in m["message"]], 100, "the reply")
    assert reply == ["【一证通查】您名下在网移动电话卡共3张：中国移动广东公司2张，中国联通北京分公司1张。"
                     "如有异议，请联系相关企业核实、关停或销户。"]


@pytest.mark.routes_only
@pytest.mark.parametrize("stack_options", [StackOptions(**{**BASE_OPTIONS.__dict__, "code_free_per_number": 0})])
def test_a_428_on_the_card_tab_shows_the_widget_which_solves_and_the_code_arrives(stack: LocalStack,
                                                                                  page: Page) -> None:
    """SPEC §3 proof of work from the first code on: the 428's challenge solved in the card form."""
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/v1/verification-codes") else None)
    cards_tab(page)
    assert page.locator("altcha-widget").count() == 0
    page.get_by_label("手机号码").fill("18612345678")
    button = page.locator("#card-get-code")
    box = button.bounding_box()
    button.click()
    page.locator("#card-pow altcha-widget").wait_for(state="visible")
    page.locator("#card-pow .altcha[data-state='verified']").wait_for(timeout=30_000)
    page.wait_for_function("document.getElementById('card-get-code').textContent.endsWith('秒后重新获取')")
    code = wait_for(lambda: [m for m in stack.read_outbox() if m["phone"] == "18612345678"], 10, "the code SMS")
    assert re.search(r"验证码为\d{6}", code[0]["message"])
    assert statuses == [428, 202]
    assert button.bounding_box() == box  # the widget goes under the code row, the row does not move
    assert page.locator("#card-code-error").inner_text() == "" and page.locator("#card-form-error").inner_text() == ""
    keep_screenshot_at_360(page, "card-query-page-challenge-360.png")

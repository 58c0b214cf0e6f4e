"""The internet-account tab's 这个号码是二手号？一键解绑前任机主的账号 (SPEC §10.2 二次号码解绑; the page, its last
bullet), in Debian's headless Chromium driven by Playwright at 360 px.

Nothing is intercepted: the page talks to the local stack over HTTP (the code request, POST /v1/number-releases,
GET /v1/number-releases/{id}), the carrier and the eight partner simulators answer over HTTP, and what the
citizen receives is read from the SMS outbox. The checks next to the fields are the account query form's own;
the tests hold the two forms' messages side by side.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect

from local.stack import LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS, post_json, wait_for
from tests.helpers import latest_code, replies_to, request_code
from tests.test_page import keep_screenshot_at_360

if TYPE_CHECKING:
    from chalice.test import Client
    from playwright.sync_api import Locator, Page

# local/fixtures: 李娜's number, hers since 2024-03-01; bound before that: tencent 2, alibaba 1, meituan 2
# (tencent 1 and alipay 1 were bound after it: hers, kept).
LI = {"phone": "13900001111", "id_last6": "010203"}
OPEN = "这个号码是二手号？一键解绑前任机主的账号"
SUBMIT = "提交解绑申请"
LABELS = {"phone": "手机号码", "id_last6": "身份证号码后六位", "code": "验证码"}
GOOD = {**LI, "code": "123456"}
RESULT_PREFIX = "【一证通查】您的手机号139****1111二次号码解绑结果："
RESULT = (RESULT_PREFIX + "腾讯2个，阿里巴巴1个，支付宝0个，百度0个，快手0个，抖音0个，京东0个，美团2个。"
          "共解绑5个在您使用本号码前绑定的账号。")


@pytest.fixture
def stack_options() -> StackOptions:
    # The start queue is pumped by the tests (BASE_OPTIONS): a release waits there until a test lets it run.
    return StackOptions(**{**BASE_OPTIONS.__dict__})


pytestmark = pytest.mark.usefixtures("codes_without_resend_gap")  # tests/conftest.py


# -- helpers ---------------------------------------------------------------------------------------
def open_form(page: Page) -> Locator:
    """The form opened under its button in the account tab."""
    page.get_by_role("button", name=OPEN).click()
    panel = page.locator("#panel-accounts .release")
    panel.wait_for(state="visible")
    return panel


def fill_form(panel: Locator, values: dict[str, str]) -> None:
    for field, value in values.items():
        panel.get_by_label(LABELS[field], exact=True).fill(value)


def releases_sent(page: Page) -> list[str]:
    return [u for u in page.requests_seen  # type: ignore[attr-defined]  # set by page()
            if urlparse(u).path.endswith("/v1/number-releases")]


def code_sms_count(stack: LocalStack, phone: str) -> int:
    return len([m for m in stack.read_outbox() if m["phone"] == phone and "验证码" in m["message"]])


def get_code(stack: LocalStack, panel: Locator, phone: str) -> str:
    """The form's own code button (no proof of work within the free codes), the code read from the outbox."""
    before = code_sms_count(stack, phone)
    panel.get_by_role("button", name="获取验证码").click()
    wait_for(lambda: code_sms_count(stack, phone) > before, 10, "the code SMS")
    expect(panel.locator("#release-get-code")).to_have_text(re.compile(r"\d+秒后重新获取"))
    return latest_code(stack, phone)


def submit_release(stack: LocalStack, page: Page, values: dict[str, str] | None = None) -> Locator:
    """李娜 (her details as `values` spell them) asks for the release from the page with a fresh code."""
    panel = open_form(page)
    fill_form(panel, values or LI)
    fill_form(panel, {"code": get_code(stack, panel, LI["phone"])})
    panel.get_by_role("button", name=SUBMIT).click()
    return panel


def result_sms(stack: LocalStack) -> list[str]:
    return [m for m in replies_to(stack, LI["phone"]) if m.startswith(RESULT_PREFIX)]


def run_release(stack: LocalStack) -> str:
    """The start queue let go (the release runs: carrier, eight companies); its one result SMS awaited."""
    wait_for(lambda: stack.pump_once() >= 1, 15, "the release to start")
    return str(wait_for(lambda: next(iter(result_sms(stack)), None), 90, "the release result SMS"))


# -- before submitting -----------------------------------------------------------------------------
@pytest.mark.routes_only
def test_the_form_at_360px_before_submitting(stack: LocalStack, page: Page) -> None:
    # closed, it is not in the document: each label names one field (the account query form's)
    for label in LABELS.values():
        expect(page.get_by_label(label, exact=True)).to_have_count(1)
    opener = page.get_by_role("button", name=OPEN)
    assert opener.get_attribute("aria-expanded") == "false"
    panel = open_form(page)
    assert opener.get_attribute("aria-expanded") == "true"
    assert panel.get_by_role("heading", name=OPEN).is_visible()
    assert page.evaluate("document.activeElement.id") == "release-phone"
    # fields, keyboards and where their errors go: the account query form's
    for field, label in LABELS.items():
        control = panel.get_by_label(label, exact=True)
        assert control.get_attribute("id") == f"release-{field}"
        assert f"release-{field}-error" in (control.get_attribute("aria-describedby") or "")
        query_control = page.locator("#query-form").get_by_label(label, exact=True)
        for attribute in ("type", "inputmode", "maxlength", "autocomplete"):
            assert control.get_attribute(attribute) == query_control.get_attribute(attribute), (field, attribute)
    assert panel.get_by_label("身份证号码后六位").get_attribute("inputmode") is None  # X needs letters
    assert "30天内可申请一次" in panel.inner_text()
    fill_form(panel, LI)
    for control in (panel.get_by_role("button", name="获取验证码"), panel.get_by_role("button", name=SUBMIT),
                    panel.get_by_label("验证码", exact=True)):
        box = control.bounding_box()
        assert box is not None and box["width"] > 0 and box["x"] + box["width"] <= 360
    keep_screenshot_at_360(page, "release-form-open-360.png")  # no horizontal scrolling, one origin
    assert releases_sent(page) == [] and stack.read_outbox() == []


@pytest.mark.routes_only
def test_opening_prefills_from_the_query_form_and_cancel_closes_keeping_what_was_typed(stack: LocalStack,
                                                                                      page: Page) -> None:
    query_form = page.locator("#query-form")
    query_form.get_by_label("手机号码", exact=True).fill(LI["phone"])
    query_form.get_by_label("身份证号码后六位", exact=True).fill("32123X")  # not valid (day 32): not copied
    panel = open_form(page)
    assert panel.get_by_label("手机号码", exact=True).input_value() == LI["phone"]
    assert panel.get_by_label("身份证号码后六位", exact=True).input_value() == ""
    fill_form(panel, {"id_last6": LI["id_last6"], "code": "12"})
    panel.get_by_role("button", name="取消").click()
    expect(page.locator(".release")).to_have_count(0)  # out of the document: no second set of labels
    opener = page.get_by_role("button", name=OPEN)
    assert opener.get_attribute("aria-expanded") == "false"
    assert page.evaluate("document.activeElement.id") == "release-open"
    opener.click()
    panel = page.locator(".release")
    expect(panel).to_be_visible()
    assert panel.get_by_label("身份证号码后六位", exact=True).input_value() == LI["id_last6"]
    assert panel.get_by_label("验证码", exact=True).input_value() == "12"
    opener.click()  # a second click closes it
    expect(page.locator(".release")).to_have_count(0)
    # the account tab's own dispute forms are untouched by it (one `.dispute` at a time, under its company)
    page.locator(".company").first.get_by_role("button", name="不是我注册的？申请核查").click()
    expect(page.locator(".dispute")).to_have_count(1)
    opener.click()
    expect(page.locator(".dispute")).to_have_count(1)
    expect(page.locator(".release")).to_have_count(1)


@pytest.mark.routes_only
@pytest.mark.parametrize("field, value, message", [
    ("phone", "1390000111", "请输入正确的11位手机号码"),
    ("phone", "02012345678", "请输入正确的11位手机号码"),
    ("phone", "12900001111", "请输入正确的11位手机号码"),
    ("id_last6", "321234", "请输入身份证号码后六位"),  # day of birth 32
    ("id_last6", "000203", "请输入身份证号码后六位"),  # day of birth 00
    ("id_last6", "12345Y", "请输入身份证号码后六位"),
    ("id_last6", "1234", "请输入身份证号码后六位"),
    ("code", "12345", "请输入6位数字验证码"),
    ("code", "12a456", "请输入6位数字验证码"),
])
def test_a_wrong_field_is_shown_next_to_it_as_the_query_form_shows_it(stack: LocalStack, page: Page, field: str,
                                                                     value: str, message: str) -> None:
    panel = open_form(page)
    fill_form(panel, {**GOOD, field: value})
    panel.get_by_role("button", name=SUBMIT).click()
    error = page.locator(f"#release-{field}-error")
    expect(error).to_contain_text(message)
    assert page.locator(f"#release-{field}").get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == f"release-{field}"
    assert all(page.locator(f"#release-{other}-error").inner_text() == "" for other in LABELS if other != field)
    assert page.locator("#release-form-error").inner_text() == ""
    assert releases_sent(page) == [] and stack.read_outbox() == []
    # the account query form, given the same value, says the same words
    query_form = page.locator("#query-form")
    for other in LABELS:
        query_form.get_by_label(LABELS[other], exact=True).fill(value if other == field else GOOD[other])
    page.locator("#submit").click()
    expect(page.locator(f"#{field}-error")).to_have_text(error.inner_text())
    assert stack.read_outbox() == []


@pytest.mark.routes_only
def test_every_field_wrong_at_once_shows_three_messages_and_focuses_the_first(stack: LocalStack,
                                                                              page: Page) -> None:
    panel = open_form(page)
    fill_form(panel, {"phone": "123", "id_last6": "abc", "code": "x"})
    panel.get_by_role("button", name=SUBMIT).click()
    for field in LABELS:
        expect(page.locator(f"#release-{field}-error")).not_to_be_empty()
    assert page.evaluate("document.activeElement.id") == "release-phone"
    assert releases_sent(page) == []


@pytest.mark.routes_only
def test_get_code_with_a_wrong_phone_is_caught_before_any_request(stack: LocalStack, page: Page) -> None:
    panel = open_form(page)
    fill_form(panel, {"phone": "1390000111"})
    panel.get_by_role("button", name="获取验证码").click()
    expect(page.locator("#release-phone-error")).to_have_text("请输入正确的11位手机号码")
    assert not [u for u in page.requests_seen if u.endswith("/v1/verification-codes")]  # type: ignore[attr-defined]
    assert stack.read_outbox() == []


# -- against the real service -------------------------------------------------------------------------
def test_full_flow_shows_the_release_id_and_the_result_sms_arrives(stack: LocalStack, page: Page) -> None:
    sent: list[dict[str, Any]] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data or "{}"))
            if urlparse(r.url).path.endswith("/v1/number-releases") and r.method == "POST" else None)
    panel = submit_release(stack, page, {"phone": "+86 139-0000-1111", "id_last6": "010203"})
    done = panel.locator("#release-done")
    expect(done).to_be_visible()
    assert not panel.locator("#release-form").is_visible()
    assert [{k: v for k, v in body.items() if k != "code"} for body in sent] == [LI]  # normalised as the query's
    release_id = panel.locator(".release-id").inner_text()
    assert re.fullmatch(r"[A-Za-z0-9_-]{8,}", release_id), release_id
    text = done.inner_text()
    assert "解绑申请已受理" in text and "各企业将在15天内处理" in text
    assert "解绑结果将由10699000短信发送到该手机" in text
    assert page.evaluate("document.activeElement.id") == "release-done"
    keep_screenshot_at_360(page, "release-done-360.png")
    # the result: one SMS to the phone, when every company has answered (the page shows no counts)
    result = run_release(stack)
    assert result.startswith(RESULT_PREFIX), result
    assert result == RESULT
    assert not re.search(r"\d+个", page.locator("#panel-accounts").inner_text())  # (the outbox panel aside)
    link = panel.get_by_role("link", name="查看申请进度")
    assert (link.get_attribute("href") or "").endswith(f"/v1/number-releases/{release_id}")
    url_before = page.url
    link.click()
    expect(panel.locator("#release-status-text")).to_have_text("当前状态：解绑结果已通过短信发送")
    assert page.url == url_before  # shown in place, no reload
    assert len(result_sms(stack)) == 1


@pytest.mark.parametrize("first", ["running", "completed"])
def test_release_limit_is_explained_with_the_wait(stack: LocalStack, api: Client, page: Page, first: str) -> None:
    """A release for the number is running (the lock held from acceptance, about the deadline plus an hour
    locally), or completed (30 days from the carrier's match): the page says so and how long to wait."""
    assert request_code(api, LI["phone"]).status_code == 202
    response = post_json(api, "/v1/number-releases", {**LI, "code": latest_code(stack, LI["phone"])})
    assert response.status_code == 202, response.body
    if first == "completed":
        assert run_release(stack).startswith(RESULT_PREFIX)
    panel = submit_release(stack, page)
    error = page.locator("#release-form-error")
    expect(error).not_to_be_empty()
    wait = r"(29天(2[0-3]|1\d|\d)小时|30天)" if first == "completed" else r"1小时\d+分钟"
    expected = f"该号码已有正在处理的解绑申请，或30天内已申请过二次号码解绑，请于{wait}后再申请。"
    assert re.fullmatch(expected, error.inner_text()), error.inner_text()
    assert panel.locator("#release-form").is_visible() and panel.locator("#release-done").is_hidden()
    assert all(page.locator(f"#release-{field}-error").inner_text() == "" for field in LABELS)
    assert panel.get_by_role("button", name=SUBMIT).is_enabled()
    assert len(releases_sent(page)) == 1
    keep_screenshot_at_360(page, f"release-limit-{first}-360.png")


def test_wrong_code_is_explained_next_to_the_code(stack: LocalStack, page: Page) -> None:
    panel = open_form(page)
    fill_form(panel, LI)
    right = get_code(stack, panel, LI["phone"])
    fill_form(panel, {"code": next(c * 6 for c in "0123456789" if c * 6 != right)})
    panel.get_by_role("button", name=SUBMIT).click()
    error = page.locator("#release-code-error")
    expect(error).to_have_text("验证码错误或已失效，请重新获取")
    assert page.locator("#release-code").get_attribute("aria-invalid") == "true"
    assert page.locator("#release-form-error").inner_text() == ""
    assert len(releases_sent(page)) == 1 and panel.locator("#release-done").is_hidden()
    assert replies_to(stack, LI["phone"]) == []  # nothing accepted, nothing sent but the code

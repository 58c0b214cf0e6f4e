"""The card tab's 不是我办理的号码？申请核查 (SPEC §10.1 号码核查; the page, last bullet of §10.2), in Debian's
headless Chromium driven by Playwright at 360 px.

Nothing is intercepted: the page talks to the local stack over HTTP (GET /v1/operators, the code request,
POST /v1/card-disputes), the card query it disputes is a real one (run through the API), and what the citizen
receives is read from the SMS outbox. The checks next to the fields are the card query form's own; the
tests hold the two forms' messages side by side.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect

from chalicelib import registry
from local.stack import LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS, post_json, wait_for
from tests.helpers import FIXTURE_OPERATORS, latest_code, replies_to, request_code, wait_finished
from tests.test_cards_page import cards_tab
from tests.test_page import keep_screenshot_at_360

if TYPE_CHECKING:
    from chalice.test import Client
    from playwright.sync_api import Locator, Page

# local/fixtures: 张伟's phone, and his cards at cmcc-gd (2) and cucc-bj (1); none at the others.
ZHANG = {"name": "张伟", "id_number": "44010619850212345X", "phone": "13812345678"}
OPEN = "不是我办理的号码？申请核查"
LABELS = {"operator": "办理号码的企业", "name": "姓名", "id_number": "身份证号码", "phone": "手机号码",
          "code": "验证码"}
GOOD = {"operator": "cmcc-gd", "name": "阿依古丽·买买提", "id_number": "650102199203110358", "phone": "18612345678",
        "code": "123456"}


def options(**changes: Any) -> StackOptions:
    # The fixtures' operators (as test_cards), and a deadline that is never the reason a card query replies.
    return StackOptions(**{**BASE_OPTIONS.__dict__, "deadline_seconds": 120, "operators": FIXTURE_OPERATORS,
                           **changes})


@pytest.fixture
def stack_options() -> StackOptions:
    return options()


pytestmark = pytest.mark.usefixtures("codes_without_resend_gap")  # tests/conftest.py


# -- helpers ---------------------------------------------------------------------------------------
def replied_card_query(api: Client, stack: LocalStack) -> None:
    """张伟's card query, through the API, replied to his phone (cmcc-gd 2 cards, cucc-bj 1)."""
    assert request_code(api, ZHANG["phone"]).status_code == 202
    response = post_json(api, "/v1/card-queries", {**ZHANG, "code": latest_code(stack, ZHANG["phone"])})
    assert response.status_code == 202, response.body
    assert stack.pump_once() == 1
    # A loaded machine: up to the deadline (the reply's text says if it came from it)
    assert wait_finished(stack, response.json_body["query_id"], timeout=150)["status"] == "SUCCEEDED"
    assert "中国移动广东公司2张" in replies_to(stack, ZHANG["phone"])[-1]


def open_form(page: Page) -> Locator:
    """The card tab, the form opened under its button, the operators loaded into the select."""
    cards_tab(page)
    page.get_by_role("button", name=OPEN).click()
    panel = page.locator("#panel-cards .dispute")
    panel.wait_for(state="visible")
    expect(panel.locator("#card-dispute-operator optgroup").first).to_be_attached()
    return panel


def fill_form(panel: Locator, values: dict[str, str]) -> None:
    for field, value in values.items():
        control = panel.get_by_label(LABELS[field], exact=True)
        if field == "operator":
            control.select_option(value)
        else:
            control.fill(value)


def disputes_sent(page: Page) -> list[str]:
    return [u for u in page.requests_seen  # type: ignore[attr-defined]  # set by page()
            if urlparse(u).path.endswith("/v1/card-disputes")]


def code_sms_count(stack: LocalStack, phone: str) -> int:
    return len([m for m in stack.read_outbox() if m["phone"] == phone and "验证码" in m["message"]])


def get_code(stack: LocalStack, page: Page, panel: Locator, phone: str) -> str:
    """The page's own code button (no proof of work within the free codes), the code read from the outbox."""
    before = code_sms_count(stack, phone)
    panel.get_by_role("button", name="获取验证码").click()
    wait_for(lambda: code_sms_count(stack, phone) > before, 10, "the code SMS")
    expect(panel.locator("#card-dispute-get-code")).to_have_text(re.compile(r"\d+秒后重新获取"))
    return latest_code(stack, phone)


def submit_for(stack: LocalStack, page: Page, operator: str, values: dict[str, str] | None = None) -> Locator:
    """张伟 (his details as `values` spell them) disputes `operator` from the page with a fresh code."""
    panel = open_form(page)
    values = values or ZHANG
    fill_form(panel, {"operator": operator, **{f: values[f] for f in ("name", "id_number", "phone")}})
    fill_form(panel, {"code": get_code(stack, page, panel, ZHANG["phone"])})
    panel.get_by_role("button", name="提交核查申请").click()
    return panel


# -- before submitting -----------------------------------------------------------------------------
@pytest.mark.routes_only
@pytest.mark.parametrize("stack_options", [options(operators=())])  # the whole registry in the select
def test_the_form_at_360px_before_submitting(stack: LocalStack, page: Page) -> None:
    panel = open_form(page)
    opener = page.get_by_role("button", name=OPEN)
    assert opener.get_attribute("aria-expanded") == "true"
    assert panel.get_by_role("heading", name=OPEN).is_visible()
    # the operator select: one <optgroup> per group, in registry order, every operator of the registry in it
    expected: dict[str, list[list[str]]] = {}
    for operator in registry.operators():
        expected.setdefault(operator.group, []).append([operator.id, operator.name])
    assert set(expected) == {"中国移动", "中国联通", "中国电信", "转售企业"}
    select = panel.get_by_label(LABELS["operator"], exact=True)
    shown = select.evaluate("""select => Array.from(select.children).map(child => child.tagName === "OPTGROUP"
        ? [child.label, Array.from(child.children).map(option => [option.value, option.textContent])]
        : [null, [[child.value, child.textContent]]])""")
    assert shown[0] == [None, [["", "请选择企业"]]]  # nothing chosen until the citizen chooses
    assert shown[1:] == [[group, operators] for group, operators in expected.items()]
    assert sum(len(operators) for _, operators in shown[1:]) == len(registry.operators())
    assert select.input_value() == ""
    # fields, keyboards and where their errors go: the card query form's
    for field, label in LABELS.items():
        control = panel.get_by_label(label, exact=True)
        assert control.get_attribute("id") == f"card-dispute-{field}"
        assert f"card-dispute-{field}-error" in (control.get_attribute("aria-describedby") or "")
    assert panel.get_by_label("手机号码").get_attribute("inputmode") == "numeric"
    assert panel.get_by_label("验证码").get_attribute("inputmode") == "numeric"
    assert panel.get_by_label("身份证号码").get_attribute("inputmode") is None  # X needs letters
    fill_form(panel, {**ZHANG, "operator": "mvno-zxst"})  # a long group, the last operator
    assert select.evaluate("select => select.selectedOptions[0].parentElement.label") == "转售企业"
    box = panel.get_by_role("button", name="获取验证码").bounding_box()
    assert box is not None and box["width"] > 0 and box["x"] + box["width"] <= 360
    for control in (select, panel.get_by_role("button", name="提交核查申请")):
        control_box = control.bounding_box()
        assert control_box is not None and control_box["x"] + control_box["width"] <= 360
    keep_screenshot_at_360(page, "card-dispute-form-open-360.png")  # no horizontal scrolling, one origin
    assert disputes_sent(page) == []


@pytest.mark.routes_only
def test_opening_prefills_from_the_card_query_and_cancel_closes_keeping_what_was_typed(stack: LocalStack,
                                                                                       page: Page) -> None:
    cards_tab(page)
    card_form = page.locator("#card-form")
    card_form.get_by_label("姓名", exact=True).fill(ZHANG["name"])
    card_form.get_by_label("身份证号码", exact=True).fill("4401061985021234")  # not a valid number: not copied
    card_form.get_by_label("手机号码", exact=True).fill(ZHANG["phone"])
    panel = open_form(page)
    assert panel.get_by_label("姓名", exact=True).input_value() == ZHANG["name"]
    assert panel.get_by_label("身份证号码", exact=True).input_value() == ""
    assert panel.get_by_label("手机号码", exact=True).input_value() == ZHANG["phone"]
    assert page.evaluate("document.activeElement.id") == "card-dispute-operator"
    fill_form(panel, {"operator": "cucc-bj", "code": "12"})
    panel.get_by_role("button", name="取消").click()
    expect(page.locator(".dispute")).to_have_count(0)  # out of the document, as the account dispute form
    opener = page.get_by_role("button", name=OPEN)
    assert opener.get_attribute("aria-expanded") == "false"
    assert page.evaluate("document.activeElement.id") == "card-dispute-open"
    opener.click()
    panel = page.locator(".dispute")
    expect(panel).to_be_visible()
    assert panel.get_by_label(LABELS["operator"], exact=True).input_value() == "cucc-bj"
    assert panel.get_by_label("验证码", exact=True).input_value() == "12"
    opener.click()  # a second click closes it
    expect(page.locator(".dispute")).to_have_count(0)


@pytest.mark.routes_only
@pytest.mark.parametrize("field, value, message", [
    ("operator", "", "请选择办理号码的企业"),
    ("name", "张", "请输入正确的姓名"),
    ("name", "张三3", "请输入正确的姓名"),
    ("name", "·张三", "请输入正确的姓名"),
    ("id_number", "65010219920311035", "身份证号码应为18位"),
    ("id_number", "6501021992031103A8", "身份证号码为17位数字加最后一位数字或X"),
    ("id_number", "650102199203110359", "校验位不符"),
    ("id_number", "110105199902300027", "出生日期不正确"),  # 1999-02-30
    ("id_number", "990105194912310021", "地区码不正确"),
    ("phone", "1861234567", "请输入正确的11位手机号码"),
    ("code", "12345", "请输入6位数字验证码"),
])
def test_a_wrong_field_is_shown_next_to_it_as_the_card_query_form_shows_it(stack: LocalStack, page: Page, field: str,
                                                                          value: str, message: str) -> None:
    panel = open_form(page)
    fill_form(panel, {**GOOD, field: value})
    panel.get_by_role("button", name="提交核查申请").click()
    error = page.locator(f"#card-dispute-{field}-error")
    expect(error).to_contain_text(message)
    assert page.locator(f"#card-dispute-{field}").get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == f"card-dispute-{field}"
    assert all(page.locator(f"#card-dispute-{other}-error").inner_text() == "" for other in LABELS if other != field)
    assert page.locator("#card-dispute-form-error").inner_text() == ""
    assert disputes_sent(page) == [] and stack.read_outbox() == []
    if field != "operator":  # the card query form, given the same value, says the same words
        card_form = page.locator("#card-form")
        for other in ("name", "id_number", "phone", "code"):
            card_form.get_by_label(LABELS[other], exact=True).fill(value if other == field else GOOD[other])
        page.locator("#card-submit").click()
        expect(page.locator(f"#card-{field}-error")).to_have_text(error.inner_text())


@pytest.mark.routes_only
def test_every_field_wrong_at_once_shows_five_messages_and_focuses_the_first(stack: LocalStack, page: Page) -> None:
    panel = open_form(page)
    fill_form(panel, {"name": "1", "id_number": "123", "phone": "123", "code": "x"})
    panel.get_by_role("button", name="提交核查申请").click()
    for field in LABELS:
        expect(page.locator(f"#card-dispute-{field}-error")).not_to_be_empty()
    assert page.evaluate("document.activeElement.id") == "card-dispute-operator"
    assert disputes_sent(page) == []


@pytest.mark.routes_only
def test_get_code_with_a_wrong_phone_is_caught_before_any_request(stack: LocalStack, page: Page) -> None:
    panel = open_form(page)
    fill_form(panel, {"phone": "1861234567"})
    panel.get_by_role("button", name="获取验证码").click()
    expect(page.locator("#card-dispute-phone-error")).to_have_text("请输入正确的11位手机号码")
    assert not [u for u in page.requests_seen if u.endswith("/v1/verification-codes")]  # type: ignore[attr-defined]
    assert stack.read_outbox() == []


# -- against the real service -------------------------------------------------------------------------
def test_full_flow_shows_the_dispute_id_and_the_submitted_sms_arrives(stack: LocalStack, api: Client,
                                                                     page: Page) -> None:
    replied_card_query(api, stack)
    sent: list[dict[str, Any]] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data or "{}"))
            if urlparse(r.url).path.endswith("/v1/card-disputes") else None)
    panel = submit_for(stack, page, "cmcc-gd", {**ZHANG, "name": " 张伟 ",
                                                "id_number": "440106 19850212 345x", "phone": "+86 138-1234-5678"})
    done = panel.locator(".dispute-done")
    expect(done).to_be_visible()
    assert not panel.locator("#card-dispute-form").is_visible()
    assert [{k: v for k, v in body.items() if k != "code"} for body in sent] == [{**ZHANG, "operator": "cmcc-gd"}]
    dispute_id = panel.locator(".dispute-id").inner_text()
    assert re.fullmatch(r"[A-Za-z0-9_-]{8,}", dispute_id), dispute_id
    text = done.inner_text()
    assert "核查申请已提交" in text and "中国移动广东公司将在15天内处理" in text
    assert "10699000短信" in text and "客服电话10086" in text
    submitted = (f"【一证通查】您对中国移动广东公司名下号码的核查申请已提交（编号{dispute_id}），"
                 "企业将在15天内处理，结果将以短信告知。")
    wait_for(lambda: submitted in replies_to(stack, ZHANG["phone"]), 15, "the submitted SMS")
    assert page.evaluate("document.activeElement.id") == "card-dispute-done"
    assert not re.search(r"\d+张|停机", panel.inner_text())  # the outcome goes only by SMS
    link = panel.get_by_role("link", name="查看申请进度")
    assert (link.get_attribute("href") or "").endswith(f"/v1/disputes/{dispute_id}")
    link.click()
    expect(panel.locator("#card-dispute-status-text")).to_have_text(
        re.compile(r"当前状态：(已提交|已转交企业处理|企业已处理，结果已短信告知)"))
    keep_screenshot_at_360(page, "card-dispute-done-360.png")


def test_nothing_to_dispute_is_explained_with_the_operator_named(stack: LocalStack, api: Client, page: Page) -> None:
    replied_card_query(api, stack)  # his reply named cmcc-gd and cucc-bj, not ctcc-sh
    panel = submit_for(stack, page, "ctcc-sh")
    error = page.locator("#card-dispute-form-error")
    expect(error).not_to_be_empty()
    operator = registry.operator("ctcc-sh")
    assert operator is not None and operator.hotline
    assert error.inner_text() == (f"近7天内本手机号码收到的查询结果中，{operator.name}没有登记在您名下的号码，"
                                  "无需申请核查。如有疑问，请先用本手机号码查询，收到结果短信后再申请；"
                                  f"也可致电{operator.hotline}。")
    assert panel.locator("#card-dispute-form").is_visible() and panel.locator(".dispute-done").is_hidden()
    assert all(page.locator(f"#card-dispute-{field}-error").inner_text() == "" for field in LABELS)
    assert panel.get_by_role("button", name="提交核查申请").is_enabled()
    keep_screenshot_at_360(page, "card-dispute-nothing-to-dispute-360.png")


@pytest.mark.routes_only
def test_nothing_to_dispute_without_a_recent_card_query(stack: LocalStack, page: Page) -> None:
    submit_for(stack, page, "cmcc-gd")
    expect(page.locator("#card-dispute-form-error")).to_contain_text("中国移动广东公司没有登记在您名下的号码，无需申请核查")


@pytest.mark.routes_only
def test_wrong_code_is_explained_next_to_the_code(stack: LocalStack, page: Page) -> None:
    panel = open_form(page)
    fill_form(panel, {"operator": "cmcc-gd", **ZHANG})
    right = get_code(stack, page, panel, ZHANG["phone"])
    fill_form(panel, {"code": next(c * 6 for c in "0123456789" if c * 6 != right)})
    panel.get_by_role("button", name="提交核查申请").click()
    error = page.locator("#card-dispute-code-error")
    expect(error).to_have_text("验证码错误或已失效，请重新获取")
    assert page.locator("#card-dispute-code").get_attribute("aria-invalid") == "true"
    assert page.locator("#card-dispute-form-error").inner_text() == ""
    assert len(disputes_sent(page)) == 1 and panel.locator(".dispute-done").is_hidden()


def test_dispute_limit_is_explained_with_the_wait(stack: LocalStack, api: Client, page: Page) -> None:
    replied_card_query(api, stack)
    stack.operators.set_mode("cmcc-gd", "silent")  # the first dispute stays open
    assert request_code(api, ZHANG["phone"]).status_code == 202
    first = post_json(api, "/v1/card-disputes", {**ZHANG, "code": latest_code(stack, ZHANG["phone"]),
                                                 "operator": "cmcc-gd"})
    assert first.status_code == 202, first.body
    submit_for(stack, page, "cmcc-gd")
    error = page.locator("#card-dispute-form-error")
    expect(error).not_to_be_empty()
    expected = (r"您对中国移动广东公司已有正在处理的核查申请，或本手机号码今天已提交3次核查申请，"
                r"请于\d+(小时|分钟|秒)(\d+(分钟|秒))?后再试。")
    assert re.fullmatch(expected, error.inner_text()), error.inner_text()

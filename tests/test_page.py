"""The H5 query page (SPEC §1, §3), in Debian's headless Chromium driven by Playwright,
against the local stack over HTTP."""
from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pytest

from chalicelib import pages
from local.stack import LocalStack, StackOptions
from tests.conftest import API_PORT, BASE_OPTIONS, wait_for
from tests.helpers import latest_code, request_code, submit

if TYPE_CHECKING:
    from chalice.test import Client
    from playwright.sync_api import Page, Route

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts")
BASE = f"http://127.0.0.1:{API_PORT}"
# SPEC §3 proof of work from the first code on (the deployed threshold is 2 codes per number a day).
CHALLENGE_FIRST = StackOptions(**{**BASE_OPTIONS.__dict__, "code_free_per_number": 0})
# The page goes as far as an accepted query's status: no reply or deadline (tests/conftest.py, routes_only).
pytestmark = pytest.mark.routes_only


def test_full_flow_code_from_outbox_then_confirmation_and_status(stack: LocalStack, page: Page) -> None:
    page.get_by_label("手机号码").fill("138 1234 5678")
    page.get_by_role("button", name="获取验证码").click()
    code = wait_for(lambda: _code_or_none(stack, "13812345678"), 10, "the code SMS")
    # The local outbox panel shows the code too, as a person trying the service reads it.
    page.wait_for_function(f"document.getElementById('outbox').textContent.includes('{code}')")
    # within the free codes the server asks for no proof of work, and the page shows no widget
    assert page.locator("altcha-widget").count() == 0 and page.locator("#pow").is_hidden()
    page.get_by_label("身份证号码后六位").fill("12345x")
    page.get_by_label("验证码").fill(code)
    page.get_by_role("button", name="查询").click()
    done = page.locator("#done")
    done.wait_for(state="visible")
    assert "查询结果将在48小时内通过10699000短信端口回复" in done.inner_text()
    assert not page.locator("#query-form").is_visible()
    link = page.get_by_role("link", name="查看查询进度")
    # Playwright types attributes as Optional: a missing one fails the test all the same.
    assert re.search(r"/v1/queries/[0-9a-f-]{36}$", link.get_attribute("href"))  # type: ignore[arg-type]
    url_before = page.url
    link.click()
    page.wait_for_function("document.getElementById('status-text').textContent.startsWith('当前状态：')")
    assert page.url == url_before  # shown in place, no reload
    assert "已受理" in page.locator("#status-text").inner_text()
    # the page never shows counts: nothing like "N个" appears on it
    assert not re.search(r"\d+个", page.locator("main").inner_text())


def _code_or_none(stack: LocalStack, phone: str) -> str | None:
    try:
        return latest_code(stack, phone)
    except AssertionError:
        return None


@pytest.mark.parametrize("field, value, message", [
    ("手机号码", "1381234567", "请输入正确的11位手机号码"),
    ("手机号码", "02012345678", "请输入正确的11位手机号码"),
    ("身份证号码后六位", "321234", "请输入身份证号码后六位"),
    ("身份证号码后六位", "12345Y", "请输入身份证号码后六位"),
    ("验证码", "12345", "请输入6位数字验证码"),
])
def test_field_errors_show_next_to_their_field(stack: LocalStack, page: Page, field: str, value: str,
                                               message: str) -> None:
    good = {"手机号码": "13812345678", "身份证号码后六位": "12345X", "验证码": "123456"}
    for label, text in {**good, field: value}.items():
        page.get_by_label(label).fill(text)
    page.get_by_role("button", name="查询").click()
    input_id = {"手机号码": "phone", "身份证号码后六位": "id_last6", "验证码": "code"}[field]
    error = page.locator(f"#{input_id}-error")
    assert message in error.inner_text()
    assert page.locator(f"#{input_id}").get_attribute("aria-invalid") == "true"
    # (a missing attribute, None, fails the test all the same)
    assert input_id + "-error" in page.locator(f"#{input_id}").get_attribute("aria-describedby")  # type: ignore[operator]
    assert stack.read_outbox() == []  # nothing was sent to the server


def test_wrong_code_from_the_server_shows_next_to_the_code(stack: LocalStack, page: Page) -> None:
    page.get_by_label("手机号码").fill("13812345678")
    page.get_by_role("button", name="获取验证码").click()
    code = wait_for(lambda: _code_or_none(stack, "13812345678"), 10, "the code SMS")
    page.get_by_label("身份证号码后六位").fill("12345X")
    page.get_by_label("验证码").fill("000000" if code != "000000" else "111111")
    page.get_by_role("button", name="查询").click()
    page.wait_for_function("document.getElementById('code-error').textContent.length > 0")
    assert "验证码错误或已失效" in page.locator("#code-error").inner_text()


def test_get_code_button_counts_down_without_moving_the_layout(stack: LocalStack, page: Page) -> None:
    page.get_by_label("手机号码").fill("13900001111")
    button = page.locator("#get-code")
    box_before = button.bounding_box()
    button.click()
    page.wait_for_function("document.getElementById('get-code').textContent.startsWith('60秒')")
    assert button.is_disabled()
    first = button.bounding_box()
    page.wait_for_function("document.getElementById('get-code').textContent.startsWith('58秒')")
    second = button.bounding_box()
    assert first == second == box_before
    assert page.locator("#code").bounding_box() is not None


def test_second_query_within_24h_shows_when_to_retry(stack: LocalStack, api: Client, page: Page) -> None:
    assert submit(api, stack, "13900001111", "010203").status_code == 202
    # The citizen comes back with a fresh code a minute later.
    import time

    import time_machine

    with time_machine.travel(time.time() + 61, tick=True):
        assert request_code(api, "13900001111").status_code == 202
        code = latest_code(stack, "13900001111")
        page.get_by_label("手机号码").fill("13900001111")
        page.get_by_label("身份证号码后六位").fill("010203")
        page.get_by_label("验证码").fill(code)
        page.get_by_role("button", name="查询").click()
        page.wait_for_function("document.getElementById('form-error').textContent.length > 0")
    message = page.locator("#form-error").inner_text()
    assert re.fullmatch(r"该号码24小时内已查询过，请于2[34]小时(\d+分钟)?后再查询", message), message


def test_company_list_has_eight_entries_with_working_tel_links(stack: LocalStack, page: Page, api: Client) -> None:
    companies = api.http.get("/v1/companies").json_body["companies"]
    entries = page.locator(".company")
    assert entries.count() == 8
    for index, company in enumerate(companies):
        entry = entries.nth(index)
        assert company["name"] in entry.locator("h3").inner_text()
        assert company["details"] in entry.inner_text() and company["unbind"] in entry.inner_text()
        link = entry.get_by_role("link", name=company["hotline"])
        assert link.get_attribute("href") == "tel:" + re.sub(r"[^\d+]", "", company["hotline"])


def keep_screenshot_at_360(page: Page, name: str) -> None:
    """A screenshot kept as a test artifact; the page fits 360 px and loaded nothing from another origin."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    page.screenshot(path=path, full_page=True)
    assert os.path.getsize(path) > 10_000
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no horizontal scrolling
    # requests_seen: set on the Page by the page fixtures
    origins = {urlparse(url).netloc for url in page.requests_seen if url.startswith("http")}  # type: ignore[attr-defined]
    assert origins == {f"127.0.0.1:{API_PORT}"}  # the widget too loads nothing from anywhere else


def test_screenshot_at_360px_and_nothing_from_another_origin(stack: LocalStack, page: Page) -> None:
    keep_screenshot_at_360(page, "query-page-360.png")


def test_labels_are_tied_to_inputs_with_numeric_keyboards(stack: LocalStack, page: Page) -> None:
    assert page.get_by_label("手机号码").get_attribute("inputmode") == "numeric"
    assert page.get_by_label("验证码").get_attribute("inputmode") == "numeric"
    assert page.get_by_label("身份证号码后六位").get_attribute("inputmode") is None  # X needs letters


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_index_is_utf8_html_with_no_asset_from_another_origin(stack: LocalStack, api: Client) -> None:
    response = api.http.get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    html = response.body.decode("utf-8")
    parser = _Assets()
    parser.feed(html)
    assert not [u for u in parser.urls if re.match(r"^(https?:)?//", u)]
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", html.split("<script>")[1])


def test_the_sms_outbox_page_is_not_part_of_the_deployed_app(stack: LocalStack, api: Client) -> None:
    """Chalice's test client runs app.py as deployed: it has no /local route."""
    assert api.http.get("/local/sms").status_code in (403, 404)
    assert "/local/sms" not in [route for route in stack.app_module.app.routes]


# -- SPEC §3 proof of work: the widget appears only when the server answers 428 ----------------------
def _code_requests(page: Page) -> list[list[Any]]:
    """Each POST /v1/verification-codes the page made: [status, body sent]."""
    seen: list[list] = []
    # post_data is Optional in Playwright's types; these are POSTs with a JSON body
    page.on("response", lambda response: seen.append([response.status, json.loads(response.request.post_data)])  # type: ignore[call-overload]
            if response.url.endswith("/v1/verification-codes") else None)
    return seen


def _solution(encoded: str) -> dict[str, Any]:
    solution = json.loads(base64.b64decode(encoded))
    assert {"algorithm", "challenge", "number", "salt", "signature"} <= set(solution)
    assert solution["algorithm"] == "SHA-256" and isinstance(solution["number"], int)
    return solution


@pytest.mark.parametrize("stack_options", [CHALLENGE_FIRST])
def test_a_428_shows_the_widget_which_solves_and_the_code_arrives(stack: LocalStack, page: Page) -> None:
    sent = _code_requests(page)
    assert page.locator("altcha-widget").count() == 0  # nothing before the server asks
    page.get_by_label("手机号码").fill("13812345678")
    page.get_by_role("button", name="获取验证码").click()
    page.locator("#pow altcha-widget").wait_for(state="visible")
    page.locator("#pow .altcha[data-state='verified']").wait_for(timeout=30_000)
    page.wait_for_function("document.getElementById('get-code').textContent.endsWith('秒后重新获取')")
    code = wait_for(lambda: _code_or_none(stack, "13812345678"), 10, "the code SMS")
    # one request without a solution (428), then the same with the widget's ALTCHA v1 payload (202)
    assert [status for status, _ in sent] == [428, 202]
    assert sent[0][1] == {"phone": "13812345678"}
    assert set(sent[1][1]) == {"phone", "altcha"} and sent[1][1]["phone"] == "13812345678"
    _solution(sent[1][1]["altcha"])
    assert page.locator("#code-error").inner_text() == "" and page.locator("#form-error").inner_text() == ""
    assert "已通过安全验证" in page.locator("#pow").inner_text()
    keep_screenshot_at_360(page, "query-page-challenge-360.png")
    # and the code so obtained is a code like any other
    page.get_by_label("身份证号码后六位").fill("12345X")
    page.get_by_label("验证码").fill(code)
    page.get_by_role("button", name="查询").click()
    page.locator("#done").wait_for(state="visible")


@pytest.mark.parametrize("stack_options", [CHALLENGE_FIRST])
def test_a_second_428_is_solved_with_the_fresh_challenge_it_carries(stack: LocalStack, page: Page) -> None:
    """The first solution is answered 428 (as an expired or spent one is), with a real fresh challenge:
    the widget solves that one, and the server accepts it."""
    sent = _code_requests(page)
    refused: list[str] = []

    def once_more(route: Route) -> None:
        body = json.loads(route.request.post_data)  # type: ignore[arg-type]  # a POST: never None
        if "altcha" in body and not refused:
            refused.append(body["altcha"])
            fresh = route.fetch(url=BASE + "/v1/challenges", method="GET").json()
            route.fulfill(status=428, content_type="application/json; charset=utf-8", body=json.dumps(
                {"error": {"code": "challenge_required", "message": "请先完成人机验证，再获取验证码。"},
                 "challenge": fresh}, ensure_ascii=False))
        else:
            route.continue_()

    page.route("**/v1/verification-codes", once_more)
    page.get_by_label("手机号码").fill("13812345678")
    page.get_by_role("button", name="获取验证码").click()
    page.wait_for_function("document.getElementById('get-code').textContent.endsWith('秒后重新获取')",
                           timeout=45_000)
    wait_for(lambda: _code_or_none(stack, "13812345678"), 10, "the code SMS")
    assert [status for status, _ in sent] == [428, 428, 202]
    first, second = _solution(sent[1][1]["altcha"]), _solution(sent[2][1]["altcha"])
    assert first["challenge"] != second["challenge"]
    assert page.locator("altcha-widget").count() == 1  # one widget, solving one challenge at a time


@pytest.mark.parametrize("stack_options", [CHALLENGE_FIRST])
def test_without_the_vendored_widget_a_428_is_explained_and_nothing_else_breaks(
        stack: LocalStack, page: Page, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app run without `make` (no chalicelib/page/vendor/altcha.js): the page still loads and works."""
    monkeypatch.setattr(pages, "WIDGET_FILE", os.path.join(ARTIFACTS, "no-such-widget.js"))
    pages.index_html.cache_clear()
    try:
        page.goto(BASE + "/")
        page.wait_for_selector(".company")
        assert page.evaluate("customElements.get('altcha-widget') === undefined")
        page.get_by_label("手机号码").fill("13812345678")
        page.get_by_role("button", name="获取验证码").click()
        page.wait_for_function("document.getElementById('code-error').textContent.length > 0")
        assert "安全验证未能完成，请刷新页面后重新获取验证码" in page.locator("#code-error").inner_text()
        assert page.locator("#get-code").is_enabled() and page.locator("#pow").is_hidden()
        assert stack.read_outbox() == []
    finally:
        pages.index_html.cache_clear()


def test_the_widget_is_inlined_in_the_page_as_one_script_element() -> None:
    html = pages.index_html()
    if not os.path.exists(pages.WIDGET_FILE):
        pytest.skip("the widget is not installed (make widget)")
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.DOTALL | re.IGNORECASE)
    assert [attrs for attrs, _ in scripts] == [' id="altcha-widget-script"', ""]
    assert 'customElements.define("altcha-widget"' in scripts[0][1]
    assert pages.WIDGET_PLACEHOLDER not in html

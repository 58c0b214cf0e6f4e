"""Card disputes (SPEC §10.1, 号码核查): "not my card", forwarded to one operator, tracked, answered by SMS.

After a card-query reply (SPEC §9) that named an operator, the citizen asks that operator to check the cards
registered to their ID number there. The dispute runs on the §8 dispute workflow (stepfunctions/dispute.asl.json
on moto's interpreter); operators are the one HTTP operator simulator, answering /{operator}/card-disputes per
their mode. Fixtures: local/fixtures/subscribers.csv and cards.csv.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib import signing
from local.stack import LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS, post_json, wait_for
from tests.helpers import (
    COMPANIES,
    FIXTURE_OPERATORS,
    aws,
    clock_past,
    deadline_of,
    error_code,
    latest_code,
    post_from,
    replies_to,
    request_code,
    submit,
    wait_finished,
)
from tests.privacy import assert_clean
from tests.test_cards import (
    SPEC_EXAMPLE,
    SUBSCRIBERS,
    card_body,
    run_card_query,
    start_card_query,
    submit_card,
    wait_settled_but,
)

if TYPE_CHECKING:
    from chalice.test import Client, HTTPResponse

    from chalicelib.storage.models import Dispute

ZHANG = SUBSCRIBERS["13812345678"]  # 44010619850212345X: cmcc-gd 2 cards, cucc-bj 1
ZHANG_SECOND_PHONE = SUBSCRIBERS["13012340000"]  # the same name and ID number, another phone
LINA = SUBSCRIBERS["13900001111"]  # 310104199005010203: cmcc-sh 1, ctcc-sh 2, mvno-xiaomi 1
AYGUL = SUBSCRIBERS["18612345678"]  # 650102199203110358: cmcc-xj 1, cucc-xj 1, mvno-woniu 2, mvno-jd 1

# chalicelib/data/operators.json: name and hotline (a reseller has none: SPEC says 该企业客服 instead)
NAMES = {"cmcc-gd": "中国移动广东公司", "cucc-bj": "中国联通北京分公司", "cmcc-sh": "中国移动上海公司",
         "ctcc-sh": "中国电信上海分公司", "mvno-xiaomi": "小米移动", "cmcc-xj": "中国移动新疆公司"}
HOTLINES = {"cmcc-gd": "10086", "cucc-bj": "10010", "cmcc-sh": "10086", "ctcc-sh": "10000", "mvno-xiaomi": "该企业客服"}


def options(modes: dict[str, str] | None = None, **changes: Any) -> StackOptions:
    """The operators the fixtures speak of (tests/test_cards.py) answer card lookups and card disputes in their
    200 unless told otherwise (companies too): a card query replies as soon as they answered. The deadline is
    never the reason a test passes."""
    chosen = {op: "immediate" for op in FIXTURE_OPERATORS} | (modes or {})
    return StackOptions(**{**BASE_OPTIONS.__dict__, "deadline_seconds": 120, "operators": FIXTURE_OPERATORS,
                           "operator_modes": ",".join(f"{op}={mode}" for op, mode in chosen.items()),
                           "partner_modes": ",".join(f"{c}=immediate" for c in COMPANIES), **changes})


IMMEDIATE = options()
CALLBACK_GD = options({"cmcc-gd": "callback"})  # the fixture file's own mode for cmcc-gd; cucc-bj: immediate


@pytest.fixture
def stack_options() -> StackOptions:
    """Unless a test parametrizes its own."""
    return IMMEDIATE


pytestmark = pytest.mark.usefixtures("codes_without_resend_gap")  # tests/conftest.py


# -- helpers ---------------------------------------------------------------------------------------
def card_dispute(api: Client, stack: LocalStack, row: dict[str, str], operator: str, *, phone: str | None = None,
                 code: str | None = None) -> HTTPResponse:
    """POST /v1/card-disputes for `row`'s name and ID number, from `phone` (row's own by default), with a
    fresh code sent to that phone unless `code` is given."""
    phone = phone or row["phone"]
    if code is None:
        assert request_code(api, phone).status_code == 202
        code = latest_code(stack, phone)
    body = {"name": row["name"], "id_number": row["id_number"], "phone": phone, "code": code, "operator": operator}
    return post_json(api, "/v1/card-disputes", body)


def accepted(response: HTTPResponse, operator: str) -> str:
    assert response.status_code == 202, response.body
    body = response.json_body
    dispute_id = str(body["dispute_id"])
    assert body == {"dispute_id": dispute_id, "status": "submitted", "operator": operator, "respond_within_days": 15}
    return dispute_id


def refused(response: HTTPResponse, status: int, code: str) -> None:
    assert response.status_code == status, response.body
    assert error_code(response) == code
    assert set(json.loads(response.body)) == {"error"}


def from_now_on(stack: LocalStack, operator: str, mode: str) -> None:
    """The operator answered the card query; it treats what comes next (the dispute) in `mode`."""
    stack.operators.set_mode(operator, mode)


def record(dispute_id: str) -> Dispute:
    from chalicelib.storage.models import Dispute

    return Dispute.get(dispute_id, consistent_read=True)


def wait_dispute_closed(dispute_id: str, timeout: float = 60) -> Dispute:
    """The outcome SMS is committed: resolved or expired, out of the deadline index."""

    def closed() -> Dispute | None:
        item = record(dispute_id)
        return item if item.status in ("resolved", "expired") and item.deadline_slot is None else None

    return wait_for(closed, timeout, f"dispute {dispute_id}'s outcome SMS")  # type: ignore[no-any-return]


def status(api: Client, dispute_id: str) -> dict[str, Any]:
    response = api.http.get(f"/v1/disputes/{dispute_id}")
    assert response.status_code == 200, response.body
    return response.json_body  # type: ignore[no-any-return]


def sms_about(stack: LocalStack, dispute_id: str) -> list[tuple[str, str]]:
    """(phone, message) of every SMS naming the dispute, whichever phone it went to."""
    return [(m["phone"], m["message"]) for m in stack.read_outbox() if dispute_id in m["message"]]


def dispute_sms(stack: LocalStack) -> list[tuple[str, str]]:
    """Every SMS of any dispute (all of them say 核查申请)."""
    return sms_about(stack, "核查申请")


def submitted_text(operator: str, dispute_id: str) -> str:
    return (f"【一证通查】您对{NAMES[operator]}名下号码的核查申请已提交（编号{dispute_id}），"
            "企业将在15天内处理，结果将以短信告知。")


def suspended_text(operator: str, dispute_id: str, cards: int) -> str:
    return (f"【一证通查】{NAMES[operator]}已处理您的核查申请（编号{dispute_id}）：已对{cards}张未经您本人核验的"
            "号码停机，如需恢复请本人持证件到营业厅办理。")


def call_back(api: Client, stack: LocalStack, operator: str, body: Any, *, key: str | None = None,
              timestamp: float | None = None, headers: dict[str, str] | None = None,
              path: str | None = None) -> HTTPResponse:
    """A signed operator callback to POST /v1/operators/{operator}/disputes (or `path`)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    signed = signing.signed_headers(key or stack.secrets[f"yztc/operators/{operator}"], raw, timestamp)
    return api.http.post(path or f"/v1/operators/{operator}/disputes", headers={**signed, **(headers or {})},
                         body=raw)


# -- the whole loop ------------------------------------------------------------------------------
@pytest.mark.parametrize("stack_options", [CALLBACK_GD])
def test_card_disputes_at_a_callback_operator_and_an_immediate_one_are_answered_by_sms_as_spec_says(
        stack: LocalStack, api: Client) -> None:
    """GIVEN 张伟's card-query reply named 中国移动广东公司 (2 cards) and 中国联通北京分公司 (1 card),
    WHEN he disputes both with fresh codes, THEN each is accepted 202 naming the operator, forwarded
    (cmcc-gd answers by signed callback, cucc-bj in its 200), and his phone — the requesting one, no other
    phone of his ID — gets the submitted SMS and one suspended SMS per dispute, word for word as SPEC §10.1
    (the second typed with +86, dashes and a lower-case x); GET /v1/disputes/{id} shows the operator, never
    the outcome; once answered, the same operator may be asked again."""
    run_card_query(api, stack, card_body(ZHANG))
    assert replies_to(stack, ZHANG["phone"]) == [SPEC_EXAMPLE]
    gd = accepted(card_dispute(api, stack, ZHANG, "cmcc-gd"), "cmcc-gd")
    shown = status(api, gd)
    assert set(shown) == {"dispute_id", "operator", "status", "created_at"}
    assert shown["operator"] == "cmcc-gd" and shown["status"] in {"submitted", "forwarded", "resolved"}
    # Typed as people type them: +86, spaces and dashes, a lower-case x (SPEC §3, §9: normalised).
    assert request_code(api, ZHANG["phone"]).status_code == 202
    bj = accepted(post_json(api, "/v1/card-disputes", {
        "name": ZHANG["name"], "id_number": ZHANG["id_number"].lower(), "phone": "+86 138-1234-5678",
        "code": latest_code(stack, ZHANG["phone"]), "operator": "cucc-bj"}), "cucc-bj")
    assert gd != bj and re.fullmatch(r"[A-Z2-7]{16}", gd) and re.fullmatch(r"[A-Z2-7]{16}", bj)
    for dispute_id in (gd, bj):
        wait_dispute_closed(dispute_id)
    phone = ZHANG["phone"]
    assert sms_about(stack, gd) == [(phone, submitted_text("cmcc-gd", gd)), (phone, suspended_text("cmcc-gd", gd, 2))]
    assert sms_about(stack, bj) == [(phone, submitted_text("cucc-bj", bj)), (phone, suspended_text("cucc-bj", bj, 1))]
    assert replies_to(stack, ZHANG_SECOND_PHONE["phone"]) == []
    assert sorted(stack.operators.disputes, key=lambda d: d["operator"]) == [
        {"operator": "cmcc-gd", "dispute_id": gd}, {"operator": "cucc-bj", "dispute_id": bj}]
    assert stack.operators.callbacks["cmcc-gd"] == [200, 200]  # its lookup's callback, then its dispute's
    for operator, dispute_id in (("cmcc-gd", gd), ("cucc-bj", bj)):
        shown = status(api, dispute_id)
        assert shown == {"dispute_id": dispute_id, "operator": operator, "status": "resolved",
                         "created_at": shown["created_at"]}
        assert status(api, dispute_id.lower()) == shown  # an id typed in lower case is the same id
        item = record(dispute_id)
        assert item.kind == "cards" and item.company == operator
        # Accepted by the operator (202, 200): name and ID number gone; told by SMS: the phone gone.
        assert item.name_sealed is None and item.id_sealed is None and item.phone_sealed is None
    # Answered, the dispute no longer holds its operator: the phone may ask cmcc-gd again (its third today).
    again = accepted(card_dispute(api, stack, ZHANG, "cmcc-gd"), "cmcc-gd")
    wait_dispute_closed(again)
    assert sms_about(stack, again)[-1] == (phone, suspended_text("cmcc-gd", again, 2))


# -- the request's fields --------------------------------------------------------------------------
VALID = {"name": ZHANG["name"], "id_number": ZHANG["id_number"], "phone": ZHANG["phone"], "code": "123456",
         "operator": "cmcc-gd"}


def _without(field: str) -> dict[str, Any]:
    return {k: v for k, v in VALID.items() if k != field}


def _case(value: Any) -> str:
    """A case's id: what differs from a valid body."""
    if not isinstance(value, dict):
        return value if isinstance(value, str) else "not an object"
    return ",".join(f"{k}={value[k]}" if k in value else f"no-{k}" for k in VALID if value.get(k) != VALID[k])


@pytest.mark.routes_only
@pytest.mark.parametrize(("body", "code"), [
    ("not json", "invalid_request"),
    ([VALID], "invalid_request"),
    (_without("name"), "invalid_request"),
    (_without("id_number"), "invalid_request"),
    (_without("phone"), "invalid_request"),
    (_without("code"), "invalid_request"),
    (_without("operator"), "invalid_request"),
    ({**VALID, "name": "张"}, "invalid_name"),
    ({**VALID, "name": "张伟3"}, "invalid_name"),
    ({**VALID, "id_number": "440106198502123450"}, "invalid_id_number"),  # wrong check character
    ({**VALID, "id_number": "440106198502303457"}, "invalid_id_number"),  # 30 February
    ({**VALID, "id_number": "12345X"}, "invalid_id_number"),  # the last six are not an ID number
    ({**VALID, "phone": "12345"}, "invalid_phone"),
    ({**VALID, "code": "12345"}, "invalid_code_format"),
    ({**VALID, "code": "abcdef"}, "invalid_code_format"),
    ({**VALID, "operator": "tencent"}, "invalid_operator"),  # a company, not an operator
    ({**VALID, "operator": "cmcc-xx"}, "invalid_operator"),
    ({**VALID, "operator": ["cmcc-gd"]}, "invalid_operator"),
], ids=lambda value: _case(value))
def test_invalid_card_dispute_requests_are_400_with_their_code(stack: LocalStack, api: Client, body: Any,
                                                               code: str) -> None:
    response = post_json(api, "/v1/card-disputes", body)
    refused(response, 400, code)
    assert dispute_sms(stack) == []


def test_a_wrong_or_used_code_is_403_before_anything_about_the_id_number(stack: LocalStack, api: Client) -> None:
    """GIVEN no card query was replied to this phone (so there is nothing to dispute), WHEN the code is wrong
    or already used (the card query's own code), THEN 403 wrong_code — the answer says nothing about which
    ID numbers this phone was told about."""
    assert request_code(api, ZHANG["phone"]).status_code == 202
    code = latest_code(stack, ZHANG["phone"])
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    refused(card_dispute(api, stack, ZHANG, "cmcc-gd", code=wrong), 403, "wrong_code")
    assert post_json(api, "/v1/card-queries", {**card_body(ZHANG), "code": code}).status_code == 202
    refused(card_dispute(api, stack, ZHANG, "cmcc-gd", code=code), 403, "wrong_code")
    refused(card_dispute(api, stack, ZHANG, "cmcc-gd"), 409, "nothing_to_dispute")  # a good code: nothing yet


def test_a_nothing_to_dispute_answer_uses_the_code_and_the_name_must_be_the_one_the_carrier_matched(
        stack: LocalStack, api: Client) -> None:
    """GIVEN 张伟's card query replied to his phone, WHEN one code is tried with another ID number (409), THEN
    that code is used: his own ID number with it is 403 (whoever holds the phone gets one guess per code, not
    a search of ID numbers); AND his ID number under another name is 409: the dispute names the holder as the
    carrier matched him."""
    run_card_query(api, stack, card_body(ZHANG))
    assert request_code(api, ZHANG["phone"]).status_code == 202
    code = latest_code(stack, ZHANG["phone"])
    refused(card_dispute(api, stack, {**ZHANG, "id_number": LINA["id_number"]}, "cmcc-gd", code=code), 409,
            "nothing_to_dispute")
    refused(card_dispute(api, stack, ZHANG, "cmcc-gd", code=code), 403, "wrong_code")
    refused(card_dispute(api, stack, {**ZHANG, "name": "王五"}, "cmcc-gd"), 409, "nothing_to_dispute")
    accepted(card_dispute(api, stack, ZHANG, "cmcc-gd"), "cmcc-gd")


def test_only_a_reply_to_this_phone_naming_cards_at_that_operator_can_be_disputed_and_sms_go_to_that_phone(
        stack: LocalStack, api: Client) -> None:
    """GIVEN 张伟's card query was replied to 13812345678 (cmcc-gd 2, cucc-bj 1), THEN with fresh codes:
    his other phone of the same ID may not dispute (that reply was not to it), nor may 13812345678 dispute
    an operator the reply named with 0 cards, nor another ID number (409 nothing_to_dispute, no SMS);
    WHEN the other phone's own card query is replied, THEN both phones may dispute cmcc-gd at once (the
    open-dispute limit is per phone), and each dispute's SMS go to the phone that asked; once the reply is
    older than 7 days, nothing is left to dispute."""
    phone, second = ZHANG["phone"], ZHANG_SECOND_PHONE["phone"]
    run_card_query(api, stack, card_body(ZHANG))
    refused(card_dispute(api, stack, ZHANG, "cmcc-gd", phone=second), 409, "nothing_to_dispute")
    refused(card_dispute(api, stack, ZHANG, "ctcc-sh"), 409, "nothing_to_dispute")  # 0 cards there
    # 李娜 has a card at mvno-xiaomi, but no card query for her ID number was replied to this phone.
    refused(card_dispute(api, stack, LINA, "mvno-xiaomi", phone=phone), 409, "nothing_to_dispute")
    # A stranger's phone asked with 李娜's name and ID number: the carrier said mismatch, nothing was named.
    stranger = SUBSCRIBERS["13700002222"]["phone"]
    response = submit_card(api, stack, card_body(LINA, phone=stranger))
    assert response.status_code == 202 and stack.pump_once() == 1
    assert wait_finished(stack, response.json_body["query_id"])["status"] == "SUCCEEDED"
    assert replies_to(stack, stranger) == [
        "【一证通查】您的手机号137****2222查询未成功：手机号码与姓名、身份证号码不匹配，请核对后于24小时后重新查询。"]
    refused(card_dispute(api, stack, LINA, "mvno-xiaomi", phone=stranger), 409, "nothing_to_dispute")
    assert dispute_sms(stack) == []
    run_card_query(api, stack, card_body(ZHANG, phone=second))
    assert replies_to(stack, second) == [SPEC_EXAMPLE]
    from_now_on(stack, "cmcc-gd", "silent")  # both disputes stay open
    first = accepted(card_dispute(api, stack, ZHANG, "cmcc-gd"), "cmcc-gd")
    other = accepted(card_dispute(api, stack, ZHANG, "cmcc-gd", phone=second), "cmcc-gd")
    for dispute_id in (first, other):
        wait_for(lambda d=dispute_id: status(api, d)["status"] == "forwarded", 10,  # type: ignore[misc]
                 "cmcc-gd asked (its 202 recorded)")
    assert dispute_sms(stack) == [(phone, submitted_text("cmcc-gd", first)), (second, submitted_text("cmcc-gd", other))]
    for dispute_id, to in ((first, phone), (other, second)):
        body = {"dispute_id": dispute_id, "outcome": "suspended", "cards": 2}
        assert call_back(api, stack, "cmcc-gd", body).status_code == 200
        wait_dispute_closed(dispute_id)
        assert sms_about(stack, dispute_id) == [(to, submitted_text("cmcc-gd", dispute_id)),
                                                (to, suspended_text("cmcc-gd", dispute_id, 2))]
    # Eight days later the replies are older than 7 days (DynamoDB's TTL deletes lazily): nothing to dispute.
    from chalicelib.storage.models import ReportedAccounts

    facts = [f for f in ReportedAccounts.scan() if f.company == "cucc-bj"]
    assert len(facts) == 2  # one per phone the reply went to
    for fact in facts:
        fact.update(actions=[ReportedAccounts.replied_at.add(-8 * 86400)])
    refused(card_dispute(api, stack, ZHANG, "cucc-bj"), 409, "nothing_to_dispute")


@pytest.mark.parametrize("stack_options", [options({"cmcc-gd": "silent"}, deadline_seconds=600)])
def test_an_operator_that_had_not_answered_the_card_query_by_its_deadline_cannot_be_disputed(
        stack: LocalStack, api: Client) -> None:
    """GIVEN cmcc-gd (where 张伟 has 2 cards) never answered his card query, so the reply at the deadline
    named only 中国联通北京分公司 and one operator 暂未返回, THEN cmcc-gd is nothing to dispute; cucc-bj is."""
    query_id = start_card_query(api, stack, card_body(ZHANG))
    wait_settled_but(query_id, {"cmcc-gd"})
    with clock_past(deadline_of(stack, query_id)):  # then the clock passes the deadline rather than the test
        wait_finished(stack, query_id)
    assert replies_to(stack, ZHANG["phone"]) == [
        "【一证通查】您名下在网移动电话卡共1张：中国联通北京分公司1张。另有1家企业暂未返回。"
        "如有异议，请联系相关企业核实、关停或销户。"]
    refused(card_dispute(api, stack, ZHANG, "cmcc-gd"), 409, "nothing_to_dispute")
    accepted(card_dispute(api, stack, ZHANG, "cucc-bj"), "cucc-bj")


# -- limits ----------------------------------------------------------------------------------------
def test_an_open_dispute_and_the_fourth_dispute_of_the_day_are_429_dispute_limit(
        stack: LocalStack, api: Client) -> None:
    """GIVEN 阿依古丽's card-query reply named four operators, WHEN she disputes cmcc-xj (which does not
    answer yet) and then cmcc-xj again, THEN 429 dispute_limit with Retry-After; WHEN she disputes cucc-xj
    (flaky: answered through the retry queue) and mvno-woniu (three today), THEN a fourth, mvno-jd, is 429
    dispute_limit until the day ends, and so is a new one at cucc-xj once its dispute is answered."""
    run_card_query(api, stack, card_body(AYGUL))
    from_now_on(stack, "cmcc-xj", "silent")
    accepted(card_dispute(api, stack, AYGUL, "cmcc-xj"), "cmcc-xj")
    again = card_dispute(api, stack, AYGUL, "cmcc-xj")
    refused(again, 429, "dispute_limit")
    assert 0 < int(again.headers["Retry-After"]) <= BASE_OPTIONS.dispute_deadline_seconds + 3600
    from_now_on(stack, "cucc-xj", "flaky")  # two 503s, then the answer: through the retry queue
    ids = {op: accepted(card_dispute(api, stack, AYGUL, op), op) for op in ("cucc-xj", "mvno-woniu")}
    fourth = card_dispute(api, stack, AYGUL, "mvno-jd")
    refused(fourth, 429, "dispute_limit")
    assert 0 < int(fourth.headers["Retry-After"]) <= 86400
    for dispute_id in ids.values():
        wait_dispute_closed(dispute_id)
    asked = [d["operator"] for d in stack.operators.disputes]
    assert sorted(asked) == ["cmcc-xj", "cucc-xj", "cucc-xj", "cucc-xj", "mvno-woniu"]
    assert sms_about(stack, ids["cucc-xj"])[-1] == (AYGUL["phone"], (
        f"【一证通查】中国联通新疆分公司已处理您的核查申请（编号{ids['cucc-xj']}）：已对1张未经您本人核验的号码停机，"
        "如需恢复请本人持证件到营业厅办理。"))
    assert sms_about(stack, ids["mvno-woniu"])[-1][1] == (
        f"【一证通查】蜗牛移动已处理您的核查申请（编号{ids['mvno-woniu']}）：已对2张未经您本人核验的号码停机，"
        "如需恢复请本人持证件到营业厅办理。")
    # Closed disputes still count for the day; the open one still holds cmcc-xj.
    refused(card_dispute(api, stack, AYGUL, "cucc-xj"), 429, "dispute_limit")
    from chalicelib.storage.models import Dispute

    # Every operator accepted its dispute (cucc-xj at its third try): name and ID number gone from all three.
    items = list(Dispute.scan())
    assert len(items) == 3 and all(i.name_sealed is None and i.id_sealed is None for i in items)


def test_twenty_concurrent_card_disputes_for_one_operator_accept_exactly_one(stack: LocalStack, api: Client) -> None:
    """GIVEN 阿依古丽's reply named cmcc-xj, and her phone's three live codes (SPEC §3: at most 3 per
    number), WHEN 20 clients (20 source addresses, so no client reaches its wrong-try limit) submit the
    same dispute at once, the codes dealt round-robin, THEN exactly one is accepted; the requests with a
    code nobody used are refused by the open-dispute limit (429), those with the winner's code by it or as
    a used code (403); one dispute, one submitted SMS."""
    run_card_query(api, stack, card_body(AYGUL))
    from_now_on(stack, "cmcc-xj", "silent")
    codes = []
    for _ in range(3):
        assert request_code(api, AYGUL["phone"]).status_code == 202
        codes.append(latest_code(stack, AYGUL["phone"]))
    assert len(set(codes)) == 3
    body = {"name": AYGUL["name"], "id_number": AYGUL["id_number"], "phone": AYGUL["phone"], "operator": "cmcc-xj"}

    def post(n: int) -> tuple[str, int, dict[str, str], Any]:
        code = codes[n % 3]
        return (code, *post_from(stack, f"127.0.0.{n + 2}", "/v1/card-disputes", {**body, "code": code}))

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(post, range(20)))
    winners = [a for a in answers if a[1] == 202]
    assert len(winners) == 1, [(a[1], a[3]) for a in answers]
    winning_code, _, _, won = winners[0]
    for code, answer_status, headers, answer in answers:
        if answer_status == 202:
            continue
        if code != winning_code:
            assert (answer_status, answer["error"]["code"]) == (429, "dispute_limit"), answer
            assert int(headers["Retry-After"]) > 0
        else:
            assert (answer_status, answer["error"]["code"]) in {(429, "dispute_limit"), (403, "wrong_code")}, answer
    dispute_id = won["dispute_id"]
    wait_for(lambda: status(api, dispute_id)["status"] == "forwarded", 10, "cmcc-xj asked (its 202 recorded)")
    assert stack.operators.disputes == [{"operator": "cmcc-xj", "dispute_id": dispute_id}]
    assert dispute_sms(stack) == [(AYGUL["phone"], submitted_text("cmcc-xj", dispute_id))]
    from chalicelib.storage.models import Dispute

    assert [d.dispute_id for d in Dispute.scan()] == [dispute_id]


def test_account_disputes_and_card_disputes_are_counted_apart_and_answered_on_their_own_routes(
        stack: LocalStack, api: Client) -> None:
    """GIVEN 张伟's phone had its internet-account query and its card query replied the same day, WHEN it
    makes the day's three account disputes (SPEC §8), THEN its card dispute is still accepted (SPEC §10.1
    counts card disputes); GET shows "company" for the one and "operator" for the other, and neither kind's
    id is found on the other kind's callback route."""
    phone = ZHANG["phone"]
    query = submit(api, stack, phone, ZHANG["id_number"][-6:])
    assert query.status_code == 202 and stack.pump_once() == 1
    assert wait_finished(stack, query.json_body["query_id"])["status"] == "SUCCEEDED"
    account_disputes = []
    for company in ("tencent", "alipay", "douyin"):
        assert request_code(api, phone).status_code == 202
        response = post_json(api, "/v1/disputes", {"phone": phone, "code": latest_code(stack, phone),
                                                   "company": company})
        assert response.status_code == 202, response.body
        account_disputes.append(response.json_body["dispute_id"])
    run_card_query(api, stack, card_body(ZHANG))
    card = accepted(card_dispute(api, stack, ZHANG, "cmcc-gd"), "cmcc-gd")
    assert set(status(api, account_disputes[0])) == {"dispute_id", "company", "status", "created_at"}
    assert status(api, account_disputes[0])["company"] == "tencent"
    assert status(api, card)["operator"] == "cmcc-gd" and "company" not in status(api, card)
    on_operators = call_back(api, stack, "cmcc-gd", {"dispute_id": account_disputes[0], "outcome": "suspended",
                                                     "cards": 1})
    assert on_operators.status_code == 404 and error_code(on_operators) == "not_found"
    on_partners = call_back(api, stack, "tencent", {"dispute_id": card, "outcome": "unbound", "accounts": 1},
                            key=stack.secrets["yztc/partners/tencent"], path="/v1/partners/tencent/disputes")
    assert on_partners.status_code == 404 and error_code(on_partners) == "not_found"
    wait_dispute_closed(card)
    assert sms_about(stack, card) == [(phone, submitted_text("cmcc-gd", card)),
                                      (phone, suspended_text("cmcc-gd", card, 2))]


# -- operator callbacks ----------------------------------------------------------------------------
@pytest.fixture
def waiting(stack: LocalStack, api: Client) -> dict[str, str]:
    """张伟's disputes at cmcc-gd and cucc-bj, both accepted by the operator (202) and waiting for the
    callbacks the test makes."""
    run_card_query(api, stack, card_body(ZHANG))
    from_now_on(stack, "cmcc-gd", "silent")
    from_now_on(stack, "cucc-bj", "silent")
    disputes = {op: accepted(card_dispute(api, stack, ZHANG, op), op) for op in ("cmcc-gd", "cucc-bj")}
    for dispute_id in disputes.values():
        wait_for(lambda d=dispute_id: status(api, d)["status"] == "forwarded", 10,  # type: ignore[misc]
                 "the operator asked (its 202 recorded)")
    return disputes


def test_forged_stale_and_misaddressed_operator_callbacks_record_nothing(
        stack: LocalStack, api: Client, waiting: dict[str, str]) -> None:
    """GIVEN a dispute waiting at cmcc-gd, WHEN callbacks come signed with another operator's or a company's
    key, unsigned, stale, from the future, with a garbled signature or a changed body, THEN 401 bad_signature;
    WHEN for an unknown dispute, another operator's dispute, an unknown operator or on the companies' route,
    THEN 404; none of them is recorded: the real answer afterwards is 200 and its SMS the only outcome."""
    gd, bj = waiting["cmcc-gd"], waiting["cucc-bj"]
    body = {"dispute_id": gd, "outcome": "suspended", "cards": 2}
    raw = json.dumps(body).encode()
    forged = [
        call_back(api, stack, "cmcc-gd", body, key=stack.secrets["yztc/operators/cucc-bj"]),
        call_back(api, stack, "cmcc-gd", body, key=stack.secrets["yztc/partners/tencent"]),
        api.http.post("/v1/operators/cmcc-gd/disputes", headers={"Content-Type": "application/json"}, body=raw),
        call_back(api, stack, "cmcc-gd", body, timestamp=time.time() - 301),
        call_back(api, stack, "cmcc-gd", body, timestamp=time.time() + 360),
        call_back(api, stack, "cmcc-gd", body, headers={"X-Signature": "00" * 32}),
        api.http.post("/v1/operators/cmcc-gd/disputes", body=raw.replace(b"2}", b"9}"),
                      headers=signing.signed_headers(stack.secrets["yztc/operators/cmcc-gd"], raw)),
    ]
    for n, response in enumerate(forged):
        assert response.status_code == 401, (n, response.body)
        assert error_code(response) == "bad_signature", n
    misaddressed = [
        call_back(api, stack, "cmcc-gd", {**body, "dispute_id": "A" * 16}),
        call_back(api, stack, "cmcc-gd", {**body, "dispute_id": "x"}),
        call_back(api, stack, "cucc-bj", body),  # cmcc-gd's dispute, answered by cucc-bj
        call_back(api, stack, "cmcc-gd", {**body, "dispute_id": bj}),  # cucc-bj's, answered by cmcc-gd
        call_back(api, stack, "cmcc-gd", {"dispute_id": gd, "outcome": "unbound", "accounts": 2},
                  key=stack.secrets["yztc/partners/tencent"],
                  path="/v1/partners/tencent/disputes"),  # a card dispute is no company's dispute
        api.http.post("/v1/operators/cmcc-xx/disputes", headers={"X-Timestamp": "1"}, body=b"{}"),
    ]
    for n, response in enumerate(misaddressed):
        assert response.status_code == 404, (n, response.body)
        assert error_code(response) == "not_found", n
    assert status(api, gd)["status"] == "forwarded" and status(api, bj)["status"] == "forwarded"
    assert record(gd).outcome is None and record(bj).outcome is None
    answer = {"dispute_id": gd, "outcome": "owner_confirmed", "cards": 0}
    first = call_back(api, stack, "cmcc-gd", answer)
    assert first.status_code == 200 and first.json_body == {"status": "recorded"}
    wait_dispute_closed(gd)
    assert [m for _, m in sms_about(stack, gd)] == [
        submitted_text("cmcc-gd", gd),
        f"【一证通查】中国移动广东公司已处理您的核查申请（编号{gd}）：经核实，相关号码均为您本人办理。如有疑问请致电10086。"]
    rejected = call_back(api, stack, "cucc-bj", {"dispute_id": bj, "outcome": "rejected", "cards": 0})
    assert rejected.status_code == 200
    wait_dispute_closed(bj)
    assert [m for _, m in sms_about(stack, bj)] == [
        submitted_text("cucc-bj", bj), f"【一证通查】中国联通北京分公司未能受理您的核查申请（编号{bj}），请致电10010。"]


def test_duplicate_operator_callback_is_200_and_a_different_answer_409_with_one_outcome_sms(
        stack: LocalStack, api: Client, waiting: dict[str, str]) -> None:
    """GIVEN disputes waiting at cmcc-gd and cucc-bj (both accepted with a 202), WHEN cmcc-gd's answer
    comes several times at once, some copies saying another count, THEN one answer is recorded (its copies
    200, the others 409 conflict), later duplicates stay 200 and one outcome SMS goes out; cucc-bj's
    no_card answer gets its own SMS."""
    gd, bj = waiting["cmcc-gd"], waiting["cucc-bj"]
    item = record(gd)  # accepted by the operator (its 202): name and ID number gone, the phone kept for the SMS
    assert item.name_sealed is None and item.id_sealed is None and item.phone_sealed is not None
    # Operators retry, and a confused one sends two answers: 8 signed callbacks at once over HTTP, half
    # saying 2 cards and half 1. One answer wins: its copies are 200, the other's 409, one outcome SMS.
    answers = {2: json.dumps({"dispute_id": gd, "outcome": "suspended", "cards": 2}).encode(),
               1: json.dumps({"dispute_id": gd, "outcome": "suspended", "cards": 1}).encode()}
    secret = stack.secrets["yztc/operators/cmcc-gd"]

    def post(cards: int) -> tuple[int, int, Any]:
        raw = answers[cards]
        status_code, _, answer = post_from(stack, "127.0.0.1", "/v1/operators/cmcc-gd/disputes", raw,
                                           signing.signed_headers(secret, raw))
        return cards, status_code, answer

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(post, [2, 1] * 4))
    winners = {cards for cards, code, _ in results if code == 200}
    assert len(winners) == 1, results
    (won,) = winners
    for cards, code, answer in results:
        assert (code, answer) == ((200, {"status": "recorded"}) if cards == won else
                                  (409, {"error": {"code": "conflict", "message": answer["error"]["message"]}}))
    body = json.loads(answers[won])
    assert call_back(api, stack, "cmcc-gd", body).status_code == 200  # an exact duplicate, later
    conflicting = call_back(api, stack, "cmcc-gd", {**body, "outcome": "no_card", "cards": 0})
    assert conflicting.status_code == 409 and error_code(conflicting) == "conflict"
    wait_dispute_closed(gd)
    assert call_back(api, stack, "cmcc-gd", body).status_code == 200  # a late duplicate: still recorded
    assert [m for _, m in sms_about(stack, gd)] == [submitted_text("cmcc-gd", gd),
                                                   suspended_text("cmcc-gd", gd, won)]
    assert status(api, gd)["status"] == "resolved"
    assert call_back(api, stack, "cucc-bj", {"dispute_id": bj, "outcome": "no_card", "cards": 0}).status_code == 200
    wait_dispute_closed(bj)
    assert [m for _, m in sms_about(stack, bj)] == [
        submitted_text("cucc-bj", bj),
        f"【一证通查】中国联通北京分公司已处理您的核查申请（编号{bj}）：未发现登记在您名下的号码。"]


HOSTILE: list[Any] = [
    {"dispute_id": "D", "outcome": "suspended", "cards": -1},
    {"dispute_id": "D", "outcome": "suspended", "cards": 101},
    {"dispute_id": "D", "outcome": "suspended", "cards": True},
    {"dispute_id": "D", "outcome": "suspended", "cards": "3"},
    {"dispute_id": "D", "outcome": "suspended", "cards": 1.5},
    {"dispute_id": "D", "outcome": "suspended", "cards": 10 ** 30},
    {"dispute_id": "D", "outcome": "suspended"},
    {"dispute_id": "D", "outcome": "unbound", "cards": 1},  # an internet-account outcome
    {"dispute_id": "D", "outcome": "expired", "cards": 0},
    {"dispute_id": "D", "outcome": "【一证通查】请登录 http://evil.example", "cards": 1},
    {"dispute_id": "D", "outcome": 1, "cards": 1},
    {"dispute_id": 5, "outcome": "suspended", "cards": 1},
    {"outcome": "suspended", "cards": 1},
    [1, 2],
    "suspended",
    None,
    b"not json",
    b'{"dispute_id": "D", "outcome": "suspended\xff", "cards": 1}',  # not UTF-8
    b"[" * 5000 + b"]" * 5000,  # nested past any parser's patience
]


def test_hostile_operator_callbacks_are_refused_and_nothing_reaches_an_sms(
        stack: LocalStack, api: Client, waiting: dict[str, str]) -> None:
    """GIVEN a dispute waiting at cmcc-gd, WHEN cmcc-gd's correctly signed callbacks carry cards out of
    0..100 or not an integer, an unknown outcome, no dispute id, a body that is not an object, not JSON or
    not UTF-8, nested thousands deep, THEN 400 invalid_request; a body over 64 KiB is 413; none is recorded,
    no SMS goes out, and the real answer afterwards (20 KiB with an extra key) is 200 with its one outcome SMS."""
    gd = waiting["cmcc-gd"]
    answers = []
    for body in HOSTILE:
        if isinstance(body, dict) and body.get("dispute_id") == "D":
            body = {**body, "dispute_id": gd}
        elif isinstance(body, bytes):
            body = body.replace(b'"D"', json.dumps(gd).encode())
        response = call_back(api, stack, "cmcc-gd", body)
        answers.append((repr(body)[:60], response.status_code, error_code(response) if response.body else None))
    assert answers == [(b, 400, "invalid_request") for b, _, _ in answers]
    huge = call_back(api, stack, "cmcc-gd", {"dispute_id": gd, "outcome": "suspended", "cards": 2,
                                             "padding": "x" * 70_000})
    assert huge.status_code == 413 and error_code(huge) == "payload_too_large"
    assert status(api, gd)["status"] == "forwarded"
    assert record(gd).outcome is None
    assert [m for _, m in dispute_sms(stack)] == [submitted_text("cmcc-gd", gd),
                                                          submitted_text("cucc-bj", waiting["cucc-bj"])]
    # The real answer, padded past the citizens' 16 KiB (operator routes take 64 KiB; unknown keys are ignored).
    real = call_back(api, stack, "cmcc-gd", {"dispute_id": gd, "outcome": "suspended", "cards": 2,
                                             "note": "x" * 20_000})
    assert real.status_code == 200, real.body
    wait_dispute_closed(gd)
    assert [m for _, m in sms_about(stack, gd)] == [submitted_text("cmcc-gd", gd), suspended_text("cmcc-gd", gd, 2)]


# -- an operator that never answers, and one without a hotline --------------------------------------
@pytest.mark.parametrize("stack_options", [options(dispute_deadline_seconds=6)])
def test_silent_operators_get_the_expired_sms_at_the_deadline_and_a_reseller_without_hotline_says_so(
        stack: LocalStack, api: Client) -> None:
    """GIVEN 李娜's reply named 中国移动上海公司, 中国电信上海分公司 and 小米移动 (a reseller with no hotline
    in the registry), WHEN cmcc-sh and mvno-xiaomi accept her disputes and never answer, and ctcc-sh refuses
    its dispute, THEN ctcc-sh's rejected SMS comes at once and each silent one's expired SMS at the deadline,
    word for word, with 该企业客服 where the registry has no hotline; a late answer changes nothing."""
    run_card_query(api, stack, card_body(LINA))
    from_now_on(stack, "cmcc-sh", "silent")
    from_now_on(stack, "mvno-xiaomi", "silent")
    from_now_on(stack, "ctcc-sh", "reject")
    ids = {op: accepted(card_dispute(api, stack, LINA, op), op) for op in ("cmcc-sh", "mvno-xiaomi", "ctcc-sh")}
    wait_for(lambda: {"cmcc-sh", "mvno-xiaomi"} <= {d["operator"] for d in stack.operators.disputes}, 10,
             "the silent operators asked")
    rejected = wait_dispute_closed(ids["ctcc-sh"])
    assert rejected.status == "resolved"
    for operator in ("cmcc-sh", "mvno-xiaomi"):
        dispute_id = ids[operator]
        deadline_at = int(record(dispute_id).deadline_at)
        wait_dispute_closed(dispute_id, timeout=30)
        assert status(api, dispute_id)["status"] == "expired"
        expired_sms = [m for m in stack.read_outbox() if dispute_id in m["message"] and "未在15天内" in m["message"]]
        sent_at = dt.datetime.fromisoformat(expired_sms[0]["sent_at"]).timestamp()
        assert sent_at >= deadline_at - 1  # at the deadline (its 1 s slot, rounded down), not before
    ctcc = ids["ctcc-sh"]
    assert sms_about(stack, ctcc) == [
        (LINA["phone"], submitted_text("ctcc-sh", ctcc)),
        (LINA["phone"], f"【一证通查】中国电信上海分公司未能受理您的核查申请（编号{ctcc}），请致电10000。")]
    for operator in ("cmcc-sh", "mvno-xiaomi"):
        dispute_id = ids[operator]
        assert sms_about(stack, dispute_id) == [
            (LINA["phone"], submitted_text(operator, dispute_id)),
            (LINA["phone"], f"【一证通查】{NAMES[operator]}未在15天内答复您的核查申请（编号{dispute_id}），"
                            f"请致电{HOTLINES[operator]}。")]
    assert "该企业客服" in sms_about(stack, ids["mvno-xiaomi"])[-1][1]
    # Closed: a late answer is acknowledged (SPEC §4) and changes nothing.
    late = call_back(api, stack, "mvno-xiaomi", {"dispute_id": ids["mvno-xiaomi"], "outcome": "suspended", "cards": 1})
    assert late.status_code == 200 and late.json_body == {"status": "recorded"}
    assert status(api, ids["mvno-xiaomi"])["status"] == "expired"
    assert len(sms_about(stack, ids["mvno-xiaomi"])) == 2
    for dispute_id in ids.values():
        item = record(dispute_id)
        assert item.name_sealed is None and item.id_sealed is None and item.phone_sealed is None


# -- privacy ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("stack_options", [CALLBACK_GD])
def test_no_name_id_number_or_phone_in_clear_in_tables_executions_queues_or_logs(
        stack: LocalStack, api: Client, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN 张伟's card query and his disputes at cmcc-gd (callback) and cucc-bj (flaky: two 503s, then
    answered through the retry queue), both answered, THEN his name, ID number (whole, first 17, last six),
    phone and codes appear in clear in no DynamoDB item, no execution's input or history, no SQS message
    sent, no log line, no status answer, and the SMS carry neither name nor ID digits."""
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    from chalicelib.storage.models import TABLE_VARS

    caplog.set_level("INFO")
    # Every message SQS (moto, standing in for AWS) receives, from whichever client sends it.
    from moto.sqs.models import SQSBackend

    sent: list[tuple[str, str]] = []
    original = SQSBackend.send_message

    def keep(self: SQSBackend, queue_name: str, message_body: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((queue_name, message_body))
        return original(self, queue_name, message_body, *args, **kwargs)

    monkeypatch.setattr(SQSBackend, "send_message", keep)
    run_card_query(api, stack, card_body(ZHANG))
    from_now_on(stack, "cucc-bj", "flaky")
    disputes = [accepted(card_dispute(api, stack, ZHANG, op), op) for op in ("cmcc-gd", "cucc-bj")]
    for dispute_id in disputes:
        wait_dispute_closed(dispute_id)
    assert sent  # the reply queue carried the outcomes
    assert [d["operator"] for d in stack.operators.disputes].count("cucc-bj") == 3  # retried twice
    queues = {queue for queue, _ in sent}
    assert stack.env["RETRY_QUEUE_URL"].rsplit("/", 1)[-1] in queues  # cucc-bj's went through the retry queue
    assert stack.env["REPLY_QUEUE_URL"].rsplit("/", 1)[-1] in queues
    codes = [m["message"].split("验证码为")[1][:6] for m in stack.read_outbox() if "验证码" in m["message"]]
    ddb = aws("dynamodb")
    items = json.dumps([ddb.scan(TableName=stack.env[t])["Items"] for t in TABLE_VARS.values()], ensure_ascii=False)
    sfn = aws("stepfunctions")
    executions = []
    for machine in sfn.list_state_machines()["stateMachines"]:
        for execution in sfn.list_executions(stateMachineArn=machine["stateMachineArn"])["executions"]:
            arn = execution["executionArn"]
            executions.append(sfn.describe_execution(executionArn=arn))
            executions.append(sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"])
    events = json.dumps(executions, default=str, ensure_ascii=False)
    assert all(d in events for d in disputes)  # the dispute executions were read
    queued = json.dumps(sent, default=str, ensure_ascii=False)
    captured = capfd.readouterr()
    formatter = LambdaPowertoolsFormatter()
    logs = "\n".join([captured.out, captured.err, *(formatter.format(r) for r in caplog.records)])
    statuses = json.dumps([status(api, d) for d in disputes], ensure_ascii=False)
    name, id_number = ZHANG["name"], ZHANG["id_number"]
    for where, text in (("dynamodb", items), ("executions", events), ("sqs", queued), ("logs", logs),
                        ("status", statuses)):
        for needle in (name, json.dumps(name)[1:-1], id_number, id_number.lower(), id_number[:17]):
            assert needle not in text, (where, needle)
        for phone in (ZHANG["phone"], ZHANG_SECOND_PHONE["phone"]):
            for code in codes:
                assert_clean(text, where, phone=phone, id_last6=id_number[-6:], code=code)
    for dispute_id in disputes:
        item = record(dispute_id)
        assert item.name_sealed is None and item.id_sealed is None and item.phone_sealed is None
    texts = [m for _, m in dispute_sms(stack)]
    assert len(texts) == 4 and not [t for t in texts if name in t or id_number[-6:] in t.upper()]


# -- the HTTP envelope and its description ---------------------------------------------------------------
@pytest.mark.routes_only
def test_card_dispute_route_answers_405_413_and_415_in_the_error_shape(stack: LocalStack, api: Client) -> None:
    for response, code in (
            (api.http.get("/v1/card-disputes"), "method_not_allowed"),
            (post_json(api, "/v1/card-disputes", {**VALID, "name": "张" * 9000}), "payload_too_large"),  # > 16 KiB
            (api.http.post("/v1/card-disputes", headers={"Content-Type": "application/xml"}, body=json.dumps(VALID)),
             "unsupported_media_type"),
            (api.http.get("/v1/operators/cmcc-gd/disputes"), "method_not_allowed")):
        assert response.status_code == {"method_not_allowed": 405, "payload_too_large": 413,
                                        "unsupported_media_type": 415}[code], response.body
        assert error_code(response) == code
    assert dispute_sms(stack) == []


def test_the_api_description_covers_the_card_dispute_routes_and_their_errors() -> None:
    """The one OpenAPI description (chalicelib/api/openapi.json) describes what SPEC §10.1 serves."""
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chalicelib", "api",
                        "openapi.json")
    with open(path, encoding="utf-8") as fh:
        description = json.load(fh)

    def resolved(node: Any) -> Any:
        """The node with every local $ref replaced by what it points at."""
        if isinstance(node, dict):
            if "$ref" in node:
                target: Any = description
                for part in node["$ref"].removeprefix("#/").split("/"):
                    target = target[part]
                return resolved(target)
            return {k: resolved(v) for k, v in node.items()}
        return [resolved(v) for v in node] if isinstance(node, list) else node

    paths = resolved(description["paths"])
    submit_responses = paths["/v1/card-disputes"]["post"]["responses"]
    for code, errors in (("202", ["operator", "respond_within_days"]),
                         ("400", ["invalid_request", "invalid_name", "invalid_id_number", "invalid_phone",
                                  "invalid_code_format", "invalid_operator"]),
                         ("403", ["wrong_code"]), ("409", ["nothing_to_dispute"]), ("429", ["dispute_limit"])):
        for error in errors:
            assert error in json.dumps(submit_responses[code]), (code, error)
    assert "Retry-After" in json.dumps(submit_responses["429"])
    callback = paths["/v1/operators/{operator}/disputes"]["post"]["responses"]
    assert {"200", "400", "401", "404", "409"} <= set(callback)
    assert "operator" in json.dumps(paths["/v1/disputes/{dispute_id}"]["get"]["responses"]["200"])

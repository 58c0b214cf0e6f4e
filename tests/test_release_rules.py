"""SPEC §10.2's pure rules, no AWS: the carrier's `since`, the result SMS word for word, what a company may
answer to a release, and the local companies' binding records that a release really changes."""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib import registry, sms
from chalicelib.partners.kinds import RELEASES
from chalicelib.partners.protocol import Answer, Refused, parse_answer
from chalicelib.releases import parse_since
from local import simulators

TODAY = dt.date(2026, 12, 1)
RELEASE_ID = "4732aa35-75d0-4875-9dea-4de535325b32"


pytestmark = pytest.mark.usefixtures("bundled_registries")  # tests/conftest.py


@pytest.mark.parametrize("value, since", [
    ("2024-03-01", "2024-03-01"),
    ("2026-12-01", "2026-12-01"),  # today is not the future
    ("2026-12-02", None),  # tomorrow is
    ("2999-01-01", None),
    ("2024-02-30", None),  # not a real day
    ("2024-3-1", None),
    ("20240301", None),
    (" 2024-03-01", None),
    ("２０２４-03-01", None),  # full-width digits match \\d but are not the carrier's format
    ("", None),
    (None, None),
    (20240301, None),
    (["2024-03-01"], None),
])
def test_a_match_counts_only_with_a_real_past_since(value: Any, since: str | None) -> None:
    assert parse_since(value, TODAY) == since


def test_the_result_sms_is_the_spec_example() -> None:
    counts = {"tencent": 2, "alibaba": 0, "alipay": 1, "baidu": 0, "kuaishou": 0, "douyin": 0, "jd": None,
              "meituan": 0}
    answers = [sms.PartnerAnswer(c.name, counts[c.id]) for c in registry.companies()]
    assert RELEASES.result_text("13812345678", answers) == (
        "【一证通查】您的手机号138****5678二次号码解绑结果：腾讯2个，阿里巴巴0个，支付宝1个，百度0个，快手0个，"
        "抖音0个，京东暂未返回，美团0个。共解绑3个在您使用本号码前绑定的账号。")


def test_the_result_sms_fits_one_message_with_every_company_at_the_maximum() -> None:
    answers = [sms.PartnerAnswer(c.name, 100_000) for c in registry.companies()]
    text = RELEASES.result_text("13812345678", answers)
    assert len(text.encode()) <= sms.MAX_MESSAGE_BYTES and "共解绑800000个" in text


def test_a_mismatch_gets_the_query_failure_text() -> None:
    assert RELEASES.mismatch_text("13812345678") == sms.mismatch_text("13812345678")


@pytest.mark.parametrize("body, answer", [
    ({"release_id": RELEASE_ID, "unbound": 2}, Answer(RELEASE_ID, 2)),
    ({"release_id": RELEASE_ID, "unbound": 0}, Answer(RELEASE_ID, 0)),
    ({"release_id": RELEASE_ID, "unbound": 100_000}, Answer(RELEASE_ID, 100_000)),
    ({"release_id": RELEASE_ID, "error": "backend down"}, Answer(RELEASE_ID, None)),
])
def test_a_company_answers_a_count_or_an_error(body: Any, answer: Answer) -> None:
    tencent = registry.company("tencent")
    assert tencent is not None
    assert parse_answer(body, tencent, 100_000, RELEASES.count_field, RELEASES.breakdowns,
                        RELEASES.task_field) == answer


@pytest.mark.parametrize("body", [
    {"release_id": RELEASE_ID, "unbound": -1},
    {"release_id": RELEASE_ID, "unbound": 100_001},
    {"release_id": RELEASE_ID, "unbound": True},
    {"release_id": RELEASE_ID, "unbound": "2"},
    {"release_id": RELEASE_ID, "unbound": 2, "error": "x"},
    {"release_id": RELEASE_ID, "unbound": 2, "apps": {"微信": 2}},  # no breakdown in a release
    {"release_id": RELEASE_ID, "account_count": 2},  # a lookup's field
    {"lookup_id": RELEASE_ID, "unbound": 2},
    {"release_id": "", "unbound": 2},
    {"release_id": RELEASE_ID},
    ["not", "an", "object"],
])
def test_anything_else_a_company_answers_to_a_release_is_refused(body: Any) -> None:
    tencent = registry.company("tencent")
    assert tencent is not None
    with pytest.raises(Refused):
        parse_answer(body, tencent, 100_000, RELEASES.count_field, RELEASES.breakdowns, RELEASES.task_field)


def test_the_status_words_of_a_release() -> None:
    assert [RELEASES.status(s) for s in ("accepted", "verifying", "looking_up", "replied", "failed")] == [
        "accepted", "verifying", "forwarded", "completed", "failed"]


def test_a_release_unbinds_only_what_was_bound_before_since_and_a_lookup_then_counts_the_rest() -> None:
    accounts = simulators.Accounts([("139", "tencent", 2, "2019-05-10"), ("139", "tencent", 1, "2024-06-01"),
                                    ("139", "alipay", 1, "2024-05-02"), ("138", "tencent", 4, "2010-01-01")])
    assert accounts.release("139", "tencent", "2024-03-01") == 2
    assert accounts.get(("139", "tencent")) == 1
    assert accounts.release("139", "tencent", "2024-03-01") == 0  # done already
    assert accounts.release("139", "alipay", "2024-03-01") == 0 and accounts.get(("139", "alipay")) == 1
    assert accounts.get(("138", "tencent")) == 4  # another number is untouched


def test_the_fixtures_hold_two_recycled_numbers_one_with_accounts_at_three_companies_from_before() -> None:
    subscribers = simulators.load_subscribers()
    accounts = simulators.load_accounts()
    recycled = {phone: s.since for phone, s in subscribers.items() if s.since > "2020-01-01"}
    assert len(recycled) >= 2
    before = {phone: {c.id for c in registry.companies()
                      if simulators.Accounts(accounts.rows).release(phone, c.id, since)}
              for phone, since in recycled.items()}
    assert any(len(companies) >= 3 for companies in before.values())
    # ... and accounts bound after the holder's since, which a release keeps.
    assert any(row[0] in recycled and row[3] >= recycled[row[0]] for row in accounts.rows)
    assert all(s.since and dt.date.fromisoformat(s.since) for s in subscribers.values())


SECRET = "r" * 64


def _release(partner: simulators.PartnerSimulator, phone: str = "139", since: str = "2024-03-01",
             secret: str = SECRET) -> tuple[int, Any]:
    from tests.test_cards_simulators import call

    body = {"release_id": RELEASE_ID, "phone": phone, "since": since,
            "callback_url": "http://127.0.0.1:9/v1/partners/tencent/releases"}
    return call(f"{partner.url}/releases", body, secret)


@pytest.fixture
def tencent() -> Iterator[simulators.PartnerSimulator]:
    accounts = simulators.Accounts([("139", "tencent", 2, "2019-05-10"), ("139", "tencent", 1, "2024-06-01")])
    partner = simulators.PartnerSimulator("tencent", SECRET, accounts, "immediate", 0.0)
    partner.start(0)
    yield partner
    partner.stop()


def test_the_simulator_unbinds_over_http_and_says_how_many_again_on_a_retried_request(
        tencent: simulators.PartnerSimulator) -> None:
    assert _release(tencent) == (200, {"release_id": RELEASE_ID, "unbound": 2})
    assert _release(tencent) == (200, {"release_id": RELEASE_ID, "unbound": 2})  # the same release, asked again
    assert tencent.accounts.get(("139", "tencent")) == 1
    assert [r["since"] for r in tencent.releases] == ["2024-03-01", "2024-03-01"]


@pytest.mark.parametrize("mode, status", [("reject", 400), ("down", 503), ("flaky", 503), ("error", 200)])
def test_a_simulator_that_does_not_answer_with_a_count_unbinds_nothing(tencent: simulators.PartnerSimulator,
                                                                       mode: str, status: int) -> None:
    tencent.mode = mode
    assert _release(tencent)[0] == status
    assert tencent.accounts.get(("139", "tencent")) == 3


def test_the_simulator_checks_the_signature_and_the_body(tencent: simulators.PartnerSimulator) -> None:
    from tests.test_cards_simulators import call

    assert _release(tencent, secret="x" * 64)[0] == 401
    assert call(f"{tencent.url}/releases", {"release_id": RELEASE_ID}, SECRET)[0] == 400
    assert tencent.releases == [] and tencent.accounts.get(("139", "tencent")) == 3

"""SPEC §10.1's pure rules, no AWS: the card-dispute SMS texts word for word, what an operator may answer,
and the (ID number, phone) key a card reply's facts are kept under."""
from __future__ import annotations

from typing import Any

import pytest

from chalicelib import registry, sms
from chalicelib.cards import reply_key
from chalicelib.contracts import DisputeOutcome
from chalicelib.disputes.protocol import DisputeReply, parse_dispute_answer
from chalicelib.partners.kinds import ACCOUNTS, CARDS
from chalicelib.partners.protocol import Refused
from chalicelib.privacy import Hasher

ID = "K3VQ7ZL2M4NB6XWA"


pytestmark = pytest.mark.usefixtures("bundled_registries")  # tests/conftest.py

GD = "中国移动广东公司"


@pytest.mark.parametrize("outcome, cards, text", [
    ("suspended", 2, f"【一证通查】{GD}已处理您的核查申请（编号{ID}）：已对2张未经您本人核验的号码停机，"
                     "如需恢复请本人持证件到营业厅办理。"),
    ("owner_confirmed", 0, f"【一证通查】{GD}已处理您的核查申请（编号{ID}）：经核实，相关号码均为您本人办理。"
                           "如有疑问请致电10086。"),
    ("no_card", 0, f"【一证通查】{GD}已处理您的核查申请（编号{ID}）：未发现登记在您名下的号码。"),
    ("rejected", 0, f"【一证通查】{GD}未能受理您的核查申请（编号{ID}），请致电10086。"),
    ("expired", 0, f"【一证通查】{GD}未在15天内答复您的核查申请（编号{ID}），请致电10086。"),
])
def test_each_card_dispute_outcome_has_the_spec_text(outcome: str, cards: int, text: str) -> None:
    assert CARDS.dispute_outcome_text(outcome, registry.operator("cmcc-gd"), "cmcc-gd", ID, cards) == text


def test_the_submitted_text_names_the_operator() -> None:
    assert CARDS.dispute_submitted_text(GD, ID) == (
        f"【一证通查】您对{GD}名下号码的核查申请已提交（编号{ID}），企业将在15天内处理，结果将以短信告知。")


@pytest.mark.parametrize("outcome", ["owner_confirmed", "rejected", "expired"])
def test_an_operator_without_a_hotline_is_named_as_its_customer_service(outcome: str) -> None:
    operator = next(o for o in registry.operators() if not o.hotline)
    text = CARDS.dispute_outcome_text(outcome, operator, operator.id, ID, 0)
    assert text.endswith("请致电该企业客服。") and "致电。" not in text and operator.name in text


def test_an_operator_that_left_the_registry_is_named_by_its_id() -> None:
    assert CARDS.dispute_outcome_text("expired", None, "cmcc-gone", ID, 0) == (
        f"【一证通查】cmcc-gone未在15天内答复您的核查申请（编号{ID}），请致电该企业客服。")


def test_every_outcome_sms_fits_one_message_with_the_longest_operator_name() -> None:
    longest = max(registry.operators(), key=lambda o: len(o.name.encode()))
    for outcome in [*CARDS.dispute_outcomes, "expired"]:
        assert len(CARDS.dispute_outcome_text(outcome, longest, longest.id, ID, 100).encode()) <= sms.MAX_MESSAGE_BYTES


@pytest.mark.parametrize("body, reply", [
    ({"dispute_id": ID, "outcome": "suspended", "cards": 3}, DisputeReply(ID, DisputeOutcome.SUSPENDED, 3)),
    ({"dispute_id": ID, "outcome": "suspended", "cards": 100}, DisputeReply(ID, DisputeOutcome.SUSPENDED, 100)),
    ({"dispute_id": ID, "outcome": "no_card"}, DisputeReply(ID, DisputeOutcome.NO_CARD, 0)),
    ({"dispute_id": ID, "outcome": "owner_confirmed", "cards": 0}, DisputeReply(ID, DisputeOutcome.OWNER_CONFIRMED)),
    ({"dispute_id": ID, "outcome": "rejected"}, DisputeReply(ID, DisputeOutcome.REJECTED)),
])
def test_an_operators_answer_is_one_of_its_four_outcomes_and_a_bounded_count(body: Any, reply: DisputeReply) -> None:
    assert parse_dispute_answer(body, CARDS, 100) == reply


@pytest.mark.parametrize("body", [
    {"dispute_id": ID, "outcome": "suspended"},  # what it did needs its count
    {"dispute_id": ID, "outcome": "suspended", "cards": 101},
    {"dispute_id": ID, "outcome": "suspended", "cards": -1},
    {"dispute_id": ID, "outcome": "suspended", "cards": True},
    {"dispute_id": ID, "outcome": "suspended", "cards": "3"},
    {"dispute_id": ID, "outcome": "suspended", "cards": 2.0},
    {"dispute_id": ID, "outcome": "unbound", "accounts": 2},  # a company's outcome
    {"dispute_id": ID, "outcome": "no_account"},
    {"dispute_id": ID, "outcome": "expired"},  # ours, never a partner's
    {"dispute_id": ID, "outcome": "SUSPENDED", "cards": 1},
    {"dispute_id": "", "outcome": "no_card"},
    {"outcome": "no_card"},
    ["not", "an", "object"],
])
def test_anything_else_an_operator_answers_is_refused(body: Any) -> None:
    with pytest.raises(Refused):
        parse_dispute_answer(body, CARDS, 100)


def test_a_company_may_not_answer_with_an_operators_outcome() -> None:
    with pytest.raises(Refused):
        parse_dispute_answer({"dispute_id": ID, "outcome": "suspended", "cards": 1}, ACCOUNTS, 100_000)


def test_the_card_reply_key_is_bound_to_the_phone_and_the_name_and_blind_to_the_x_case() -> None:
    hasher = Hasher(lambda: "pepper" * 8)
    key = reply_key(hasher, "张伟", "44010619850212345X", "phone-a")
    assert key == reply_key(hasher, "张伟", "44010619850212345x", "phone-a")
    assert key != reply_key(hasher, "张伟", "44010619850212345X", "phone-b")
    assert key != reply_key(hasher, "王五", "44010619850212345X", "phone-a")
    assert "44010619850212345" not in key and "12345X" not in key
    assert CARDS.reported_key("phone-a", key) == f"cards#{key}" and CARDS.reported_key("phone-a", None) is None
    assert ACCOUNTS.reported_key("phone-a", None) == "phone-a"

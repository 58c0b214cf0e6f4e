"""The card query's reply SMS (SPEC §9): SPEC's texts exactly, 暂未返回 accounting, SNS's size limit."""
from __future__ import annotations

import json
import os
import re

import pytest

from chalicelib.sms import MAX_MESSAGE_BYTES, PREFIX, card_result_text
from local.stack import ROOT

with open(os.path.join(ROOT, "chalicelib", "data", "operators.json"), encoding="utf-8") as _fh:
    NAMES = [entry["name"] for entry in json.load(_fh)["operators"]]
GD, BJ = NAMES.index("中国移动广东公司"), NAMES.index("中国联通北京分公司")


def answers(counts: dict[str, int | None], default: int | None = 0) -> list[tuple[str, int | None]]:
    return [(name, counts.get(name, default)) for name in NAMES]


def fits(text: str) -> bool:
    return len(text.encode("utf-8")) <= MAX_MESSAGE_BYTES


def test_spec_example_exactly() -> None:
    text = card_result_text(answers({"中国移动广东公司": 2, "中国联通北京分公司": 1}))
    assert text == ("【一证通查】您名下在网移动电话卡共3张：中国移动广东公司2张，中国联通北京分公司1张。"
                    "如有异议，请联系相关企业核实、关停或销户。")


def test_named_in_the_order_given_which_is_registry_order_never_by_count() -> None:
    text = card_result_text([("中国联通北京分公司", 5), ("中国电信上海分公司", 0), ("小米移动", 1),
                             ("中国移动广东公司", 2)])
    assert text == ("【一证通查】您名下在网移动电话卡共8张：中国联通北京分公司5张，小米移动1张，中国移动广东公司2张。"
                    "如有异议，请联系相关企业核实、关停或销户。")  # the caller passes registry order
    ordered = card_result_text(answers({"小米移动": 1, "中国移动广东公司": 2, "中国联通北京分公司": 5}))
    assert ordered.index("中国移动广东公司") < ordered.index("中国联通北京分公司") < ordered.index("小米移动")


def test_no_card_and_everyone_answered() -> None:
    assert card_result_text(answers({})) == "【一证通查】您名下暂无在网移动电话卡。"
    assert card_result_text([]) == "【一证通查】您名下暂无在网移动电话卡。"


@pytest.mark.parametrize("unanswered", [1, 2, 37])
def test_k_operators_unanswered_come_right_before_the_dispute_sentence(unanswered: int) -> None:
    counts: dict[str, int | None] = {"中国移动广东公司": 2, "中国联通北京分公司": 1}
    silent = [n for n in NAMES if n not in counts][:unanswered]
    counts.update(dict.fromkeys(silent))
    text = card_result_text(answers(counts))
    assert text == ("【一证通查】您名下在网移动电话卡共3张：中国移动广东公司2张，中国联通北京分公司1张。"
                    f"另有{unanswered}家企业暂未返回。如有异议，请联系相关企业核实、关停或销户。")
    assert not any(name in text for name in silent)  # those who did not answer are counted, not named


def test_no_card_among_those_that_answered_while_some_did_not() -> None:
    text = card_result_text(answers({"中国移动广东公司": None, "小米移动": None}))
    assert text == ("【一证通查】您名下在网移动电话卡共0张。另有2家企业暂未返回。"
                    "如有异议，请联系相关企业核实、关停或销户。")
    nobody = card_result_text(answers({}, default=None))
    assert nobody == (f"【一证通查】您名下在网移动电话卡共0张。另有{len(NAMES)}家企业暂未返回。"
                      "如有异议，请联系相关企业核实、关停或销户。")


def test_worst_case_every_operator_with_99_cards_fits_and_keeps_the_total() -> None:
    text = card_result_text(answers({}, default=99))
    assert fits(text), len(text.encode())
    assert text.startswith(f"{PREFIX}您名下在网移动电话卡共{99 * len(NAMES)}张：{NAMES[0]}99张，")
    named = [name for name in NAMES if f"{name}99张" in text]
    assert named == NAMES[:len(named)] and len(named) >= 30  # registry order, as many as fit
    rest = len(NAMES) - len(named)
    assert f"，其余{rest}家企业共{99 * rest}张。如有异议，请联系相关企业核实、关停或销户。" in text
    # One more name would not have fitted.
    longer = text.replace(f"其余{rest}家企业共{99 * rest}张",
                          f"{NAMES[len(named)]}99张，其余{rest - 1}家企业共{99 * (rest - 1)}张")
    assert not fits(longer)


def test_worst_case_with_unanswered_operators_and_huge_counts_still_fits() -> None:
    counts: dict[str, int | None] = {name: 100_000 for name in NAMES}
    counts[NAMES[-1]] = None
    text = card_result_text(answers(counts))
    assert fits(text)
    assert "另有1家企业暂未返回。如有异议" in text
    assert f"共{100_000 * (len(NAMES) - 1)}张：" in text


@pytest.mark.parametrize("operators", [132, 500, 2000])
def test_it_fits_whatever_the_registry_size(operators: int) -> None:
    long_names = [(f"某某省某某市某某移动通信转售企业第{i}号分公司", 99) for i in range(operators)]
    text = card_result_text(long_names)
    assert fits(text)
    assert re.search(r"其余\d+家企业共\d+张。如有异议", text)
    assert f"共{99 * operators}张" in text


def test_never_a_name_or_an_id_number() -> None:
    text = card_result_text(answers({"中国移动广东公司": 2}))
    assert not re.search(r"\d{6,}", text)

"""The reply of a matched query whose fan-out never recorded whom it asked (AskCompanies failed every retry
before its first write): every partner of its kind is reported as 暂未返回 (SPEC §5, §9, §10.2), never a reply
that lists nobody — "共0个账号" — or, for cards, the false "您名下暂无在网移动电话卡。"."""
from __future__ import annotations

import pytest

from chalicelib import registry
from chalicelib.contracts import CarrierOutcome, LookupResult
from chalicelib.partners.kinds import ACCOUNTS, CARDS, RELEASES
from chalicelib.workflow.reply import ReplySender

pytestmark = pytest.mark.usefixtures("bundled_registries")  # tests/conftest.py

PHONE = "13812345678"
NO_RESULTS: list[LookupResult] = []


def test_an_account_query_with_nobody_recorded_as_asked_reports_every_company_as_not_answered() -> None:
    pending = "，".join(f"{company.name}暂未返回" for company in registry.companies())
    assert ReplySender.compose(PHONE, ACCOUNTS, CarrierOutcome.MATCH, set(), NO_RESULTS) == (
        f"【一证通查】您的手机号138****5678关联的互联网账号：{pending}。已返回企业共0个账号。"
        "如有异议，请通过“解绑与明细查询”联系相关企业。")
    assert "腾讯暂未返回" in pending and "美团暂未返回" in pending  # the registry's names, in its order


def test_a_card_query_with_nobody_recorded_as_asked_never_says_the_citizen_has_no_cards() -> None:
    operators = len(registry.operators())
    text = ReplySender.compose(PHONE, CARDS, CarrierOutcome.MATCH, set(), NO_RESULTS)
    assert text == (f"【一证通查】您名下在网移动电话卡共0张。另有{operators}家企业暂未返回。"
                    "如有异议，请联系相关企业核实、关停或销户。")
    assert "暂无" not in text and operators > 90


def test_a_release_with_nobody_recorded_as_asked_reports_every_company_as_not_answered() -> None:
    pending = "，".join(f"{company.name}暂未返回" for company in registry.companies())
    assert ReplySender.compose(PHONE, RELEASES, CarrierOutcome.MATCH, set(), NO_RESULTS) == (
        f"【一证通查】您的手机号138****5678二次号码解绑结果：{pending}。共解绑0个在您使用本号码前绑定的账号。")


def test_a_recorded_fan_out_still_reports_only_the_partners_it_asked() -> None:
    """A company that joined after the query's fan-out was not asked: not in its reply (unchanged)."""
    first, second, *_ = registry.companies()
    results: list[LookupResult] = [{"company": first.id, "answered": True, "count": 2}]
    assert ReplySender.compose(PHONE, ACCOUNTS, CarrierOutcome.MATCH, {first.id, second.id}, results) == (
        f"【一证通查】您的手机号138****5678关联的互联网账号：{first.name}2个，{second.name}暂未返回。"
        "已返回企业共2个账号。如有异议，请通过“解绑与明细查询”联系相关企业。")


@pytest.mark.parametrize("kind", [ACCOUNTS, CARDS, RELEASES], ids=lambda kind: kind.kind.value)
def test_a_carrier_failure_with_nobody_asked_keeps_its_failure_text(kind: object) -> None:
    from chalicelib.partners.kinds import LookupKind

    assert isinstance(kind, LookupKind)
    assert ReplySender.compose(PHONE, kind, CarrierOutcome.UNKNOWN, set(), NO_RESULTS) == (
        "【一证通查】您的手机号138****5678查询未成功：暂时无法完成查询，请于24小时后重新查询。")
    assert ReplySender.compose(PHONE, kind, CarrierOutcome.MISMATCH, set(), NO_RESULTS) == kind.mismatch_text(PHONE)

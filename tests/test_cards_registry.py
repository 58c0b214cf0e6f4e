"""The operator registry (SPEC §9): 93 provincial companies and the licensed resellers, as data."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import Counter

import pytest

from chalicelib.registry import Partner
from local.stack import ROOT

BUNDLED = os.path.join(ROOT, "chalicelib", "data", "operators.json")
with open(BUNDLED, encoding="utf-8") as _fh:
    OPERATORS = json.load(_fh)["operators"]
CARRIERS = {"中国移动": ("cmcc", "公司", "10086"), "中国联通": ("cucc", "分公司", "10010"),
            "中国电信": ("ctcc", "分公司", "10000")}
KEYS = {"id", "name", "group", "group_id", "details", "unbind", "hotline", "base_url", "secret_name",
        "max_requests_per_second"}


def test_93_provincial_companies_and_at_least_39_resellers_with_unique_ids_and_names() -> None:
    groups = Counter(entry["group"] for entry in OPERATORS)
    assert groups["中国移动"] == groups["中国联通"] == groups["中国电信"] == 31
    assert groups["转售企业"] >= 39
    assert set(groups) == {*CARRIERS, "转售企业"}
    assert len(OPERATORS) == 93 + groups["转售企业"]
    assert len({e["id"] for e in OPERATORS}) == len(OPERATORS)
    assert len({e["name"] for e in OPERATORS}) == len(OPERATORS)


def test_every_entry_has_exactly_the_registry_keys_and_loads_as_a_partner() -> None:
    fields = {f.name for f in dataclasses.fields(Partner)}
    for entry in OPERATORS:
        assert set(entry) == KEYS, entry["id"]
        assert KEYS <= fields
        operator = Partner(**entry)
        assert operator.base_url == f"https://yztc-operator.{operator.id}.example/api"
        assert operator.secret_name == f"yztc/operators/{operator.id}"
        assert operator.max_requests_per_second == 20
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", operator.id)
        # CloudWatch dimension values are ASCII: the per-group metric and alarms use group_id, one per group.
        assert operator.group_id.isascii() and operator.group_id.isalnum()
    assert len({(e["group"], e["group_id"]) for e in OPERATORS}) == len({e["group"] for e in OPERATORS})


def test_provincial_companies_are_named_as_usual_in_the_national_order_of_regions() -> None:
    regions = ["北京", "天津", "河北", "山西", "内蒙古", "辽宁", "吉林", "黑龙江", "上海", "江苏", "浙江", "安徽",
               "福建", "江西", "山东", "河南", "湖北", "湖南", "广东", "广西", "海南", "重庆", "四川", "贵州",
               "云南", "西藏", "陕西", "甘肃", "青海", "宁夏", "新疆"]
    provincial = OPERATORS[:93]
    for index, (group, (prefix, suffix, hotline)) in enumerate(CARRIERS.items()):
        block = provincial[31 * index: 31 * (index + 1)]
        assert [e["name"] for e in block] == [f"{group}{region}{suffix}" for region in regions]
        assert {e["group"] for e in block} == {group} and {e["hotline"] for e in block} == {hotline}
        assert all(e["id"].startswith(prefix + "-") for e in block)
        # the same region abbreviation for the same region at the three carriers
        assert [e["id"].split("-")[1] for e in block] == [e["id"].split("-")[1] for e in provincial[:31]]
    ids = {e["id"] for e in provincial}
    assert {"cmcc-gd", "cucc-bj", "ctcc-sh"} <= ids
    assert next(e for e in OPERATORS if e["id"] == "cmcc-gd")["name"] == "中国移动广东公司"
    assert next(e for e in OPERATORS if e["id"] == "cucc-bj")["name"] == "中国联通北京分公司"


def test_resellers_come_last_with_mvno_ids() -> None:
    resellers = OPERATORS[93:]
    assert {e["group"] for e in resellers} == {"转售企业"}
    assert all(e["id"].startswith("mvno-") for e in resellers)
    assert {"小米移动", "蜗牛移动", "京东通信"} <= {e["name"] for e in resellers}
    assert all(re.fullmatch(r"(\d{5,}|\d{3,4}-?\d{3,4}-?\d{4})?", e["hotline"]) for e in resellers)


def test_the_loader_reads_the_bundled_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib import registry
    from chalicelib.config import settings

    monkeypatch.setenv("OPERATOR_REGISTRY_FILE", BUNDLED)
    settings.cache_clear()
    registry.operators.cache_clear()
    try:
        loaded = registry.operators()
        assert [o.id for o in loaded] == [e["id"] for e in OPERATORS]
        assert registry.operator("cmcc-gd").group == "中国移动"  # type: ignore[union-attr]  # None fails all the same
        assert registry.operator("nobody") is None
    finally:
        settings.cache_clear()
        registry.operators.cache_clear()

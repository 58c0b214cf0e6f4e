"""The local stack's operator wiring (SPEC §7, §9): one operator simulator behind the registry it writes,
signed with the secrets the stack created; modes from operators.csv, OPERATOR_MODES and StackOptions."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from chalicelib import signing
from local.stack import LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS
from tests.helpers import aws

NEWCOMER = {"id": "mvno-newco", "name": "新来移动", "group": "转售企业", "details": "", "unbind": "", "hotline": "",
            "base_url": "https://yztc-operator.mvno-newco.example/api", "secret_name": "yztc/operators/mvno-newco",
            "max_requests_per_second": 20}


@pytest.fixture
def stack_options() -> StackOptions:
    return StackOptions(**{**BASE_OPTIONS.__dict__, "operator_modes": "cmcc-gd=immediate,ctcc-sh=down",
                           "extra_operators": [NEWCOMER]})


def secret(name: str) -> str:

    return str(aws("secretsmanager").get_secret_value(SecretId=name)["SecretString"])


def post(url: str, body: dict[str, Any], key: str) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers=signing.signed_headers(key, data))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def card_lookup(operator: Any, id_number: str = "44010619850212345X") -> tuple[int, Any]:
    body = {"lookup_id": "L1", "id_number": id_number, "name": "张伟",
            "callback_url": "http://127.0.0.1:9/v1/operators/x/results"}
    return post(f"{operator.base_url}/card-lookups", body, secret(operator.secret_name))


def test_registry_points_every_operator_at_the_one_simulator_with_its_own_secret(stack: LocalStack) -> None:
    from chalicelib import registry

    operators = registry.operators()
    assert len(operators) == 133 and operators[-1].id == "mvno-newco"  # a newcomer by data alone
    assert {o.base_url for o in operators} == {f"{stack.operators.url}/{o.id}" for o in operators}
    assert set(stack.operators.secrets) == {o.id for o in operators}
    gd = registry.operator("cmcc-gd")
    assert card_lookup(gd) == (200, {"lookup_id": "L1", "card_count": 2})  # OPERATOR_MODES override
    assert card_lookup(registry.operator("ctcc-sh"))[0] == 503
    assert card_lookup(registry.operator("cucc-bj")) == (200, {"lookup_id": "L1", "card_count": 1})  # the file
    assert card_lookup(registry.operator("mvno-newco"))[0] == 202  # default: callback
    # signed with another operator's secret: refused
    body = {"lookup_id": "L1", "id_number": "44010619850212345X", "name": "张伟", "callback_url": "http://x"}
    assert post(f"{gd.base_url}/card-lookups", body, secret("yztc/operators/cucc-bj"))[0] == 401  # type: ignore[union-attr]
    stack.operators.set_mode("cmcc-gd", "reject")
    assert card_lookup(gd)[0] == 400
    with urllib.request.urlopen(f"{gd.base_url}/stats", timeout=10) as response:  # type: ignore[union-attr]  # bundled
        assert json.load(response) == {"requests": 2, "callbacks": 0, "disputes": 0}


def test_the_carrier_checks_name_and_id_number_behind_the_registry(stack: LocalStack) -> None:
    from chalicelib import registry

    carrier = registry.carrier_for("13812345678")
    assert carrier is not None
    url = f"{carrier.base_url}/verifications"
    key = secret(carrier.secret_name)
    assert post(url, {"phone": "13812345678", "name": "张伟", "id_number": "44010619850212345X"}, key) == (
        200, {"result": "match", "since": "2012-06-01"})  # a match states since when (SPEC §10.2)
    assert post(url, {"phone": "13812345678", "name": "张三", "id_number": "44010619850212345X"}, key) == (
        200, {"result": "mismatch"})
    assert post(url, {"phone": "13812345678", "id_last6": "12345X"}, key) == (
        200, {"result": "match", "since": "2012-06-01"})


def test_the_bundled_registry_alone_without_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack with default options: 132 operators, modes from operators.csv, OPERATOR_MODES read."""
    from moto import mock_aws

    from local.stack import LocalStack
    from tests.conftest import MOTO_CONFIG, reset_caches

    monkeypatch.setenv("OPERATOR_MODES", "mvno-jd=silent")
    with mock_aws(config=MOTO_CONFIG):
        reset_caches()
        started = time.monotonic()
        defaults = {"retries": False, "callback_delay_scale": 1.0}  # the fixtures' delays, as make run has them
        local = LocalStack(StackOptions(**{**BASE_OPTIONS.__dict__, **defaults})).start()
        elapsed = time.monotonic() - started
        try:
            from chalicelib import registry

            assert len(registry.operators()) == 132
            assert local.operators.mode_of("mvno-jd")[0] == "silent"
            assert local.operators.mode_of("cucc-bj") == ("immediate", 0.0)
            assert local.operators.mode_of("ctcc-xj") == ("callback", 1.0)  # not in operators.csv
            assert local.operators.mode_of("ctcc-sh") == ("callback", 2.0) and local.partners["jd"].delay_seconds == 3
            assert elapsed < 30
        finally:
            local.stop()
            reset_caches()

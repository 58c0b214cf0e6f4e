"""SPEC §3 input rules: every bad input gets its error code and changes nothing."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import post_json
from tests.helpers import COMPANIES, SUBSCRIBER, aws, error_code, latest_code, request_code

if TYPE_CHECKING:
    from chalice.test import Client

    from local.stack import LocalStack

# Bad input is refused by the routes themselves: no pollers and no deadline timer (tests/conftest.py, routes_only).
pytestmark = pytest.mark.routes_only

CODE_ROUTE = "/v1/verification-codes"
QUERY_ROUTE = "/v1/queries"
GOOD_QUERY = {"phone": SUBSCRIBER[0], "id_last6": SUBSCRIBER[1], "code": "123456"}


def _items(table: str) -> list[dict]:
    return aws("dynamodb").scan(TableName=table)["Items"]


@pytest.mark.parametrize("body, expected", [
    ("not json", "invalid_request"),
    ("", "invalid_request"),
    ("[\"13812345678\"]", "invalid_request"),
    ("\"13812345678\"", "invalid_request"),
    ({}, "invalid_request"),
    ({"phone": None}, "invalid_request"),
    ({"mobile": "13812345678"}, "invalid_request"),
    ({"phone": 13812345678}, "invalid_phone"),
    ({"phone": ["13812345678"]}, "invalid_phone"),
    ({"phone": "1381234567"}, "invalid_phone"),       # 10 digits
    ({"phone": "138123456789"}, "invalid_phone"),     # 12 digits
    ({"phone": "12812345678"}, "invalid_phone"),      # second digit 2
    ({"phone": "01087654321"}, "invalid_phone"),      # Beijing landline
    ({"phone": "+86 10 8765 4321"}, "invalid_phone"),
    ({"phone": "1381234567a"}, "invalid_phone"),
    ({"phone": "１３８１２３４５６７８"}, "invalid_phone"),  # full-width digits
    ({"phone": "+1 13812345678"}, "invalid_phone"),
])
def test_bad_code_request_is_rejected_and_changes_nothing(stack: LocalStack, api: Client, body: Any,
                                                          expected: str) -> None:
    response = post_json(api, CODE_ROUTE, body)
    assert response.status_code == 400
    assert error_code(response) == expected
    assert response.json_body["error"]["message"]  # a Chinese explanation
    assert stack.read_outbox() == []
    assert _items(stack.env["CODES_TABLE"]) == []
    assert _items(stack.env["THROTTLE_TABLE"]) == []


@pytest.mark.parametrize("phone", [
    "13812345678", "+8613812345678", "+86 138 1234 5678", "86-138-1234-5678", "138-1234-5678",
    " 13812345678 ",
])
def test_accepted_phone_forms_are_normalised(stack: LocalStack, api: Client, phone: str) -> None:
    response = post_json(api, CODE_ROUTE, {"phone": phone})
    assert response.status_code == 202
    assert response.json_body == {"expires_in": 300, "resend_after": 60}
    assert stack.read_outbox()[-1]["phone"] == "13812345678"


@pytest.mark.parametrize("change, expected", [
    ({"phone": "1381234567"}, "invalid_phone"),
    ({"phone": "02012345678"}, "invalid_phone"),
    ({"id_last6": "1234X"}, "invalid_id_last6"),
    ({"id_last6": "1234567"}, "invalid_id_last6"),
    ({"id_last6": "X12345"}, "invalid_id_last6"),
    ({"id_last6": "12345Y"}, "invalid_id_last6"),
    ({"id_last6": "001234"}, "invalid_id_last6"),     # day 00
    ({"id_last6": "321234"}, "invalid_id_last6"),     # day 32
    ({"id_last6": 123456}, "invalid_id_last6"),
    ({"code": "12345"}, "invalid_code_format"),
    ({"code": "1234567"}, "invalid_code_format"),
    ({"code": "12a456"}, "invalid_code_format"),
    ({"code": 123456}, "invalid_code_format"),
    ({"phone": None}, "invalid_request"),
    ({"code": None}, "invalid_request"),
])
def test_bad_query_is_rejected_with_its_field_error(stack: LocalStack, api: Client, change: dict[str, Any],
                                                    expected: str) -> None:
    response = post_json(api, QUERY_ROUTE, {**GOOD_QUERY, **change})
    assert response.status_code == 400
    assert error_code(response) == expected
    assert _items(stack.env["QUERIES_TABLE"]) == []


@pytest.mark.parametrize("body", ["{", "[]", "null", "42"])
def test_query_body_must_be_a_json_object(stack: LocalStack, api: Client, body: Any) -> None:
    response = post_json(api, QUERY_ROUTE, body)
    assert response.status_code == 400
    assert error_code(response) == "invalid_request"


@pytest.mark.parametrize("missing", ["phone", "id_last6", "code"])
def test_query_with_a_missing_field_is_invalid_request(stack: LocalStack, api: Client, missing: str) -> None:
    body = {k: v for k, v in GOOD_QUERY.items() if k != missing}
    response = post_json(api, QUERY_ROUTE, body)
    assert response.status_code == 400
    assert error_code(response) == "invalid_request"


@pytest.mark.parametrize("id_last6", ["12345x", "12345X", "310000", "010000"])
def test_valid_id_last6_forms_are_accepted(stack: LocalStack, api: Client, id_last6: str) -> None:
    phone = "13900001111"
    assert request_code(api, phone).status_code == 202
    response = post_json(api, QUERY_ROUTE, {"phone": phone, "id_last6": id_last6,
                                            "code": latest_code(stack, phone)})
    assert response.status_code == 202, response.body


def test_wrong_code_is_403(stack: LocalStack, api: Client) -> None:
    assert request_code(api, SUBSCRIBER[0]).status_code == 202
    wrong = "000000" if latest_code(stack, SUBSCRIBER[0]) != "000000" else "111111"
    response = post_json(api, QUERY_ROUTE, {**GOOD_QUERY, "code": wrong})
    assert response.status_code == 403
    assert error_code(response) == "wrong_code"
    assert _items(stack.env["QUERIES_TABLE"]) == []


def test_query_without_any_code_requested_is_403(stack: LocalStack, api: Client) -> None:
    response = post_json(api, QUERY_ROUTE, GOOD_QUERY)
    assert response.status_code == 403
    assert error_code(response) == "wrong_code"


def test_partner_callback_with_bad_json_is_invalid_request_after_signature(stack: LocalStack, api: Client) -> None:
    response = api.http.post("/v1/partners/tencent/results", headers={"Content-Type": "application/json"},
                             body="{")
    assert response.status_code == 401  # unsigned: the signature is checked before anything else
    assert error_code(response) == "bad_signature"


@pytest.mark.parametrize("path", ["/v1/queries/not-a-uuid", "/v1/queries/00000000-0000-4000-8000-000000000000"])
def test_unknown_query_is_404(stack: LocalStack, api: Client, path: str) -> None:
    response = api.http.get(path)
    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_companies_are_served_in_registry_order(stack: LocalStack, api: Client) -> None:
    response = api.http.get("/v1/companies")
    assert response.status_code == 200
    companies = response.json_body["companies"]
    assert [c["id"] for c in companies] == COMPANIES  # the bundled registry, in its order
    for company in companies:
        assert set(company) == {"id", "name", "details", "unbind", "hotline"}
        assert all(company.values())

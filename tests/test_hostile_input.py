"""Hostile and malformed requests: each class that once answered 500 (issue 9) now gets its 4xx, in the
SPEC error shape, on every route; and whatever Chalice or the gateway answers itself has that shape too."""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest
import requests

from chalicelib import signing
from chalicelib.api.requests import CITIZEN_BODY_LIMIT, PARTNER_BODY_LIMIT, deeper_than
from tests.conftest import API_PORT, post_json

if TYPE_CHECKING:
    from chalice.test import Client

    from local.stack import LocalStack

# Hostile bodies and headers meet the routes alone: no pollers, no deadline timer (tests/conftest.py, routes_only).
pytestmark = pytest.mark.routes_only

CITIZEN_POSTS = ["/v1/verification-codes", "/v1/queries"]
CALLBACK = "/v1/partners/tencent/results"
BASE = f"http://127.0.0.1:{API_PORT}"


def assert_spec_error(response: Any, status: int, code: str) -> None:
    body = response.json_body if hasattr(response, "json_body") else response.json()
    assert response.status_code == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code and re.fullmatch(r"[a-z]+(_[a-z0-9]+)*", code)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def signed_post(api: Any, stack: Any, raw: bytes, company: str = "tencent") -> Any:
    headers = signing.signed_headers(stack.secrets[f"yztc/partners/{company}"], raw)
    return api.http.post(f"/v1/partners/{company}/results", headers=headers, body=raw)


# -- signature headers -------------------------------------------------------------------------
@pytest.mark.parametrize("timestamp", ["²", "١٢٣", "1" * 5000, "-1", " 1", "1.5", ""])
def test_a_timestamp_that_is_not_ascii_unix_seconds_is_a_bad_signature_not_a_crash(stack: LocalStack, api: Client,
                                                                                   timestamp: str) -> None:
    response = api.http.post(CALLBACK, body=b'{"lookup_id": "x", "account_count": 1}',
                             headers={"Content-Type": "application/json", "X-Timestamp": timestamp,
                                      "X-Signature": "0" * 64})
    assert_spec_error(response, 401, "bad_signature")


@pytest.mark.parametrize("offered", ["é" * 64, "zz", "0" * 63, "0" * 65, ""])
def test_a_signature_that_is_not_64_hex_digits_is_a_bad_signature_not_a_crash(stack: LocalStack, api: Client,
                                                                              offered: str) -> None:
    raw = b'{"lookup_id": "x", "account_count": 1}'
    headers = {**signing.signed_headers(stack.secrets["yztc/partners/tencent"], raw), "X-Signature": offered}
    assert_spec_error(api.http.post(CALLBACK, headers=headers, body=raw), 401, "bad_signature")


# -- JSON that parses badly or not at all --------------------------------------------------------
DEEP = b"[" * 1000 + b"]" * 1000
DEEP_OBJECT = b'{"phone": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1001


@pytest.mark.parametrize("raw", [DEEP, DEEP_OBJECT, b"[" * 100_000])
@pytest.mark.parametrize("path", CITIZEN_POSTS)
def test_json_nested_a_thousand_deep_is_invalid_request_on_citizen_routes(stack: LocalStack, api: Client, path: str,
                                                                          raw: bytes) -> None:
    assert_spec_error(post_json(api, path, raw[:CITIZEN_BODY_LIMIT]), 400, "invalid_request")


def test_json_nested_a_thousand_deep_is_invalid_request_on_the_callback_route(stack: LocalStack, api: Client) -> None:
    assert_spec_error(signed_post(api, stack, DEEP), 400, "invalid_request")


def test_depth_is_counted_outside_strings_only() -> None:
    assert not deeper_than(b'{"error": "' + b"[" * 100 + b'"}', 32)
    assert not deeper_than(b'{"error": "\\"' + b"[" * 100 + b'"}', 32)  # an escaped quote stays inside
    assert deeper_than(b'{"error": "\\\\"' + b", " + b"[" * 40 + b"]" * 40 + b"}", 32)  # an escaped backslash ends
    assert not deeper_than(b"[" * 32 + b"]" * 32, 32) and deeper_than(b"[" * 33, 32)


@pytest.mark.parametrize("field", ["lookup_id", "error"])
def test_a_lone_surrogate_in_a_signed_callback_is_invalid_request(stack: LocalStack, api: Client, field: str) -> None:
    body = {"lookup_id": "abc", "error": "no such subscriber", field: "x\\ud800y"}
    raw = json.dumps(body).replace("\\\\ud800", "\\ud800").encode()
    assert b"\\ud800" in raw
    assert_spec_error(signed_post(api, stack, raw), 400, "invalid_request")


def test_a_lone_surrogate_as_an_app_name_is_invalid_request(stack: LocalStack, api: Client) -> None:
    raw = b'{"lookup_id": "abc", "account_count": 1, "apps": {"\\udfff": 1}}'
    assert_spec_error(signed_post(api, stack, raw), 400, "invalid_request")


def test_a_surrogate_encoded_as_raw_bytes_is_invalid_request(stack: LocalStack, api: Client) -> None:
    raw = b'{"lookup_id": "abc", "error": "\xed\xa0\x80"}'
    assert_spec_error(signed_post(api, stack, raw), 400, "invalid_request")


@pytest.mark.parametrize("raw", [
    b'{"phone": "\\ud800"}',
    b'{"phone": "\xed\xa0\x80"}',
    b'{"phone": "\xff"}',
    '{"phone": "13812345678"}'.encode("utf-16"),
    b'{"phone": NaN}',
    b'{"phone": ' + b"9" * 5000 + b"}",
])
def test_bodies_that_are_not_strict_utf8_json_are_invalid_request(stack: LocalStack, api: Client, raw: bytes) -> None:
    assert_spec_error(post_json(api, "/v1/verification-codes", raw), 400, "invalid_request")


@pytest.mark.parametrize("lookup_id", ["", "x" * 129, None, 7])
def test_a_signed_callback_without_a_usable_lookup_id_is_invalid_request(stack: LocalStack, api: Client,
                                                                         lookup_id: str | int | None) -> None:
    raw = json.dumps({"lookup_id": lookup_id, "account_count": 1}).encode()
    assert_spec_error(signed_post(api, stack, raw), 400, "invalid_request")


# -- sizes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", CITIZEN_POSTS)
def test_a_citizen_body_over_16_kib_is_payload_too_large(stack: LocalStack, api: Client, path: str) -> None:
    raw = json.dumps({"phone": "13812345678", "pad": "x" * CITIZEN_BODY_LIMIT}).encode()
    assert_spec_error(post_json(api, path, raw), 413, "payload_too_large")


def test_a_citizen_body_of_exactly_16_kib_is_read(stack: LocalStack, api: Client) -> None:
    head = b'{"phone": "1"'
    raw = head + b" " * (CITIZEN_BODY_LIMIT - len(head) - 1) + b"}"
    assert len(raw) == CITIZEN_BODY_LIMIT
    assert_spec_error(post_json(api, "/v1/verification-codes", raw), 400, "invalid_phone")


def test_a_partner_body_between_16_and_64_kib_is_read_and_one_over_64_kib_is_refused(stack: LocalStack,
                                                                                     api: Client) -> None:
    padding = {"lookup_id": "abc", "error": "x" * (CITIZEN_BODY_LIMIT + 100)}
    assert_spec_error(signed_post(api, stack, json.dumps(padding).encode()), 404, "not_found")  # unknown lookup
    padding["error"] = "x" * PARTNER_BODY_LIMIT
    assert_spec_error(signed_post(api, stack, json.dumps(padding).encode()), 413, "payload_too_large")


def test_a_body_on_a_get_route_is_bounded_too(stack: LocalStack, api: Client) -> None:
    response = api.http.get("/v1/companies", body=b"x" * (CITIZEN_BODY_LIMIT + 1))
    assert_spec_error(response, 413, "payload_too_large")


# -- what Chalice answers itself, in-process -----------------------------------------------------
@pytest.mark.parametrize("content_type", ["application/xml", "multipart/form-data; boundary=x", "", "text/html"])
@pytest.mark.parametrize("path", [*CITIZEN_POSTS, CALLBACK])
def test_an_unsupported_media_type_is_415_in_the_spec_shape(stack: LocalStack, api: Client, path: str,
                                                            content_type: str) -> None:
    response = api.http.post(path, headers={"Content-Type": content_type}, body=b'{"phone": "13812345678"}')
    assert_spec_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "text/plain",
                                          "application/x-www-form-urlencoded"])
def test_json_sent_as_text_or_form_is_still_read(stack: LocalStack, api: Client, content_type: str) -> None:
    response = api.http.post("/v1/verification-codes", headers={"Content-Type": content_type},
                             body=b'{"phone": "12812345678"}')
    assert_spec_error(response, 400, "invalid_phone")


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/v1/verification-codes", "POST"),
    ("PUT", "/v1/queries", "POST"),
    ("DELETE", "/v1/queries/00000000-0000-4000-8000-000000000000", "GET"),
    ("GET", CALLBACK, "POST"),
    ("POST", "/v1/companies", "GET"),
    ("PATCH", "/", "GET"),
])
def test_a_wrong_method_is_405_with_allow_in_the_spec_shape(stack: LocalStack, api: Client, method: str, path: str,
                                                            allowed: str) -> None:
    response = api.http.request(method, path, headers={"Content-Type": "application/xml"}, body=b"<x/>")
    assert_spec_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == allowed


# -- what the gateway answers itself: the local server stands in for API Gateway -------------------
@pytest.mark.parametrize("path", ["/v1/Verification-Codes", "/v1/partners/tencent/results/extra", "/nope",
                                  "/v1", "/v1/queries/a/b"])
def test_an_unknown_path_over_http_is_404_not_found(stack: LocalStack, path: str) -> None:
    for method in ("GET", "POST"):
        assert_spec_error(requests.request(method, BASE + path, timeout=5), 404, "not_found")


def test_a_content_length_over_64_kib_is_413_before_the_body_is_read(stack: LocalStack) -> None:
    response = requests.post(BASE + "/v1/verification-codes", data=b"x" * (PARTNER_BODY_LIMIT + 1),
                             headers={"Content-Type": "application/json"}, timeout=5)
    assert_spec_error(response, 413, "payload_too_large")


def test_wrong_method_and_media_type_over_http_have_the_spec_shape(stack: LocalStack) -> None:
    assert_spec_error(requests.get(BASE + "/v1/queries", timeout=5), 405, "method_not_allowed")
    response = requests.post(BASE + "/v1/queries", data=b"<x/>", headers={"Content-Type": "text/xml"}, timeout=5)
    assert_spec_error(response, 415, "unsupported_media_type")


def test_head_over_http_sends_headers_and_no_body(stack: LocalStack) -> None:
    with requests.Session() as session:
        head = session.head(BASE + "/v1/companies", timeout=5)
        assert head.status_code == 405 and head.content == b""
        assert session.get(BASE + "/v1/companies", timeout=5).status_code == 200  # the connection is intact


# -- what a partner or the carrier answers is outside input too ---------------------------------
@pytest.mark.parametrize("answer", [b"[" * 5000 + b"]" * 5000, b'{"lookup_id": "\\ud800", "account_count": 1}',
                                    b'{"lookup_id": "\xed\xa0\x80"}', b"not json"])
def test_a_partner_answer_that_is_not_strict_json_reads_as_no_body_not_a_crash(answer: bytes) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from chalicelib.http import post_signed

    class Partner(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Partner)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reply = post_signed(f"http://127.0.0.1:{server.server_address[1]}/lookups", {"lookup_id": "x"}, "secret")
    finally:
        server.shutdown()
        server.server_close()
    assert reply.status == 200 and reply.body is None

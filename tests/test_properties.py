"""Property-based: whatever arrives — any body, header, content type, method or path — the answer is never
a 5xx, and every error has exactly the SPEC shape {"error": {"code": <snake_case>, "message": <str>}}.

Hypothesis is derandomized (the same examples on every run, so CI is deterministic) and keeps no example
database. More than 10,000 examples in all: most in-process through Chalice's test client, the rest over
HTTP through the local server, which stands in for what API Gateway answers itself.
"""
from __future__ import annotations

import http.client
import json
import re
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib import signing
from tests.conftest import API_PORT

if TYPE_CHECKING:
    from chalice.test import Client

    from local.stack import LocalStack

# Every answer here is the routes' own: no pollers and no deadline timer (tests/conftest.py, routes_only).
pytestmark = pytest.mark.routes_only

SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
EXAMPLES = {"in_process": 2500, "http": 1500}


def fuzz(examples: int) -> Any:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def generous_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-IP limits would soon answer every example 429 (all come from one IP): lift them, so the
    examples keep reaching the code that reads them. (Set before the stack builds its settings.)"""
    monkeypatch.setenv("CODE_IP_HOURLY_LIMIT", "1000000")
    monkeypatch.setenv("QUERY_IP_HOURLY_LIMIT", "1000000")


def check(status: int, headers: Any, body: bytes | str, method: str = "GET") -> None:
    assert status < 500, (status, body)
    if status < 400 or method == "HEAD":
        return
    raw = body.encode() if isinstance(body, str) else body
    parsed = json.loads(raw)
    assert set(parsed) == {"error"} and isinstance(parsed["error"], dict), parsed
    assert set(parsed["error"]) == {"code", "message"}, parsed
    assert isinstance(parsed["error"]["code"], str) and SNAKE.fullmatch(parsed["error"]["code"]), parsed
    assert isinstance(parsed["error"]["message"], str) and parsed["error"]["message"], parsed
    if status in (429, 503):
        assert re.fullmatch(r"[0-9]+", headers["Retry-After"]), headers


# -- strategies ---------------------------------------------------------------------------------
FIELDS = ["phone", "id_last6", "code", "lookup_id", "account_count", "apps", "error"]
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**62, max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8) | st.sampled_from(FIELDS), inner, max_size=4),
                           max_leaves=12)
phones = st.from_regex(r"(\+86 ?)?1[3-9][0-9]{9}", fullmatch=True) | st.text(max_size=20)
field_values = {
    "phone": phones,
    "id_last6": st.from_regex(r"[0-3][0-9]{4}[0-9Xx]", fullmatch=True) | json_values,
    "code": st.from_regex(r"[0-9]{6}", fullmatch=True) | json_values,
    "lookup_id": st.text(max_size=140) | json_values,
    "account_count": st.integers(min_value=-5, max_value=2**64) | json_values,
    "apps": st.dictionaries(st.text(max_size=10), st.integers(min_value=-1, max_value=10**6), max_size=4)
    | json_values,
    "error": st.text(max_size=300) | json_values,
}
# Objects with the routes' own fields (valid or not), so examples get past "not an object".
route_objects = st.fixed_dictionaries({}, optional={k: v for k, v in field_values.items()}).flatmap(
    lambda d: st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(lambda extra: {**extra, **d}))
# Strings carrying lone surrogates and other escapes json.dumps writes as \uXXXX.
nasty_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=30)


def _nest(depth: int, inner: bytes) -> bytes:
    return b"[" * depth + inner + b"]" * depth


raw_bodies = st.one_of(
    route_objects.map(lambda d: json.dumps(d).encode()),
    route_objects.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda key, text: json.dumps({key: text}).encode(), st.sampled_from(FIELDS), nasty_text),
    st.builds(_nest, st.integers(min_value=0, max_value=3000), st.sampled_from([b"", b"1", b'{"phone": 1}'])),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(min_value=16 * 1024 - 8, max_value=70 * 1024).map(lambda n: b'{"error": "' + b"x" * n + b'"}'),
)
content_types = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded",
    "APPLICATION/JSON", "application/xml", "multipart/form-data; boundary=x", "", "*/*", "application/*",
    "text/html", "application/octet-stream", "image/png", "json", ";", "application/json;;;",
]) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=80)
timestamps = st.sampled_from(["²", "1" * 5000, "", "-1", "0"]) | st.integers(min_value=0, max_value=10**13).map(
    str) | header_text
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
param = st.text(alphabet=st.characters(exclude_characters="/?#", exclude_categories=["Cs"]), max_size=50)
companies = st.sampled_from(["tencent", "meituan", "nobody", "", "TENCENT"]) | param
paths = st.one_of(
    st.sampled_from(["/", "/v1/companies", "/v1/verification-codes", "/v1/queries", "/v1/openapi.json"]),
    param.map(lambda p: f"/v1/queries/{p}"),
    companies.map(lambda c: f"/v1/partners/{c}/results"),
)


# -- in-process, through Chalice's test client --------------------------------------------------
@fuzz(EXAMPLES["in_process"])
@given(body=raw_bodies, content_type=content_types)
def test_any_body_to_the_code_route_is_answered_below_500_in_the_spec_shape(stack: LocalStack, api: Client, body: bytes,
                                                                            content_type: str) -> None:
    response = api.http.post("/v1/verification-codes", headers={"Content-Type": content_type}, body=body)
    check(response.status_code, response.headers, response.body, "POST")


@fuzz(EXAMPLES["in_process"])
@given(body=raw_bodies, content_type=content_types)
def test_any_body_to_the_query_route_is_answered_below_500_in_the_spec_shape(stack: LocalStack, api: Client,
                                                                             body: bytes, content_type: str) -> None:
    response = api.http.post("/v1/queries", headers={"Content-Type": content_type}, body=body)
    check(response.status_code, response.headers, response.body, "POST")


@fuzz(EXAMPLES["in_process"])
@given(body=raw_bodies, company=companies, signed=st.booleans(), timestamp=timestamps, signature=header_text,
       content_type=content_types)
def test_any_partner_callback_signed_or_not_is_answered_below_500_in_the_spec_shape(
        stack: LocalStack, api: Client, body: bytes, company: str, signed: bool, timestamp: str, signature: str,
        content_type: str) -> None:
    if signed and f"yztc/partners/{company}" in stack.secrets:
        headers = signing.signed_headers(stack.secrets[f"yztc/partners/{company}"], body)
    else:
        headers = {"X-Timestamp": timestamp, "X-Signature": signature}
    headers["Content-Type"] = "application/json" if signed else content_type
    response = api.http.post(f"/v1/partners/{company}/results", headers=headers, body=body)
    check(response.status_code, response.headers, response.body, "POST")


@fuzz(EXAMPLES["in_process"])
@given(method=st.sampled_from(METHODS), path=paths, content_type=content_types, body=raw_bodies | st.just(b""),
       extra=st.dictionaries(st.sampled_from(["Accept", "X-Timestamp", "X-Signature", "Authorization",
                                              "Content-Encoding"]), header_text, max_size=3))
def test_any_method_path_and_headers_on_a_route_are_answered_below_500_in_the_spec_shape(
        stack: LocalStack, api: Client, method: str, path: str, content_type: str, body: bytes,
        extra: dict[str, str]) -> None:
    response = api.http.request(method, path, headers={**extra, "Content-Type": content_type}, body=body)
    check(response.status_code, response.headers, response.body, method)


# -- over HTTP, through the local server (unknown paths, any method, raw headers) -----------------
segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~%+", max_size=20)
any_paths = st.one_of(
    paths.filter(lambda p: p.isascii() and p.isprintable() and " " not in p),
    st.lists(segment, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["/v1/Verification-Codes", "/v1/queries/", "/v1/partners/tencent/results/extra", "//", "/v1//"]),
)
http_methods = st.sampled_from([*METHODS, "TRACE", "CONNECT", "PROPFIND", "BREW"])
latin1_header = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=60)


@fuzz(EXAMPLES["http"])
@given(method=http_methods, path=any_paths, body=raw_bodies | st.just(b""),
       content_type=content_types.filter(lambda c: c.isascii()),
       extra=st.dictionaries(st.sampled_from(["Accept", "X-Timestamp", "X-Signature", "Authorization"]),
                             latin1_header, max_size=2))
def test_any_request_over_http_is_answered_below_500_in_the_spec_shape(
        stack: LocalStack, method: str, path: str, body: bytes, content_type: str, extra: dict[str, str]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", API_PORT, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in {**extra, "Content-Type": content_type}.items():
            connection.putheader(name, value.encode("latin-1"))
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        check(response.status, response.headers, data, method)
    finally:
        connection.close()

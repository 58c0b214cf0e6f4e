"""The local API server: Chalice's local gateway plus the local-only SMS outbox page.

/local/sms exists only here: deployed stages serve app.py, which has no such route.

It also stands in for what API Gateway answers itself in production, in the SPEC error shape as
infra/'s Gateway Responses make it there: an unknown path is 404 not_found (Chalice's local gateway
says 403 "Missing Authentication Token", as API Gateway does before its Gateway Response), a body
over the largest route limit is 413 before it is read, a malformed Content-Length is 400. And it gives
each request its client's socket address as `requestContext.identity.sourceIp`, as API Gateway does.
"""
from __future__ import annotations

import html
import json
import re
import threading
from http import HTTPStatus
from typing import Any

from chalice import Chalice
from chalice.config import Config
from chalice.local import ChaliceRequestHandler, LocalGatewayException, RouteMatcher

from chalicelib import errors
from chalicelib.api.requests import PARTNER_BODY_LIMIT
from chalicelib.api.responses import error_response
from local.lambdas import acting_as

_CONTENT_LENGTH = re.compile(r"[0-9]{1,12}")


class _Refused(Exception):
    def __init__(self, error: errors.ServiceError) -> None:
        super().__init__(error.code)
        self.error = error


class _PerThread:
    """An attribute of the app kept per thread."""

    def __init__(self) -> None:
        self._values = threading.local()

    def __get__(self, app: Any, owner: Any = None) -> Any:
        return self if app is None else getattr(self._values, "value", None)

    def __set__(self, app: Any, value: Any) -> None:
        self._values.value = value


def serve_requests_concurrently(app: Chalice) -> None:
    """Give each thread its own `app.current_request` (and `lambda_context`).

    Chalice keeps the request being handled on the app object, which Lambda calls one request at a time; its
    local server handles requests in threads, so two at once overwrite each other's (aws/chalice#759, never fixed
    upstream). Here 26 operators call back at once, and a callback that read another's body would fail its
    signature with a 401 its operator does not retry: the answer lost, the reply missing a partner that had
    answered, as a few loaded test runs saw. A lock around each request would make 132 callbacks wait in line."""
    if getattr(type(app), "_per_thread", False):
        return
    for name in ("current_request", "lambda_context"):
        app.__dict__.pop(name, None)
    app.__class__ = type(f"PerThread{type(app).__name__}", (type(app),),
                         {"current_request": _PerThread(), "lambda_context": _PerThread(), "_per_thread": True})


class LocalRequestHandler(ChaliceRequestHandler):
    outbox = ".local/sms-outbox.jsonl"

    def __init__(self, request: Any, client_address: Any, server: Any, app_object: Chalice,
                 config: Config) -> None:
        self._routes = RouteMatcher(list(app_object.routes))
        super().__init__(request, client_address, server, app_object, config)

    def log_message(self, format: str, *args: object) -> None:
        pass  # request lines would bury the SMS lines on the console

    def _generic_handle(self) -> None:
        if self.path.split("?")[0] in ("/local/sms", "/local/sms.json"):
            self._outbox()
            return
        try:
            self._routes.match_route(self.path)
        except ValueError:
            # No route: answered here, before Chalice's gateway (which formats headers into its
            # 403 body and fails on a non-ASCII Authorization header). The body is not read.
            self.close_connection = True
            self._send_spec_error(errors.NotFound("没有这个地址。"))
            return
        # The client's real socket address as the source IP, as API Gateway gives it (SPEC §7): Chalice's
        # local gateway says 127.0.0.1 for everyone, and per-client rules need tests from 127.0.0.2.
        self.local_gateway.event_converter.LOCAL_SOURCE_IP = str(self.client_address[0])
        try:
            with acting_as("APIHandler"):
                super()._generic_handle()
        except _Refused as refused:
            self._send_spec_error(refused.error)

    def _parse_payload(self) -> tuple[dict[str, Any], bytes | None]:
        length = (self.headers.get("content-length") or "0").strip()
        if not _CONTENT_LENGTH.fullmatch(length):
            self.close_connection = True  # where the body ends is unknown
            raise _Refused(errors.InvalidRequest("Content-Length无效。"))
        if int(length) > PARTNER_BODY_LIMIT:
            self.close_connection = True  # the body is not read
            raise _Refused(errors.PayloadTooLarge())
        return super()._parse_payload()

    def _send_error_response(self, error: LocalGatewayException) -> None:
        # The local gateway raises only when no route matches (checked above) or for authorizers,
        # which the app has none of.
        self._send_spec_error(errors.NotFound("没有这个地址。"))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a method it has no do_X for, a malformed request line or
        header block), in the SPEC shape rather than its HTML page."""
        self.close_connection = True
        if code == HTTPStatus.NOT_IMPLEMENTED:  # TRACE, CONNECT, made-up methods
            self._send_spec_error(errors.MethodNotAllowed())
        else:
            self._send_spec_error(errors.InvalidRequest("请求格式不正确。"))

    def _send_spec_error(self, error: errors.ServiceError) -> None:
        response = error_response(error)
        self._send_http_response(response.status_code, dict(response.headers), response.body)

    def _send_http_response_with_body(self, code: int, headers: dict[str, Any], body: str | bytes) -> None:
        if self.command != "HEAD":
            super()._send_http_response_with_body(code, headers, body)
            return
        # HEAD: the headers GET would send, and no body (one would corrupt a kept-alive connection).
        self.send_response(code)
        self.send_header("Content-Length", str(len(body.encode() if isinstance(body, str) else body)))
        self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        self._send_headers(headers)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _generic_handle

    def _messages(self) -> list[dict[str, str]]:
        try:
            with open(self.outbox, encoding="utf-8") as fh:
                return [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            return []

    def _outbox(self) -> None:
        messages = list(reversed(self._messages()))
        if self.path.startswith("/local/sms.json"):
            body = json.dumps({"messages": messages}, ensure_ascii=False).encode()
            content_type = "application/json; charset=utf-8"
        else:
            rows = "".join(
                f"<li><span class=meta>{html.escape(m['sent_at'])} → {html.escape(m['phone'])}</span>"
                f"<p>{html.escape(m['message'])}</p></li>" for m in messages) or "<li>暂无短信</li>"
            body = (
                "<!doctype html><html lang=zh-CN><head><meta charset=utf-8>"
                "<meta name=viewport content='width=device-width,initial-scale=1'>"
                "<title>本地短信收件箱</title><style>body{font:16px/1.5 sans-serif;margin:1rem;max-width:40rem}"
                "li{border-bottom:1px solid #ccc;padding:.5rem 0;list-style:none}.meta{color:#555;font-size:.85rem}"
                "ul{padding:0}</style></head><body><h1>本地短信收件箱</h1>"
                "<p>仅在本地运行时存在：这里显示发往各号码的短信（验证码与查询结果）。</p>"
                f"<ul id=outbox>{rows}</ul></body></html>").encode()
            content_type = "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

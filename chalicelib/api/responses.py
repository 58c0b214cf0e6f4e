"""The one place where domain exceptions become HTTP responses."""
from __future__ import annotations

import json
from typing import Any

from chalice import Response

from chalicelib import errors

STATUS_BY_ERROR: dict[type[errors.ServiceError], int] = {
    errors.InvalidRequest: 400,
    errors.InvalidPhone: 400,
    errors.InvalidIdLast6: 400,
    errors.InvalidCodeFormat: 400,
    errors.InvalidCompany: 400,
    errors.BadSignature: 401,
    errors.WrongCode: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.NothingToDispute: 409,
    errors.QueryLimit: 429,
    errors.TooManyRequests: 429,
    errors.DisputeLimit: 429,
    errors.ServiceBusy: 503,
}

JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        body=json.dumps(body, ensure_ascii=False),
        status_code=status,
        headers={**JSON_HEADERS, **(headers or {})},
    )


def error_response(exc: errors.ServiceError) -> Response:
    # The nearest class in the mapping: a subclass answers as its family does.
    status = next((STATUS_BY_ERROR[cls] for cls in type(exc).__mro__ if cls in STATUS_BY_ERROR), 500)
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(exc.retry_after)))
    body = {"error": {"code": exc.code, "message": exc.message}}
    return json_response(body, status, headers)


def parse_json_object(raw: bytes | None) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequest."""
    try:
        body = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidRequest("请求体必须是JSON对象。") from exc
    if not isinstance(body, dict):
        raise errors.InvalidRequest("请求体必须是JSON对象。")
    return body


def require_fields(body: dict[str, Any], *names: str) -> list[Any]:
    missing = [name for name in names if body.get(name) is None]
    if missing:
        raise errors.InvalidRequest(f"缺少字段：{', '.join(missing)}。")
    return [body[name] for name in names]

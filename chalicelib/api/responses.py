"""The one place where domain exceptions become HTTP responses."""
from __future__ import annotations

import json
from typing import Any

from chalice import Response

from chalicelib import errors
from chalicelib.api.requests import parse_json_object, require_fields  # noqa: F401 (moved; old import path)

STATUS_BY_ERROR: dict[type[errors.ServiceError], int] = {
    errors.InvalidRequest: 400,
    errors.InvalidPhone: 400,
    errors.InvalidIdLast6: 400,
    errors.InvalidName: 400,
    errors.InvalidIdNumber: 400,
    errors.InvalidCodeFormat: 400,
    errors.InvalidCompany: 400,
    errors.InvalidOperator: 400,
    errors.BadSignature: 401,
    errors.WrongCode: 403,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.Conflict: 409,
    errors.NothingToDispute: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.ChallengeRequired: 428,
    errors.QueryLimit: 429,
    errors.ReleaseLimit: 429,
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


def error_response(exc: errors.ServiceError, headers: dict[str, str] | None = None) -> Response:
    # The nearest class in the mapping: a subclass answers as its family does.
    status = next((STATUS_BY_ERROR[cls] for cls in type(exc).__mro__ if cls in STATUS_BY_ERROR), 500)
    headers = dict(headers or {})
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(exc.retry_after)))
    body: dict[str, Any] = {"error": {"code": exc.code, "message": exc.message}}
    if isinstance(exc, errors.ChallengeRequired):
        body["challenge"] = exc.challenge  # SPEC §3: the 428 carries a fresh challenge
    return json_response(body, status, headers)


# Chalice answers some requests itself, before a view runs, with {"Code", "Message"} bodies:
# each becomes the SPEC error of the same meaning (anything else it makes is a defect: 500).
_CHALICE_ERRORS: dict[int, type[errors.ServiceError]] = {
    400: errors.InvalidRequest,
    405: errors.MethodNotAllowed,
    415: errors.UnsupportedMediaType,
}
_KEPT_HEADERS = ("Allow",)


def conform(response: Response) -> Response:
    """A response Chalice generated itself, in the SPEC error shape; any other response as is."""
    body = response.body
    if not (isinstance(body, dict) and set(body) == {"Code", "Message"}):
        return response
    error_class = _CHALICE_ERRORS.get(response.status_code, errors.ServiceError)
    kept = {k: str(v) for k, v in response.headers.items() if k in _KEPT_HEADERS}
    return error_response(error_class(), headers=kept)

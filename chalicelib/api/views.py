"""What every route's view shares: the body types it takes, reading the request, and the error contract."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from chalice import Response
from chalice.app import Request

from chalicelib import errors
from chalicelib.api.requests import parse_json_object, require_fields
from chalicelib.api.responses import error_response, json_response
from chalicelib.network import client_network
from chalicelib.wiring import logger

# The content types a body-reading route takes (any other is 415); the body is read as JSON whatever the type says.
BODY_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded"]


def raw_body(request: Request) -> bytes:
    raw = request.raw_body
    # surrogatepass: a str body holding a lone surrogate becomes bytes that strict UTF-8 decoding
    # refuses later (a 400), instead of an encoding error here (a 500).
    return raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw or b"")


def json_fields(request: Request, *names: str) -> tuple[dict[str, Any], list[Any]]:
    """The body as a JSON object, and the values of the fields it must have (400 invalid_request otherwise)."""
    body = parse_json_object(raw_body(request))
    return body, require_fields(body, *names)


def client_ip(request: Request) -> str:
    """The client as SPEC §3 counts it: its source address as API Gateway gives it (X-Forwarded-For is the
    client's to write, so never read). An IPv6 client is its /64: one subscriber's line or host gets a whole
    /64 and could otherwise speak from 2^64 addresses, each a new client for the per-client limits."""
    identity = (request.context or {}).get("identity") or {}
    return client_of(str(identity.get("sourceIp") or "unknown"))


def client_of(source_ip: str) -> str:
    return client_network(source_ip, 64)


def json_api(view: Callable[..., Response | dict[str, Any]]) -> Callable[..., Response]:
    """Domain errors become SPEC §3 error bodies; nothing else ever leaks out."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            result = view(*args, **kwargs)
        except errors.ServiceError as exc:
            return error_response(exc)
        except Exception:
            logger.exception("unhandled error", extra={"route": view.__name__})
            return error_response(errors.ServiceError())
        return result if isinstance(result, Response) else json_response(result)

    return wrapper

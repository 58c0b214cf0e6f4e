"""What every request gets, whatever its route: the body size limit, the SPEC error shape, and 405 with Allow."""
from __future__ import annotations

from collections.abc import Callable

from chalice import Chalice, Response
from chalice.app import Request

from chalicelib import errors
from chalicelib.api import requests as api_requests
from chalicelib.api.responses import conform, error_response
from chalicelib.api.views import raw_body

ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def spec_errors(request: Request, get_response: Callable[[Request], Response]) -> Response:
    """HTTP middleware. Every request, whatever its route: the body size limit first, and whatever Chalice
    answers itself (wrong method, unsupported media type, an escaped exception) in the SPEC error shape."""
    try:
        api_requests.check_size(raw_body(request), request.path)
    except errors.ServiceError as exc:
        return error_response(exc)
    except Exception:  # an undecodable base64 body: API Gateway never sends one
        return error_response(errors.InvalidRequest())
    return conform(get_response(request))


def refuse_other_methods(app: Chalice) -> None:
    """Every method a path does not serve answers 405 method_not_allowed, with Allow.

    Registered as routes so that API Gateway passes them to us: a method it does not know is
    otherwise its own 403 "Missing Authentication Token" (rewritten to 404 by a Gateway Response,
    which cannot tell a wrong method from a wrong path). Any content type, so 405 wins over 415.
    Called once, after every blueprint is registered (it reads the app's routes).
    """
    for path, served in list(app.routes.items()):
        others = [m for m in ALL_METHODS if m not in served]
        if others:
            app.route(path, methods=others, content_types=["*/*"], name=f"refuse{path}")(
                _method_not_allowed(", ".join(served)))


def _method_not_allowed(allowed: str) -> Callable[..., Response]:
    def refuse(**_path_params: str) -> Response:
        return error_response(errors.MethodNotAllowed(), headers={"Allow": allowed})

    return refuse

"""What anyone may read (SPEC §3): the H5 page, the API description, the companies a query asks."""
from __future__ import annotations

from typing import Any

from chalice import Blueprint, Response

from chalicelib import pages, registry
from chalicelib.api.views import json_api

bp = Blueprint(__name__)


@bp.route("/", methods=["GET"])
def index() -> Response:
    return Response(body=pages.index_html(), status_code=200,
                    headers={"Content-Type": "text/html; charset=utf-8"})


@bp.route("/v1/companies", methods=["GET"])
@json_api
def list_companies() -> dict[str, Any]:
    return {"companies": [c.public() for c in registry.companies()]}


@bp.route("/v1/operators", methods=["GET"])
@json_api
def list_operators() -> dict[str, Any]:
    """The operators a card dispute may name (SPEC §10.1), in registry order, for the page's form."""
    return {"operators": [o.public_operator() for o in registry.operators()]}


@bp.route("/v1/openapi.json", methods=["GET"])
def openapi_description() -> Response:
    return Response(body=pages.openapi_json(), status_code=200,
                    headers={"Content-Type": "application/json; charset=utf-8"})

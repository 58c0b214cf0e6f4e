"""The citizen's account query (SPEC §3): a proof-of-work challenge, a code, the query, its status.

Domain modules are imported inside the views (see chalicelib/wiring.py): `import app` loads none of them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chalice import Blueprint, Response

from chalicelib import errors, telemetry, wiring
from chalicelib.api.responses import json_response
from chalicelib.api.views import BODY_TYPES, client_ip, json_api, json_fields

if TYPE_CHECKING:
    from chalicelib.partners.kinds import LookupKind
    from chalicelib.queries import Accepted

bp = Blueprint(__name__)


@bp.route("/v1/challenges", methods=["GET"])
@json_api
def new_challenge() -> dict[str, Any]:
    """SPEC §3: an ALTCHA v1 challenge, for a code request beyond the free ones."""
    return wiring.code_service().challenge()


@bp.route("/v1/verification-codes", methods=["POST"], content_types=BODY_TYPES)
@json_api
def request_code() -> Response:
    from chalicelib.validation import normalise_phone

    request = bp.current_request
    body, (phone,) = json_fields(request, "phone")
    issued = wiring.code_service().issue(normalise_phone(phone), client_ip(request), body.get("altcha"))
    telemetry.count("CodeSent")
    return json_response({"expires_in": issued.expires_in, "resend_after": issued.resend_after}, 202)


@bp.route("/v1/queries", methods=["POST"], content_types=BODY_TYPES)
@json_api
def submit_query() -> Response:
    from chalicelib.validation import check_code_format, normalise_id_last6, normalise_phone

    request = bp.current_request
    _body, (phone, id_last6, code) = json_fields(request, "phone", "id_last6", "code")
    phone, id_last6, code = normalise_phone(phone), normalise_id_last6(id_last6), check_code_format(code)
    wiring.intake().check_client(client_ip(request))
    return accepted_response(wiring.intake().accept(phone, id_last6, code, client_ip(request)), "QueryAccepted")


def accepted_response(accepted: Accepted, metric: str) -> Response:
    """The same 202 whatever the carrier will say (SPEC §3, §9): the outcome goes only to the phone."""
    from chalicelib.config import settings

    wiring.logger.info("query accepted", extra={"query_id": accepted.query_id})
    telemetry.count(metric)
    # 48: SPEC §3's promise to the citizen, whatever QUERY_DEADLINE_SECONDS a test or local stack runs with.
    return json_response({"query_id": accepted.query_id, "status": "accepted", "reply_within_hours": 48,
                          "sms_sender": settings().sms_sender_id}, 202)


@bp.route("/v1/queries/{query_id}", methods=["GET"])
@json_api
def query_status(query_id: str) -> dict[str, Any]:
    from chalicelib.partners.kinds import ACCOUNTS

    return status_of(query_id, ACCOUNTS)


def status_of(query_id: str, kind: LookupKind) -> dict[str, Any]:
    """A query's status (accounts, cards or a release); an id that cannot be ours is not found before any read."""
    from chalicelib import queries
    from chalicelib.contracts import QUERY_ID

    if not QUERY_ID.fullmatch(query_id):
        raise errors.NotFound("未找到该查询。")
    return queries.status_of(query_id, kind)

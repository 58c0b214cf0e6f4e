"""A recycled number's release (SPEC §10.2): one request asks every company to unbind the accounts bound to the
number before the current holder's subscription began; one result SMS. Its status, never its counts."""
from __future__ import annotations

from typing import Any

from chalice import Blueprint, Response

from chalicelib import telemetry, wiring
from chalicelib.api.queries import status_of
from chalicelib.api.responses import json_response
from chalicelib.api.views import BODY_TYPES, client_ip, json_api, json_fields

bp = Blueprint(__name__)


@bp.route("/v1/number-releases", methods=["POST"], content_types=BODY_TYPES)
@json_api
def submit_release() -> Response:
    from chalicelib.config import settings
    from chalicelib.validation import check_code_format, normalise_id_last6, normalise_phone

    request = bp.current_request
    _body, (phone, id_last6, code) = json_fields(request, "phone", "id_last6", "code")
    phone, id_last6, code = normalise_phone(phone), normalise_id_last6(id_last6), check_code_format(code)
    wiring.intake().check_client(client_ip(request))
    accepted = wiring.intake().accept_release(phone, id_last6, code, client_ip(request))
    wiring.logger.info("release accepted", extra={"release_id": accepted.query_id})
    telemetry.count("ReleaseAccepted")
    # The same 202 whatever the carrier will say: the outcome goes only to the phone (SPEC §10.2).
    return json_response({"release_id": accepted.query_id, "status": "accepted", "respond_within_days": 15,
                          "sms_sender": settings().sms_sender_id}, 202)


@bp.route("/v1/number-releases/{release_id}", methods=["GET"])
@json_api
def release_status(release_id: str) -> dict[str, Any]:
    from chalicelib.partners.kinds import RELEASES

    return status_of(release_id, RELEASES)

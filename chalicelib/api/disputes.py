"""The citizen's dispute (SPEC §8): "this account is not mine", sent to one company, and its status."""
from __future__ import annotations

from typing import Any

from chalice import Blueprint, Response

from chalicelib import errors, registry, telemetry, wiring
from chalicelib.api.responses import json_response
from chalicelib.api.views import BODY_TYPES, client_ip, json_api, json_fields

bp = Blueprint(__name__)


@bp.route("/v1/disputes", methods=["POST"], content_types=BODY_TYPES)
@json_api
def submit_dispute() -> Response:
    from chalicelib.validation import check_code_format, normalise_phone

    request = bp.current_request
    _body, (phone, code, company) = json_fields(request, "phone", "code", "company")
    phone, code = normalise_phone(phone), check_code_format(code)
    if not isinstance(company, str) or registry.company(company) is None:
        raise errors.InvalidCompany()
    wiring.intake().check_client(client_ip(request))
    accepted = wiring.dispute_intake().accept(phone, code, company, client_ip(request))
    wiring.logger.info("dispute accepted", extra={"dispute_id": accepted.dispute_id, "company": accepted.company})
    telemetry.count("DisputeSubmitted", company=accepted.company)
    return json_response({"dispute_id": accepted.dispute_id, "status": "submitted", "company": accepted.company,
                          "respond_within_days": 15}, 202)


@bp.route("/v1/disputes/{dispute_id}", methods=["GET"])
@json_api
def dispute_status(dispute_id: str) -> dict[str, Any]:
    from chalicelib.disputes.intake import status_of

    return status_of(dispute_id)

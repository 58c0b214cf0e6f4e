"""The citizen's disputes: "this account is not mine" to one company (SPEC §8), "this card is not mine"
to one operator (SPEC §10.1), and their status."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chalice import Blueprint, Response

from chalicelib import errors, registry, telemetry, wiring
from chalicelib.api.responses import json_response
from chalicelib.api.views import BODY_TYPES, client_ip, json_api, json_fields

if TYPE_CHECKING:
    from chalicelib.disputes.intake import AcceptedDispute

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
    return _accepted("company", wiring.dispute_intake().accept(phone, code, company, client_ip(request)))


@bp.route("/v1/card-disputes", methods=["POST"], content_types=BODY_TYPES)
@json_api
def submit_card_dispute() -> Response:
    from chalicelib.cards.validation import normalise_id_number, normalise_name
    from chalicelib.throttle import china_today
    from chalicelib.validation import check_code_format, normalise_phone

    request = bp.current_request
    _body, (name, id_number, phone, code, operator) = json_fields(request, "name", "id_number", "phone", "code",
                                                                  "operator")
    name, id_number = normalise_name(name), normalise_id_number(id_number, china_today())
    phone, code = normalise_phone(phone), check_code_format(code)
    if not isinstance(operator, str) or registry.operator(operator) is None:
        raise errors.InvalidOperator()
    wiring.intake().check_client(client_ip(request))
    accepted = wiring.dispute_intake().accept_cards(name, id_number, phone, code, operator, client_ip(request))
    return _accepted("operator", accepted)


def _accepted(partner_field: str, accepted: AcceptedDispute) -> Response:
    wiring.logger.info("dispute accepted", extra={"dispute_id": accepted.dispute_id, "company": accepted.partner})
    telemetry.count("DisputeSubmitted", company=accepted.partner)
    return json_response({"dispute_id": accepted.dispute_id, "status": "submitted", partner_field: accepted.partner,
                          "respond_within_days": 15}, 202)


@bp.route("/v1/disputes/{dispute_id}", methods=["GET"])
@json_api
def dispute_status(dispute_id: str) -> dict[str, Any]:
    from chalicelib.disputes.intake import status_of

    return status_of(dispute_id)

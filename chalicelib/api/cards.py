"""The phone cards registered to my ID (SPEC §9): the query and its status."""
from __future__ import annotations

from typing import Any

from chalice import Blueprint, Response

from chalicelib import wiring
from chalicelib.api.queries import accepted_response, status_of
from chalicelib.api.views import BODY_TYPES, client_ip, json_api, json_fields

bp = Blueprint(__name__)


@bp.route("/v1/card-queries", methods=["POST"], content_types=BODY_TYPES)
@json_api
def submit_card_query() -> Response:
    from chalicelib.cards.validation import normalise_id_number, normalise_name
    from chalicelib.throttle import china_today
    from chalicelib.validation import check_code_format, normalise_phone

    request = bp.current_request
    _body, (name, id_number, phone, code) = json_fields(request, "name", "id_number", "phone", "code")
    name, id_number = normalise_name(name), normalise_id_number(id_number, china_today())
    phone, code = normalise_phone(phone), check_code_format(code)
    wiring.intake().check_client(client_ip(request))
    return accepted_response(wiring.intake().accept_cards(name, id_number, phone, code, client_ip(request)),
                             "CardQueryAccepted")


@bp.route("/v1/card-queries/{query_id}", methods=["GET"])
@json_api
def card_query_status(query_id: str) -> dict[str, Any]:
    from chalicelib.partners.kinds import CARDS

    return status_of(query_id, CARDS)

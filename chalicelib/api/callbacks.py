"""What partners send back, signed (SPEC §4): companies' and operators' results, companies' dispute answers."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chalice import Blueprint

from chalicelib import wiring
from chalicelib.api.requests import parse_json_object
from chalicelib.api.views import BODY_TYPES, json_api, raw_body

if TYPE_CHECKING:
    from chalicelib.partners.kinds import LookupKind

bp = Blueprint(__name__)


@bp.route("/v1/partners/{company}/results", methods=["POST"], content_types=BODY_TYPES)
@json_api
def partner_result(company: str) -> dict[str, Any]:
    from chalicelib.partners.kinds import ACCOUNTS

    return _record_callback(ACCOUNTS, company)


@bp.route("/v1/operators/{operator}/results", methods=["POST"], content_types=BODY_TYPES)
@json_api
def operator_result(operator: str) -> dict[str, Any]:
    from chalicelib.partners.kinds import CARDS

    return _record_callback(CARDS, operator)


def _record_callback(kind: LookupKind, partner_id: str) -> dict[str, Any]:
    request = bp.current_request
    raw = raw_body(request)
    partner = wiring.lookups().verify_callback(kind, partner_id, dict(request.headers), raw)
    wiring.lookups().record_callback(kind, partner, parse_json_object(raw))
    return {"status": "recorded"}


@bp.route("/v1/partners/{company}/disputes", methods=["POST"], content_types=BODY_TYPES)
@json_api
def partner_dispute_answer(company: str) -> dict[str, Any]:
    from chalicelib.partners.kinds import ACCOUNTS

    request = bp.current_request
    raw = raw_body(request)
    partner = wiring.lookups().verify_callback(ACCOUNTS, company, dict(request.headers), raw)
    wiring.disputes().record_callback(partner, parse_json_object(raw))
    return {"status": "recorded"}

"""What partners send back, signed (SPEC §4): companies' and operators' results and dispute answers (§8, §10.1),
companies' release answers (§10.2)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chalice import Blueprint

from chalicelib import wiring
from chalicelib.api.requests import parse_json_object
from chalicelib.api.views import BODY_TYPES, json_api, raw_body

if TYPE_CHECKING:
    from chalicelib.partners.kinds import LookupKind
    from chalicelib.registry import Partner

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


@bp.route("/v1/partners/{company}/releases", methods=["POST"], content_types=BODY_TYPES)
@json_api
def partner_release_answer(company: str) -> dict[str, Any]:
    from chalicelib.partners.kinds import RELEASES

    return _record_callback(RELEASES, company)


def _record_callback(kind: LookupKind, partner_id: str) -> dict[str, Any]:
    return _verified(kind, partner_id, lambda partner, body: wiring.lookups().record_callback(kind, partner, body))


@bp.route("/v1/partners/{company}/disputes", methods=["POST"], content_types=BODY_TYPES)
@json_api
def partner_dispute_answer(company: str) -> dict[str, Any]:
    from chalicelib.partners.kinds import ACCOUNTS

    return _record_dispute_answer(ACCOUNTS, company)


@bp.route("/v1/operators/{operator}/disputes", methods=["POST"], content_types=BODY_TYPES)
@json_api
def operator_dispute_answer(operator: str) -> dict[str, Any]:
    from chalicelib.partners.kinds import CARDS

    return _record_dispute_answer(CARDS, operator)


def _record_dispute_answer(kind: LookupKind, partner_id: str) -> dict[str, Any]:
    return _verified(kind, partner_id, lambda partner, body: wiring.disputes().record_callback(kind, partner, body))


def _verified(kind: LookupKind, partner_id: str, record: Callable[[Partner, Any], None]) -> dict[str, Any]:
    """Signature first (SPEC §4: 401 before anything is parsed), then the body, then `record`."""
    request = bp.current_request
    raw = raw_body(request)
    partner = wiring.lookups().verify_callback(kind, partner_id, dict(request.headers), raw)
    record(partner, parse_json_object(raw))
    return {"status": "recorded"}

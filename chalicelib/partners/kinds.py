"""What is looked up, and from whom: one engine, two kinds of lookup (SPEC §4, §9).

Internet accounts ask the companies about a phone number; phone cards ask the telecom
operators about an ID number and name. Everything else — the fan-out, the reply claim, the
backlog, the circuit breakers, paced replay, 暂未返回 at the deadline — is shared code.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from chalicelib import registry
from chalicelib.registry import Company


class Kind(StrEnum):
    ACCOUNTS = "accounts"
    CARDS = "cards"


@dataclass(frozen=True)
class LookupKind:
    kind: Kind
    partners: Callable[[], tuple[Company, ...]]  # the registry, in its order
    request_path: str  # POST {base_url}{request_path}
    callback_route: str  # POST /v1/{callback_route}/{id}/results
    count_field: str  # what a partner's answer counts
    sealed: tuple[str, ...]  # the query record's sealed fields a partner request carries (data minimisation)
    breakdowns: bool  # may an answer carry a per-app breakdown?

    def partner(self, partner_id: str) -> Company | None:
        return next((p for p in self.partners() if p.id == partner_id), None)


ACCOUNTS = LookupKind(Kind.ACCOUNTS, registry.companies, "/lookups", "partners", "account_count", ("phone",), True)
CARDS = LookupKind(Kind.CARDS, registry.operators, "/card-lookups", "operators", "card_count",
                   ("id_number", "name"), False)
KINDS: dict[str, LookupKind] = {k.kind.value: k for k in (ACCOUNTS, CARDS)}
# Every route a partner or an operator calls (results, disputes…): the larger body limit, the WAF's
# exemption from the per-IP rate rule and the resource policy's partner networks all come from here.
PARTNER_ROUTE_PREFIXES: tuple[str, ...] = tuple(dict.fromkeys(f"/v1/{k.callback_route}/" for k in KINDS.values()))


def kind_of(value: str | None) -> LookupKind:
    """A stored kind; records written before there were kinds are account lookups."""
    return KINDS.get(value or Kind.ACCOUNTS, ACCOUNTS)

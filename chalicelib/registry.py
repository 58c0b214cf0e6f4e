"""Participating partners (companies and telecom operators) and carriers, as data.

A partner joins by a registry entry, a partner endpoint and a secret: no code
change. The registry file is bundled with the functions; a stage may point
COMPANY_REGISTRY_FILE / CARRIER_REGISTRY_FILE elsewhere (the local stack does).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from chalicelib.config import settings


@dataclass(frozen=True)
class Partner:
    """A partner the service asks: an internet company (accounts, disputes) or a telecom operator (cards).

    Both kinds share one protocol and one delivery engine, so one type; which registry an entry
    comes from (companies() or operators()) says which kind it is."""

    id: str
    name: str
    details: str
    unbind: str
    hotline: str
    base_url: str
    secret_name: str
    apps: tuple[str, ...] = ()  # the app names a per-app breakdown may use (SPEC §4, §5)
    max_requests_per_second: int = 10  # the pace of a backlog replay after an outage (SPEC §4)
    group: str = ""  # operators: 中国移动 / 中国联通 / 中国电信 / 转售企业 (dashboards and the page group by it)
    group_id: str = ""  # the group's ASCII key (cmcc…): CloudWatch dimension values must be ASCII

    def public(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "details": self.details,
                "unbind": self.unbind, "hotline": self.hotline}

    def public_operator(self) -> dict[str, str]:
        """What the page's "not my card" form lists (GET /v1/operators)."""
        return {"id": self.id, "name": self.name, "group": self.group, "hotline": self.hotline}


@dataclass(frozen=True)
class Carrier:
    id: str
    name: str
    networks: tuple[str, ...]
    base_url: str
    secret_name: str


@functools.cache
def companies() -> tuple[Partner, ...]:
    with open(settings().company_registry_file, encoding="utf-8") as fh:
        return tuple(Partner(**{**entry, "apps": tuple(entry.get("apps", ()))})
                     for entry in json.load(fh)["companies"])


def company(company_id: str) -> Partner | None:
    return next((c for c in companies() if c.id == company_id), None)


@functools.cache
def operators() -> tuple[Partner, ...]:
    """The telecom operators a phone-card lookup asks (SPEC §9): partners like companies, another registry."""
    with open(settings().operator_registry_file, encoding="utf-8") as fh:
        return tuple(Partner(**{**entry, "apps": tuple(entry.get("apps", ()))})
                     for entry in json.load(fh)["operators"])


def operator(operator_id: str) -> Partner | None:
    return next((o for o in operators() if o.id == operator_id), None)


@functools.cache
def carriers() -> tuple[Carrier, ...]:
    with open(settings().carrier_registry_file, encoding="utf-8") as fh:
        return tuple(Carrier(**{**entry, "networks": tuple(entry["networks"])})
                     for entry in json.load(fh)["carriers"])


def carrier_for(phone: str) -> Carrier | None:
    """The carrier that holds the number's real-name record, by its allocated range.

    China Broadnet (192) rides on China Mobile's network and real-name system.
    Ported numbers keep answering from the original carrier's gateway, which
    forwards the check; an unknown range gets None and the query reports
    "暂时无法完成查询".
    """
    import phonenumbers
    from phonenumbers import carrier as pn_carrier

    network = pn_carrier.name_for_number(phonenumbers.parse(phone, "CN"), "en")
    return next((c for c in carriers() if network in c.networks), None)

"""What is looked up, and from whom: one engine, two kinds of lookup (SPEC §4, §9), and the dispute
of each kind's reply (SPEC §8 "not my account", §10.1 "not my card").

Internet accounts ask the companies about a phone number; phone cards ask the telecom
operators about an ID number and name. Everything else — the fan-out, the reply claim, the
backlog, the circuit breakers, paced replay, 暂未返回 at the deadline, the dispute's forwarding,
settling and outcome SMS — is shared code.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from chalicelib import registry
from chalicelib.registry import Partner

if TYPE_CHECKING:
    from chalicelib.sms import PartnerAnswer


class Kind(StrEnum):
    ACCOUNTS = "accounts"
    CARDS = "cards"
    RELEASES = "releases"  # SPEC §10.2: the companies asked to unbind a recycled number's earlier accounts


@dataclass(frozen=True)
class LookupKind(ABC):
    """What differs between the kinds (accounts, phone cards, releases), as data (the fields) and as the
    reply's wording (the methods), so shared code asks its kind instead of testing which one it is."""

    kind: Kind
    partners: Callable[[], tuple[Partner, ...]]  # the registry, in its order
    request_path: str  # POST {base_url}{request_path}
    callback_route: str  # POST /v1/{callback_route}/{id}/{callback_suffix}
    count_field: str  # what a partner's answer counts
    sealed: tuple[str, ...]  # the query record's sealed fields a partner request carries (data minimisation)
    breakdowns: bool  # may an answer carry a per-app breakdown?
    carrier_fields: tuple[str, ...]  # the sealed fields the carrier's real-name check is asked about (SPEC §4, §9)
    # How a partner names the task (its answers carry the same field): a lookup id per (query, partner), or
    # one release id for every company (SPEC §10.2); and the callback route's last segment.
    task_field: str = "lookup_id"
    id_name: str = "query_id"  # what the API calls the id of a query of this kind
    callback_suffix: str = "results"
    sends_since: bool = False  # the carrier's `since` goes with the task (releases); no `since`: `unknown`
    lock_from_match: bool = False  # its limit counts from the carrier's match, not from acceptance (releases)
    # What GET shows for each stored QueryStatus (releases have their own words, SPEC §10.2).
    public_status: tuple[tuple[str, str], ...] = ()
    unanswered_metric: str = ""  # counted per partner its reply had to call 暂未返回 (releases: an alarm each)
    # Its dispute (SPEC §8, §10.1): POST {base_url}{dispute_path} with the sealed `dispute_sealed` fields, the
    # answer's outcomes and count field, the API's name for the partner ("company" or "operator").
    # No dispute_path: not disputable.
    dispute_path: str = ""
    dispute_sealed: tuple[str, ...] = ()
    dispute_outcomes: frozenset[str] = frozenset()
    dispute_acted: str = ""  # the outcome that says what it did: its count is required (others default to 0)
    dispute_count_field: str = ""
    partner_field: str = "company"
    nothing_to_dispute: str = ""  # the 409's message
    dispute_max_count: int | None = None  # None: PARTNER_MAX_ACCOUNT_COUNT

    def partner(self, partner_id: str) -> Partner | None:
        return next((p for p in self.partners() if p.id == partner_id), None)

    @property
    def stored(self) -> str | None:
        """The `kind` a record of this kind is written with: none for accounts, as every record written
        before there were kinds (kind_of reads an absent kind as accounts), so those records stay as they were."""
        return None if self.kind is Kind.ACCOUNTS else self.kind.value

    @property
    def sends_identity(self) -> bool:
        """Do its lookups carry the name or ID number? Then the record keeps them sealed until every partner
        answered (a parked lookup still needs them, SPEC §9); otherwise they go at the carrier check (SPEC §6)."""
        return bool(set(self.sealed) - {"phone"})

    @property
    def task_per_query(self) -> bool:
        """One id for the whole query (a release id), so the partner's answer is found by (id, partner)."""
        return self.task_field != "lookup_id"

    def status(self, stored: str) -> str:
        return dict(self.public_status).get(stored, stored)

    def reported_key(self, phone_key: str, record_key: str | None) -> str | None:
        """Under what a reply's "this partner reported N > 0" fact is kept for a later dispute (SPEC §8: the
        number's HMAC; §10.1: the (name, ID number, phone) HMAC the card query recorded, so each phone's reply
        stands on its own). None: nothing to keep."""
        return phone_key

    def dispute_max(self, partner_max_account_count: int) -> int:
        return partner_max_account_count if self.dispute_max_count is None else self.dispute_max_count

    def dispute_submitted_text(self, partner_name: str, dispute_id: str) -> str:
        """The SMS when the dispute is forwarded."""
        raise NotImplementedError(f"{self.kind.value} are not disputable")

    def dispute_outcome_text(self, outcome: str, partner: Partner | None, partner_id: str, dispute_id: str,
                             count: int) -> str:
        """The one outcome SMS (`partner` None: it left the registry since, and is named by its id)."""
        name, hotline = (partner.name, partner.hotline) if partner else (partner_id, "")
        return self._dispute_outcome_text(outcome, name, hotline, dispute_id, count)

    def _dispute_outcome_text(self, outcome: str, name: str, hotline: str, dispute_id: str, count: int) -> str:
        """The kind's wording of it."""
        raise NotImplementedError(f"{self.kind.value} are not disputable")

    @abstractmethod
    def mismatch_text(self, phone: str) -> str:
        """The reply when the carrier says the number is not registered to the identity given."""

    @abstractmethod
    def result_text(self, phone: str, answers: Sequence[PartnerAnswer]) -> str:
        """The reply once the partners answered (or the deadline came): `answers` in registry order."""


# The SMS texts are imported on first use: this module is imported wherever a kind is named (the API's
# request checks among them), and chalicelib.sms brings botocore.
class _AccountLookups(LookupKind):
    def mismatch_text(self, phone: str) -> str:
        from chalicelib import sms

        return sms.mismatch_text(phone)

    def result_text(self, phone: str, answers: Sequence[PartnerAnswer]) -> str:
        from chalicelib import sms

        return sms.result_text(phone, answers)

    def dispute_submitted_text(self, partner_name: str, dispute_id: str) -> str:
        from chalicelib import sms

        return sms.dispute_submitted_text(partner_name, dispute_id)

    def _dispute_outcome_text(self, outcome: str, name: str, hotline: str, dispute_id: str, count: int) -> str:
        from chalicelib import sms

        return sms.dispute_outcome_text(outcome, name, hotline, dispute_id, count)


class _CardLookups(LookupKind):
    def mismatch_text(self, phone: str) -> str:
        from chalicelib import sms

        return sms.card_mismatch_text(phone)

    def result_text(self, phone: str, answers: Sequence[PartnerAnswer]) -> str:
        from chalicelib import sms

        # No per-app breakdown for cards (`breakdowns` is False: parse_answer refuses one).
        return sms.card_result_text([(answer.name, answer.count) for answer in answers])

    def reported_key(self, phone_key: str, record_key: str | None) -> str | None:
        return f"cards#{record_key}" if record_key else None

    def dispute_submitted_text(self, partner_name: str, dispute_id: str) -> str:
        from chalicelib import sms

        return sms.card_dispute_submitted_text(partner_name, dispute_id)

    def _dispute_outcome_text(self, outcome: str, name: str, hotline: str, dispute_id: str, count: int) -> str:
        from chalicelib import sms

        return sms.card_dispute_outcome_text(outcome, name, hotline, dispute_id, count)


class _Releases(LookupKind):
    def mismatch_text(self, phone: str) -> str:
        from chalicelib import sms

        return sms.mismatch_text(phone)  # SPEC §10.2: the §5 failure texts

    def result_text(self, phone: str, answers: Sequence[PartnerAnswer]) -> str:
        from chalicelib import sms

        return sms.release_result_text(phone, answers)

    def reported_key(self, phone_key: str, record_key: str | None) -> str | None:
        return None  # nothing a release reports opens a dispute


ACCOUNTS: LookupKind = _AccountLookups(
    Kind.ACCOUNTS, registry.companies, request_path="/lookups", callback_route="partners",
    count_field="account_count", sealed=("phone",), breakdowns=True, carrier_fields=("phone", "id_last6"),
    dispute_path="/disputes", dispute_sealed=("phone",),
    dispute_outcomes=frozenset({"unbound", "owner_confirmed", "no_account", "rejected"}), dispute_acted="unbound",
    dispute_count_field="accounts", partner_field="company",
    nothing_to_dispute="近7天内该号码的查询结果中，该企业没有关联账号，无需申请核查。", dispute_max_count=None)
CARDS: LookupKind = _CardLookups(
    Kind.CARDS, registry.operators, request_path="/card-lookups", callback_route="operators",
    count_field="card_count", sealed=("id_number", "name"), breakdowns=False,
    carrier_fields=("phone", "name", "id_number"),
    dispute_path="/card-disputes", dispute_sealed=("name", "id_number"),
    dispute_outcomes=frozenset({"suspended", "owner_confirmed", "no_card", "rejected"}), dispute_acted="suspended",
    dispute_count_field="cards", partner_field="operator",
    nothing_to_dispute="近7天内发到该手机号的号码查询结果中，该企业没有登记在该身份证号码名下的号码，无需申请核查。",
    dispute_max_count=100)
RELEASES: LookupKind = _Releases(
    Kind.RELEASES, registry.companies, request_path="/releases", callback_route="partners",
    count_field="unbound", sealed=("phone",), breakdowns=False, carrier_fields=("phone", "id_last6"),
    task_field="release_id", id_name="release_id", callback_suffix="releases", sends_since=True, lock_from_match=True,
    public_status=(("looking_up", "forwarded"), ("replied", "completed")), unanswered_metric="ReleaseUnanswered")
KINDS: dict[str, LookupKind] = {k.kind.value: k for k in (ACCOUNTS, CARDS, RELEASES)}
# Every route a partner or an operator calls (results, disputes…): the larger body limit, the WAF's
# exemption from the per-IP rate rule and the resource policy's partner networks all come from here.
PARTNER_ROUTE_PREFIXES: tuple[str, ...] = tuple(dict.fromkeys(f"/v1/{k.callback_route}/" for k in KINDS.values()))


def kind_of(value: str | None) -> LookupKind:
    """A stored kind; records written before there were kinds are account lookups."""
    return KINDS.get(value or Kind.ACCOUNTS, ACCOUNTS)

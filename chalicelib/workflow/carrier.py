"""VerifyCarrier: is the number active and registered to these ID digits (SPEC §4)? For a release (SPEC §10.2),
also since when the current holder has it; and its 30-day limit is taken here, at the match.

On a match the workflow goes on to AskCompanies; any other outcome is the query's end: this step
claims its completion and enqueues the failure reply (engine/deadlines.py), and the execution ends.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from aws_lambda_powertools import Logger
from pynamodb.exceptions import UpdateError
from pynamodb.expressions.update import Action

from chalicelib import errors, http, registry
from chalicelib.config import Settings, settings
from chalicelib.contracts import CarrierOutcome, CarrierResult, QueryStatus, ReplyType
from chalicelib.engine.deadlines import Deadlines
from chalicelib.partners.kinds import kind_of
from chalicelib.privacy import Vault, partner_secret
from chalicelib.releases import parse_since, settle_lock
from chalicelib.storage.models import QueryRecord, condition_failed
from chalicelib.throttle import china_today

logger = Logger(child=True)


class CarrierCheck:
    def __init__(self, vault: Vault, deadlines: Deadlines, clock: Callable[[], float] = time.time,
                 secret_for: Callable[[str], str] = partner_secret, config: Settings | None = None) -> None:
        self._config = config or settings()
        self._vault = vault
        self._deadlines = deadlines
        self._clock = clock
        self._secret_for = secret_for

    def run(self, query_id: str, deadline_at: int) -> CarrierResult:
        now = int(self._clock())
        record = QueryRecord.get(query_id, consistent_read=True)
        kind = kind_of(record.kind)
        if record.deadline_slot is None:  # answered already (its deadline came while this step was retried)
            return {"query_id": query_id, "kind": kind.kind.value,
                    "deadline_at": int(deadline_at), "outcome": CarrierOutcome(record.outcome or "unknown").value}
        if record.outcome is None:
            if record.status == QueryStatus.ACCEPTED:
                record.update(actions=[QueryRecord.status.set(QueryStatus.VERIFYING),
                                       QueryRecord.updated_at.set(now)])
            outcome, since = self._ask_carrier(record)
            actions: list[Action] = [QueryRecord.outcome.set(outcome), QueryRecord.updated_at.set(now)]
            if outcome == CarrierOutcome.MATCH:
                actions.append(QueryRecord.status.set(QueryStatus.LOOKING_UP))
                if kind.sends_since:
                    actions.append(QueryRecord.since.set(since))
            if outcome != CarrierOutcome.MATCH or not kind.sends_identity:
                # The ID digits have served their purpose: discard them now (SPEC §6). A phone-card
                # query keeps name and ID number until its operators have answered (SPEC §9).
                actions += [QueryRecord.id_sealed.remove(), QueryRecord.name_sealed.remove()]
            try:  # only while it is open: its deadline may have replied while the carrier was asked
                record.update(actions=actions, condition=QueryRecord.deadline_slot.exists()
                              & QueryRecord.completion_claimed_at.does_not_exist())
            except UpdateError as exc:
                if not condition_failed(exc):
                    raise
                record.refresh(consistent_read=True)
                return {"query_id": query_id, "kind": kind.kind.value, "deadline_at": int(deadline_at),
                        "outcome": CarrierOutcome(record.outcome or "unknown").value}
        outcome = CarrierOutcome(record.outcome)
        logger.info("carrier check done", extra={"query_id": query_id, "kind": kind.kind.value,
                                                 "outcome": outcome.value})
        if kind.lock_from_match:
            settle_lock(record, outcome == CarrierOutcome.MATCH, now, self._config.release_interval_seconds)
        if outcome != CarrierOutcome.MATCH:
            self._deadlines.claim(ReplyType.QUERY, record)  # the failure reply (none for a cancelled number)
        return {"query_id": query_id, "kind": kind.kind.value, "deadline_at": int(deadline_at),
                "outcome": outcome.value}

    def _ask_carrier(self, record: QueryRecord) -> tuple[CarrierOutcome, str | None]:
        """The carrier's outcome and, for a match, its `since` (SPEC §10.2) when valid."""
        if record.id_sealed is None:
            return CarrierOutcome.UNKNOWN, None
        kind = kind_of(record.kind)
        # Accounts and releases: phone and ID digits; phone cards: phone, name and ID number (SPEC §4, §9).
        opened = self._vault.open(record.query_id, record.data_key, record.sealed(*kind.carrier_fields))
        carrier = registry.carrier_for(opened["phone"])
        if carrier is None:
            return CarrierOutcome.UNKNOWN, None
        try:
            reply = http.post_signed(f"{carrier.base_url}/verifications", opened,
                                     self._secret_for(carrier.secret_name))
        except http.Unreachable as exc:
            raise errors.CarrierUnavailable(f"{carrier.id}: {exc}") from exc
        if reply.status >= 500 or reply.status == 429:
            raise errors.CarrierUnavailable(f"{carrier.id}: HTTP {reply.status}")
        result = reply.body.get("result") if isinstance(reply.body, dict) else None
        # A list, not a set: the carrier's `result` may be anything, unhashable included.
        if reply.status != 200 or not isinstance(result, str) or result not in [o.value for o in CarrierOutcome]:
            logger.warning("carrier answer unusable", extra={"carrier": carrier.id, "status": reply.status})
            return CarrierOutcome.UNKNOWN, None
        if result != CarrierOutcome.MATCH or not kind.sends_since:
            return CarrierOutcome(result), None
        since = parse_since(reply.body.get("since"), china_today(self._clock()))
        if since is None:  # a match we cannot date asks nobody to unbind anything
            logger.warning("carrier match without a valid since", extra={"carrier": carrier.id})
            return CarrierOutcome.UNKNOWN, None
        return CarrierOutcome.MATCH, since

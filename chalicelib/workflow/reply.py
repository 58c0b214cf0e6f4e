"""SendReply: the one reply SMS per query (SPEC §5), and the query's terminal status.

Exactly one SMS even when the step is retried (Powertools Idempotency keyed by query id).
A permanent SNS refusal (invalid message, opted-out number…) ends the query `failed` at once,
with a metric and an alarm, instead of ten retries that cannot succeed.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from pynamodb.expressions.update import Action

from chalicelib import registry, sms, telemetry
from chalicelib.contracts import CarrierOutcome, LookupResult, QueryStatus, ReplyInput
from chalicelib.partners.kinds import ACCOUNTS, CARDS, LookupKind, kind_of
from chalicelib.partners.lookups import stored_results
from chalicelib.privacy import Hasher, Vault
from chalicelib.storage.models import QueryRecord, ReportedAccounts, at

logger = Logger(child=True)
REPORTED_DAYS = 7  # SPEC §8: a dispute needs a reply with accounts at that company in the last 7 days


class ReplySender:
    def __init__(self, vault: Vault, sender: sms.SmsSender, persistence: Any | None = None,
                 clock: Callable[[], float] = time.time, hasher: Hasher | None = None) -> None:
        self._vault = vault
        self._hasher = hasher
        self._clock = clock
        self._once = sms.ExactlyOnce(sender, persistence, "query_id", 7 * 86400)  # one reply per query
        self.idempotency = self._once.idempotency

    def run(self, state: ReplyInput) -> dict[str, Any]:
        query_id = state["query_id"]
        outcome = CarrierOutcome(state.get("outcome", CarrierOutcome.UNKNOWN))
        record = QueryRecord.get(query_id, consistent_read=True)
        status = QueryStatus.REPLIED if outcome == CarrierOutcome.MATCH else QueryStatus.FAILED
        # At the deadline the token carried nothing: report what had settled by then.
        fan_out = state.get("fan_out")
        results = fan_out["results"] if fan_out else list(stored_results(record).values())
        message = None
        if outcome != CarrierOutcome.CANCELLED:  # a cancelled number cannot receive an SMS
            phone = self._vault.open(query_id, record.data_key, {"phone": record.phone_sealed})["phone"]
            message = self.compose(phone, kind_of(record.kind), outcome, record.asked or set(), results)
            try:
                self._once.send(delivery={"query_id": query_id, "phone": phone, "message": message})
            except sms.SmsRejected as exc:
                telemetry.count("SmsRejected")
                logger.error("reply SMS refused for good", extra={"query_id": query_id, "reason": exc.code})
                status, message = QueryStatus.FAILED, None
            if message is not None and outcome == CarrierOutcome.MATCH and kind_of(record.kind) is ACCOUNTS:
                self.remember_reported(phone, results)
        actions: list[Action] = [QueryRecord.status.set(status), QueryRecord.outcome.set(outcome),
                                 QueryRecord.updated_at.set(int(self._clock()))]
        if record.id_sealed is not None:  # the deadline, or no carrier answer: discard ID and name now
            actions += [QueryRecord.id_sealed.remove(), QueryRecord.name_sealed.remove()]
        record.update(actions=actions)
        telemetry.count("QueryReplied" if status == QueryStatus.REPLIED else "QueryFailed")
        logger.info("query closed", extra={"query_id": query_id, "status": status.value, "outcome": outcome.value,
                                           "sms_sent": message is not None})
        return {"query_id": query_id, "status": status.value}

    def remember_reported(self, phone: str, results: list[LookupResult]) -> None:
        """What a dispute needs (SPEC §8 nothing_to_dispute): per company, that this reply reported
        accounts and when; keyed by the number's HMAC, nothing in clear, gone after 7 days.
        A company that answered 0 this time forgets an older report."""
        if self._hasher is None:
            return
        now = int(self._clock())
        phone_key = self._hasher.digest("phone", phone)  # the key chalicelib/codes.py uses
        with ReportedAccounts.batch_write() as batch:
            for result in results:
                if not result.get("answered"):
                    continue  # no answer: an earlier report stands
                item = ReportedAccounts(phone_key, result["company"], replied_at=now,
                                        ttl=at(now + REPORTED_DAYS * 86400))
                if int(result.get("count", 0)) > 0:
                    batch.save(item)
                else:
                    batch.delete(item)

    @staticmethod
    def compose(phone: str, kind: LookupKind, outcome: CarrierOutcome, asked: set[str],
                results: list[LookupResult]) -> str:
        if outcome == CarrierOutcome.MISMATCH:
            return sms.mismatch_text(phone) if kind is ACCOUNTS else sms.card_mismatch_text(phone)
        if outcome != CarrierOutcome.MATCH:
            return sms.unavailable_text(phone)
        by_company = {r["company"]: r for r in results}
        if kind is CARDS:  # operator names from the registry, bounded counts (SPEC §9)
            answers: list[tuple[str, int | None]] = []
            for operator in kind.partners():
                if operator.id in asked:
                    result = by_company.get(operator.id)
                    answered = result is not None and result.get("answered")
                    answers.append((operator.name, int(result.get("count", 0)) if result and answered else None))
            return sms.card_result_text(answers)
        lines = []
        for company in registry.companies():
            if company.id not in asked:
                continue  # joined after this query started: not asked
            result = by_company.get(company.id)
            if result is None or not result.get("answered"):
                lines.append(sms.CompanyAnswer(company.name, None))
                continue
            # Only registry app names reach the SMS, in registry order, whatever was stored.
            stored = result.get("apps") or {}
            apps = {app: int(stored[app]) for app in company.apps if app in stored}
            lines.append(sms.CompanyAnswer(company.name, int(result.get("count", 0)), apps or None))
        return sms.result_text(phone, lines)

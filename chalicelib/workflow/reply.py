"""The one reply SMS per query (SPEC §5), and the query's terminal status.

Run by the reply queue's consumer for every way a query ends (a carrier failure, its last partner
answer, its deadline: engine/deadlines.py). It reports what had settled by then: `暂未返回` for
every partner that had not. Exactly one SMS even when a message is delivered twice or its handling
retried (Powertools Idempotency keyed by query id).
A permanent SNS refusal (invalid message, opted-out number…) ends the query `failed` at once,
with a metric and an alarm, instead of ten retries that cannot succeed.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from pynamodb.exceptions import UpdateError
from pynamodb.expressions.update import Action

from chalicelib import sms, telemetry
from chalicelib.contracts import CarrierOutcome, LookupResult, QueryStatus
from chalicelib.engine.deadlines import finished_actions
from chalicelib.partners.kinds import LookupKind, kind_of
from chalicelib.partners.lookups import stored_results
from chalicelib.privacy import Hasher, Vault
from chalicelib.releases import settle_lock
from chalicelib.storage.models import QueryRecord, ReportedAccounts, at, condition_failed

logger = Logger(child=True)
REPORTED_DAYS = 7  # SPEC §8, §10.1: a dispute needs a reply with accounts (cards) there in the last 7 days


class ReplySender:
    def __init__(self, vault: Vault, sender: sms.SmsSender, persistence: Any | None = None,
                 clock: Callable[[], float] = time.time, hasher: Hasher | None = None) -> None:
        self._vault = vault
        self._hasher = hasher
        self._clock = clock
        self._once = sms.ExactlyOnce(sender, persistence, "query_id", 7 * 86400)  # one reply per query
        self.idempotency = self._once.idempotency

    def run(self, query_id: str) -> dict[str, Any]:
        try:
            record = QueryRecord.get(query_id, consistent_read=True)
        except QueryRecord.DoesNotExist:
            logger.warning("reply for an unknown query skipped", extra={"query_id": query_id})
            return {"query_id": query_id, "status": None}
        if record.deadline_slot is None and record.status in (QueryStatus.REPLIED, QueryStatus.FAILED):
            return {"query_id": query_id, "status": record.status}  # a duplicate message: replied already
        # No carrier answer by the deadline (the check never finished): the "unavailable" text.
        outcome = CarrierOutcome(record.outcome or CarrierOutcome.UNKNOWN)
        status = QueryStatus.REPLIED if outcome == CarrierOutcome.MATCH else QueryStatus.FAILED
        results = list(stored_results(record).values())
        kind = kind_of(record.kind)
        message = None
        if outcome != CarrierOutcome.CANCELLED:  # a cancelled number cannot receive an SMS
            phone = self._vault.open(query_id, record.data_key, {"phone": record.phone_sealed})["phone"]
            message = self.compose(phone, kind, outcome, record.asked or set(), results)
            try:
                self._once.send(delivery={"query_id": query_id, "phone": phone, "message": message})
            except sms.SmsRejected as exc:
                telemetry.count("SmsRejected")
                logger.error("reply SMS refused for good", extra={"query_id": query_id, "reason": exc.code})
                status, message = QueryStatus.FAILED, None
            if message is not None and outcome == CarrierOutcome.MATCH:
                self.remember_reported(kind, phone, record.reported_key, results)
        actions: list[Action] = [QueryRecord.status.set(status), QueryRecord.outcome.set(outcome),
                                 QueryRecord.updated_at.set(int(self._clock())), *finished_actions(QueryRecord)]
        if record.id_sealed is not None or record.name_sealed is not None:  # the deadline: discard ID and name now
            actions += [QueryRecord.id_sealed.remove(), QueryRecord.name_sealed.remove()]
        record.update(actions=actions)
        if kind.lock_from_match and outcome != CarrierOutcome.MATCH:
            # No carrier answer by the deadline: the number's release was not used (SPEC §10.2).
            settle_lock(record, False, int(self._clock()), 0)
        if kind.unanswered_metric and outcome == CarrierOutcome.MATCH:  # who let theirs go unanswered
            answered = {r["company"] for r in results if r.get("answered")}
            # The recorded fan-out only: a partner never asked (the fan-out failed) is not to blame, and the
            # failed execution has its own alarm.
            for partner in sorted((record.asked or set()) - answered):
                telemetry.count(kind.unanswered_metric, company=partner)
        telemetry.count("QueryReplied" if status == QueryStatus.REPLIED else "QueryFailed")
        if record.created_at:
            telemetry.latency("ReplyLatency", 1000 * (self._clock() - int(record.created_at)),
                              kind=kind.kind.value)
        logger.info("query closed", extra={"query_id": query_id, "status": status.value, "outcome": outcome.value,
                                           "sms_sent": message is not None})
        return {"query_id": query_id, "status": status.value}

    def fail(self, query_id: str) -> None:
        """Its reply could not be sent (the reply queue's dead letters): a terminal status all the same."""
        record = QueryRecord(query_id)
        try:
            record.update(
                actions=[QueryRecord.status.set(QueryStatus.FAILED), QueryRecord.updated_at.set(int(self._clock())),
                         QueryRecord.id_sealed.remove(), QueryRecord.name_sealed.remove(),
                         *finished_actions(QueryRecord)],
                condition=QueryRecord.deadline_slot.exists())
        except UpdateError as exc:
            if not condition_failed(exc):
                raise
            return  # replied after all
        telemetry.count("QueryFailed")
        logger.error("reply given up: query marked failed", extra={"query_id": query_id})
        if kind_of(record.kind).lock_from_match and record.outcome != CarrierOutcome.MATCH:
            settle_lock(record, False, int(self._clock()), 0)  # a release nobody could date: not used

    def remember_reported(self, kind: LookupKind, phone: str, record_key: str | None,
                          results: list[LookupResult]) -> None:
        """What a dispute needs (SPEC §8, §10.1 nothing_to_dispute): per partner, that this reply reported
        accounts (cards) and when; keyed by the number's HMAC (by the (ID number, phone) HMAC for cards),
        nothing in clear, gone after 7 days. A partner that answered 0 this time forgets an older report."""
        if self._hasher is None:
            return
        now = int(self._clock())
        key = kind.reported_key(self._hasher.digest("phone", phone), record_key)  # codes.py's phone key
        if key is None:
            return
        with ReportedAccounts.batch_write() as batch:
            for result in results:
                if not result.get("answered"):
                    continue  # no answer: an earlier report stands
                item = ReportedAccounts(key, result["company"], replied_at=now,
                                        ttl=at(now + REPORTED_DAYS * 86400))
                if int(result.get("count", 0)) > 0:
                    batch.save(item)
                else:
                    batch.delete(item)

    @staticmethod
    def asked_of(kind: LookupKind, asked: set[str] | None) -> set[str]:
        """Whom a matched query's reply reports. None or empty: the fan-out never recorded whom it asked (it
        failed every retry before its first write), so nobody can be said to have answered: every partner of
        the kind in the registry is reported, as not answered (暂未返回), rather than a reply listing no partner
        at all ("共0个账号", or for cards the false "暂无在网移动电话卡")."""
        return set(asked) if asked else {partner.id for partner in kind.partners()}

    @staticmethod
    def compose(phone: str, kind: LookupKind, outcome: CarrierOutcome, asked: set[str],
                results: list[LookupResult]) -> str:
        if outcome == CarrierOutcome.MISMATCH:
            return kind.mismatch_text(phone)
        if outcome != CarrierOutcome.MATCH:
            return sms.unavailable_text(phone)
        asked = ReplySender.asked_of(kind, asked)
        by_partner = {r["company"]: r for r in results}
        lines = []
        for partner in kind.partners():  # partner names from the registry, in its order (SPEC §5, §9)
            if partner.id not in asked:
                continue  # joined after this query started: not asked
            result = by_partner.get(partner.id)
            if result is None or not result.get("answered"):
                lines.append(sms.PartnerAnswer(partner.name, None))
                continue
            # Only registry app names reach the SMS, in registry order, whatever was stored (operators list none).
            stored = result.get("apps") or {}
            apps = {app: int(stored[app]) for app in partner.apps if app in stored}
            lines.append(sms.PartnerAnswer(partner.name, int(result.get("count", 0)), apps or None))
        return kind.result_text(phone, lines)

"""The steps of the query workflow (stepfunctions/query.asl.json).

Each step loads what it needs from the query record: the execution input,
outputs and history carry only the query id, outcomes and account counts.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from pynamodb.expressions.update import Action

from chalicelib import errors, http, registry, sms, telemetry
from chalicelib.privacy import Vault, partner_secret
from chalicelib.storage.models import QueryRecord

logger = Logger(child=True)

OUTCOMES = ("match", "mismatch", "cancelled", "unknown")


def _set_status(record: QueryRecord, status: str, now: int) -> None:
    record.update(actions=[QueryRecord.status.set(status), QueryRecord.updated_at.set(now)])


class CarrierCheck:
    """Real-name check: is the number active and registered to these ID digits?"""

    def __init__(self, vault: Vault, clock: Callable[[], float] = time.time,
                 secret_for: Callable[[str], str] = partner_secret) -> None:
        self._vault = vault
        self._clock = clock
        self._secret_for = secret_for

    def run(self, query_id: str, deadline_at: int) -> dict[str, Any]:
        now = int(self._clock())
        record = QueryRecord.get(query_id, consistent_read=True)
        if record.outcome is None:
            if record.status == "accepted":
                _set_status(record, "verifying", now)
            outcome = self._ask_carrier(record)
            # The ID digits have served their purpose: discard them now (SPEC §6).
            actions: list[Action] = [QueryRecord.outcome.set(outcome), QueryRecord.id_sealed.remove(),
                                     QueryRecord.updated_at.set(now)]
            if outcome == "match":
                actions.append(QueryRecord.status.set("looking_up"))
            record.update(actions=actions)
        elif record.outcome == "match" and record.status == "verifying":
            _set_status(record, "looking_up", now)  # a retry after the outcome was stored
        outcome = str(record.outcome)
        lookups: list[dict[str, Any]] = []
        if outcome == "match":
            timeout = max(1, int(deadline_at) - now)
            lookups = [{"query_id": query_id, "company": c.id, "deadline_at": int(deadline_at),
                        "timeout_seconds": timeout, "attempt": 0} for c in registry.companies()]
        logger.info("carrier check done", extra={"query_id": query_id, "outcome": outcome})
        return {"query_id": query_id, "deadline_at": int(deadline_at), "outcome": outcome,
                "lookups": lookups, "answers": []}

    def _ask_carrier(self, record: QueryRecord) -> str:
        phone = self._vault.open(record.phone_sealed, record.query_id)
        if record.id_sealed is None:
            return "unknown"
        carrier = registry.carrier_for(phone)
        if carrier is None:
            return "unknown"
        payload = {"phone": phone, "id_last6": self._vault.open(record.id_sealed, record.query_id)}
        try:
            reply = http.post_signed(f"{carrier.base_url}/verifications", payload,
                                     self._secret_for(carrier.secret_name))
        except http.Unreachable as exc:
            raise errors.CarrierUnavailable(f"{carrier.id}: {exc}") from exc
        if reply.status >= 500 or reply.status == 429:
            raise errors.CarrierUnavailable(f"{carrier.id}: HTTP {reply.status}")
        result = reply.body.get("result") if isinstance(reply.body, dict) else None
        if reply.status != 200 or result not in OUTCOMES:
            logger.warning("carrier answer unusable", extra={"carrier": carrier.id, "status": reply.status})
            return "unknown"
        return str(result)


FIRST_BACKOFF_SECONDS = 2
MAX_BACKOFF_SECONDS = 900


def plan_lookup_retry(item: dict[str, Any], now: float) -> dict[str, Any]:
    """After a transient partner failure: how long to back off, and how long the next attempt may wait.

    Exponential backoff (2 s, 4 s, … capped at 15 min), never past the deadline: the next attempt's
    timeout is exactly the time then left, so the reply still goes out at the deadline.
    """
    attempt = int(item.get("attempt", 0)) + 1
    deadline_at = int(item["deadline_at"])
    wait = min(FIRST_BACKOFF_SECONDS * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
    left_after_wait = deadline_at - int(now) - wait
    if left_after_wait < 1:
        raise errors.LookupDeadlinePassed(str(item["company"]))
    return {"query_id": item["query_id"], "company": item["company"], "deadline_at": deadline_at,
            "attempt": attempt, "wait_seconds": wait, "timeout_seconds": left_after_wait}


class ReplySender:
    """The one reply SMS per query (SPEC §5), idempotent across retries of the step."""

    def __init__(self, vault: Vault, sender: sms.SmsSender, persistence: Any | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._vault = vault
        self._sender = sender
        self._clock = clock
        self.idempotency = None
        self._send_once: Callable[..., Any] = self.deliver
        if persistence is not None:
            # Powertools Idempotency keyed by query id: a retried step finds the
            # completed record and does not publish a second SMS.
            from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function

            self.idempotency = IdempotencyConfig(event_key_jmespath="query_id",
                                                 expires_after_seconds=7 * 86400)
            self._send_once = idempotent_function(self.deliver, data_keyword_argument="delivery",
                                                  persistence_store=persistence, config=self.idempotency)

    def deliver(self, delivery: dict[str, Any]) -> dict[str, Any]:
        try:
            message_id = self._sender.send(delivery["phone"], delivery["message"])
        except Exception:
            telemetry.count("SmsFailed")
            raise  # the step is retried by the workflow
        telemetry.count("SmsSent")
        return {"message_id": message_id}

    def run(self, state: dict[str, Any]) -> dict[str, Any]:
        query_id = state["query_id"]
        outcome = state.get("outcome", "unknown")
        record = QueryRecord.get(query_id, consistent_read=True)
        phone = self._vault.open(record.phone_sealed, query_id)
        status = "replied" if outcome == "match" else "failed"
        message = self.compose(phone, outcome, state.get("answers") or [])
        if message is not None:
            self._send_once(delivery={"query_id": query_id, "phone": phone, "message": message})
        actions: list[Action] = [QueryRecord.status.set(status), QueryRecord.outcome.set(outcome),
                                 QueryRecord.updated_at.set(int(self._clock()))]
        if record.id_sealed is not None:  # the carrier never answered: discard the ID digits now
            actions.append(QueryRecord.id_sealed.remove())
        record.update(actions=actions)
        telemetry.count("QueryReplied" if status == "replied" else "QueryFailed")
        logger.info("query closed", extra={"query_id": query_id, "status": status, "outcome": outcome,
                                           "sms_sent": message is not None})
        return {"query_id": query_id, "status": status}

    @staticmethod
    def compose(phone: str, outcome: str, answers: list[dict[str, Any]]) -> str | None:
        if outcome == "cancelled":
            return None  # no SMS can reach a cancelled number
        if outcome == "mismatch":
            return sms.mismatch_text(phone)
        if outcome != "match":
            return sms.unavailable_text(phone)
        by_company = {a.get("company"): a for a in answers}
        lines = []
        for company in registry.companies():
            if company.id not in by_company:
                continue  # joined after this query started: not asked
            answer = by_company[company.id]
            answered = bool(answer.get("answered"))
            lines.append(sms.CompanyAnswer(company.name,
                                           int(answer["account_count"]) if answered else None,
                                           answer.get("apps") if answered else None))
        return sms.result_text(phone, lines)

"""Dispute intake (POST /v1/disputes, /v1/card-disputes): ownership by a fresh code, one transaction, the workflow.

code check -> is there anything to dispute (a reply with accounts at that company in the last 7 days,
read by the number's HMAC; for cards, a reply to this phone naming cards registered to this name and ID
number at that operator, read by the (name, ID number, phone) HMAC; a 409 uses the code) -> one DynamoDB
transaction: consume the code, take the open-dispute lock (number + company; phone + name + ID number +
operator), count the phone's
disputes of the day (3 of each kind), create the record -> StartExecution named by the dispute id.

The execution is started directly, not through the query start queue: a dispute follows a reply that
listed accounts, is limited to 3 per number a day and one open per company, so its rate is a small
fraction of the query rate and a refused start is answered 503 (undone, the citizen tries again)
rather than queued; a repeated start is idempotent by name anyway.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pynamodb.exceptions import DeleteError, TransactWriteError, UpdateError

from chalicelib import clients, errors
from chalicelib.codes import CodeCheck, CodeService
from chalicelib.config import Settings, settings
from chalicelib.contracts import DisputeInput, DisputeStatus, ReplyType, TaskState
from chalicelib.disputes.protocol import DISPUTE_ID, new_dispute_id
from chalicelib.engine.deadlines import Deadlines
from chalicelib.partners.kinds import ACCOUNTS, CARDS, LookupKind, kind_of
from chalicelib.privacy import Hasher, Vault
from chalicelib.registry import Partner
from chalicelib.storage.models import Dispute, ReportedAccounts, Throttle, at, transaction
from chalicelib.throttle import ConflictRetry, Counter, Lock, china_day_window, first_refused
from chalicelib.workflow.reply import REPORTED_DAYS

logger = Logger(child=True)

LOCK_MARGIN_SECONDS = 3600  # the lock outlives the deadline a little: the outcome SMS releases it


@dataclass(frozen=True)
class AcceptedDispute:
    dispute_id: str
    partner: str  # the company, or the operator
    created_at: int


class DisputeIntake:
    def __init__(self, codes: CodeService, vault: Vault, hasher: Hasher, sfn_client: Any | None = None,
                 config: Settings | None = None, clock: Callable[[], float] = time.time,
                 retry: ConflictRetry | None = None) -> None:
        self._codes = codes
        self._vault = vault
        self._hasher = hasher
        self._sfn = sfn_client
        self._config = config or settings()
        self._clock = clock
        self._retry = retry or ConflictRetry(self._config.conflict_retries)

    def accept(self, phone: str, code: str, company_id: str, client_ip: str) -> AcceptedDispute:
        """"Not my account" (SPEC §8): one open dispute per number and company, 3 a day per number."""
        company = ACCOUNTS.partner(company_id)
        if company is None:
            raise errors.InvalidCompany()
        check = self._codes.check(phone, code, client_ip)
        reported = ACCOUNTS.reported_key(check.phone_key, None)
        return self._accept(check, ACCOUNTS, company, reported, f"dispute#{check.phone_key}#{company.id}",
                            f"dispute-day#{check.phone_key}", {"phone": phone})

    def accept_cards(self, name: str, id_number: str, phone: str, code: str, operator_id: str,
                     client_ip: str) -> AcceptedDispute:
        """"Not my card" (SPEC §10.1): from the phone a card reply for this name and ID number named cards at
        the operator; one open per (phone, ID number, operator), 3 a day per phone. Every limit is the phone's:
        nothing here depends on another phone's lookups or disputes."""
        from chalicelib.cards import reply_key

        operator = CARDS.partner(operator_id)
        if operator is None:
            raise errors.InvalidOperator()
        check = self._codes.check(phone, code, client_ip)
        key = reply_key(self._hasher, name, id_number, check.phone_key)
        return self._accept(check, CARDS, operator, CARDS.reported_key(check.phone_key, key),
                            f"card-dispute#{key}#{operator.id}", f"card-dispute-day#{check.phone_key}",
                            {"phone": phone, "name": name, "id_number": id_number})

    def _accept(self, check: CodeCheck, kind: LookupKind, partner: Partner, reported_key: str | None,
                lock_name: str, daily_name: str, personal: dict[str, str]) -> AcceptedDispute:
        """Is there anything to dispute, then one transaction (consume the code, take the open-dispute lock,
        count the day's disputes, create the record), then the execution."""
        cfg = self._config
        now = check.now
        if reported_key is None or not self._has_reported(reported_key, partner.id, now):
            self._spend(check)  # one code, one guess: it cannot test ID numbers (or names) one after another
            raise errors.NothingToDispute(kind.nothing_to_dispute)
        dispute_id = new_dispute_id()
        day, day_end = china_day_window(now)
        lock = Lock(lock_name, cfg.dispute_deadline_seconds + LOCK_MARGIN_SECONDS, holder=dispute_id)
        daily = Counter(f"{daily_name}#{day}", cfg.dispute_daily_limit, day_end)
        sealed = self._vault.seal(dispute_id, personal)  # one KMS request
        deadline_at = now + cfg.dispute_deadline_seconds
        record = Dispute(dispute_id, **Deadlines(cfg).entry(ReplyType.DISPUTE, dispute_id, deadline_at),
                         kind=kind.stored, company=partner.id, status=DisputeStatus.SUBMITTED, created_at=now,
                         deadline_at=deadline_at, data_key=sealed.data_key, phone_sealed=sealed.fields["phone"],
                         name_sealed=sealed.fields.get("name"), id_sealed=sealed.fields.get("id_number"),
                         lock_key=lock.key, state=TaskState.PENDING, attempts=0,
                         ttl=at(deadline_at + cfg.dispute_record_days * 86400))
        guards: list[Any] = [check, lock, daily]

        def write() -> None:
            try:
                with transaction() as tx:
                    check.consume_in(tx)
                    lock.add_to(tx, now)
                    daily.add_to(tx, now)
                    tx.save(record, condition=Dispute.dispute_id.does_not_exist())
            except TransactWriteError as exc:
                refused = first_refused(exc.cancellation_reasons, guards)
                if refused is check:
                    raise errors.WrongCode() from exc
                if refused is lock:
                    raise errors.DisputeLimit(retry_after=lock.retry_after(now)) from exc
                if refused is daily:
                    raise errors.DisputeLimit(retry_after=daily.retry_after(now)) from exc
                raise  # a conflict: ConflictRetry runs it again (CONFLICT_RETRIES); anything else is a 500

        self._retry.run(write)
        try:
            self.start(dispute_id, deadline_at)
        except ClientError as exc:
            logger.warning("dispute execution not started", extra={"dispute_id": dispute_id,
                                                                    "reason": exc.response["Error"]["Code"]})
            record.delete()  # not accepted after all: the citizen may try again at once,
            try:
                lock.release()
            except DeleteError:
                pass
            try:  # and this attempt does not count against the day's three
                Throttle(daily.key).update(actions=[Throttle.hits.add(-1)], condition=Throttle.hits > 0)
            except UpdateError:
                pass
            raise errors.ServiceBusy("服务繁忙，请稍后再试。", retry_after=60) from exc
        return AcceptedDispute(dispute_id, partner.id, now)

    def _spend(self, check: CodeCheck) -> None:
        """Use the code for this attempt though nothing is created: a 409 answers whether this phone was told
        about cards registered to an ID number and name, so each answer costs a code (SPEC §9: the API reveals
        nothing about the ID number to whoever merely holds the phone for a while)."""
        def write() -> None:
            try:
                with transaction() as tx:
                    check.consume_in(tx)
            except TransactWriteError as exc:
                if first_refused(exc.cancellation_reasons, [check]) is check:
                    raise errors.WrongCode() from exc  # used meanwhile by another request
                raise

        self._retry.run(write)

    @staticmethod
    def _has_reported(key: str, partner: str, now: int) -> bool:
        try:
            reported = ReportedAccounts.get(key, partner, consistent_read=True)
        except ReportedAccounts.DoesNotExist:
            return False
        return int(reported.replied_at) > now - REPORTED_DAYS * 86400  # TTL deletes lazily

    def start(self, dispute_id: str, deadline_at: int) -> None:
        execution: DisputeInput = {"dispute_id": dispute_id, "deadline_at": int(deadline_at)}
        sfn = self._sfn or clients.client("stepfunctions")
        try:
            sfn.start_execution(stateMachineArn=self._config.dispute_state_machine_arn, name=dispute_id,
                                input=json.dumps(execution))
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ExecutionAlreadyExists":
                raise


def status_of(dispute_id: str) -> dict[str, Any]:
    """What GET /v1/disputes/{id} shows: never the outcome (it goes only by SMS)."""
    dispute_id = dispute_id.strip().upper()  # read out on a hotline or typed in lower case: the same id
    if not DISPUTE_ID.fullmatch(dispute_id):
        raise errors.NotFound("未找到该核查申请。")
    try:
        dispute = Dispute.get(dispute_id)
    except Dispute.DoesNotExist as exc:
        raise errors.NotFound("未找到该核查申请。") from exc
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(dispute.created_at)))
    return {"dispute_id": dispute.dispute_id, kind_of(dispute.kind).partner_field: dispute.company,
            "status": dispute.status, "created_at": created}

"""Dispute intake (POST /v1/disputes): ownership by a fresh code, then one transaction, then the workflow.

code check -> is there anything to dispute (a reply with accounts at that company in the last 7 days,
read by the number's HMAC) -> one DynamoDB transaction: consume the code, take the open-dispute lock
(number + company), count the day's disputes (3), create the record -> StartExecution named by the
dispute id.

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

from chalicelib import clients, errors, registry
from chalicelib.codes import CodeService
from chalicelib.config import Settings, settings
from chalicelib.contracts import DisputeInput, DisputeStatus, ReplyType, TaskState
from chalicelib.disputes.protocol import DISPUTE_ID, new_dispute_id
from chalicelib.engine.deadlines import Deadlines
from chalicelib.privacy import Vault
from chalicelib.storage.models import Dispute, ReportedAccounts, Throttle, at, transaction
from chalicelib.throttle import ConflictRetry, Counter, Lock, china_day_window, first_refused
from chalicelib.workflow.reply import REPORTED_DAYS

logger = Logger(child=True)

LOCK_MARGIN_SECONDS = 3600  # the lock outlives the deadline a little: the outcome SMS releases it


@dataclass(frozen=True)
class AcceptedDispute:
    dispute_id: str
    company: str
    created_at: int


class DisputeIntake:
    def __init__(self, codes: CodeService, vault: Vault, sfn_client: Any | None = None,
                 config: Settings | None = None, clock: Callable[[], float] = time.time,
                 retry: ConflictRetry | None = None) -> None:
        self._codes = codes
        self._vault = vault
        self._sfn = sfn_client
        self._config = config or settings()
        self._clock = clock
        self._retry = retry or ConflictRetry(self._config.conflict_retries)

    def accept(self, phone: str, code: str, company_id: str, client_ip: str) -> AcceptedDispute:
        cfg = self._config
        company = registry.company(company_id)
        if company is None:
            raise errors.InvalidCompany()
        check = self._codes.check(phone, code, client_ip)
        now = check.now
        if not self._has_reported_accounts(check.phone_key, company.id, now):
            raise errors.NothingToDispute()
        dispute_id = new_dispute_id()
        day, day_end = china_day_window(now)
        lock = Lock(f"dispute#{check.phone_key}#{company.id}", cfg.dispute_deadline_seconds + LOCK_MARGIN_SECONDS,
                    holder=dispute_id)
        daily = Counter(f"dispute-day#{check.phone_key}#{day}", cfg.dispute_daily_limit, day_end)
        sealed = self._vault.seal(dispute_id, {"phone": phone})  # one KMS request
        deadline_at = now + cfg.dispute_deadline_seconds
        record = Dispute(dispute_id, **Deadlines(cfg).entry(ReplyType.DISPUTE, dispute_id, deadline_at),
                         company=company.id, status=DisputeStatus.SUBMITTED, created_at=now,
                         deadline_at=deadline_at, data_key=sealed.data_key, phone_sealed=sealed.fields["phone"],
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
        return AcceptedDispute(dispute_id, company.id, now)

    @staticmethod
    def _has_reported_accounts(phone_key: str, company: str, now: int) -> bool:
        try:
            reported = ReportedAccounts.get(phone_key, company, consistent_read=True)
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
    return {"dispute_id": dispute.dispute_id, "company": dispute.company, "status": dispute.status,
            "created_at": created}

"""Query intake: accept a query, never lose it, start its workflow from a queue.

Submit path (API): code check -> one DynamoDB transaction (consume code, take
the 24 h lock, create the record) -> SQS message. The queue consumer starts the
Step Functions execution named by the query id, so a refused StartExecution
(throttling, ExecutionLimitExceeded) only delays the start: the message comes
back and is tried again, and a repeated start is idempotent by name.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from pynamodb.exceptions import TransactWriteError

from chalicelib import clients, errors
from chalicelib.codes import CodeCheck, CodeService
from chalicelib.config import Settings, settings
from chalicelib.contracts import ExecutionInput, QueryStatus, ReplyType
from chalicelib.engine.deadlines import Deadlines
from chalicelib.partners.kinds import ACCOUNTS, CARDS, RELEASES, LookupKind, kind_of
from chalicelib.privacy import Hasher, Vault
from chalicelib.storage.models import QueryRecord, at, transaction
from chalicelib.throttle import ConflictRetry, Counter, Lock, first_refused, hour_window


class StartDeferred(Exception):
    """Step Functions refused the start for now; the message will come back."""


@dataclass(frozen=True)
class Accepted:
    query_id: str
    created_at: int


class QueryIntake:
    def __init__(self, codes: CodeService, hasher: Hasher, vault: Vault, sqs_client: Any | None = None,
                 config: Settings | None = None, clock: Callable[[], float] = time.time,
                 retry: ConflictRetry | None = None) -> None:
        self._codes = codes
        self._hasher = hasher
        self._vault = vault
        self._sqs = sqs_client
        self._config = config or settings()
        self._clock = clock
        self._retry = retry or ConflictRetry(self._config.conflict_retries)

    def check_client(self, client_ip: str) -> None:
        """Per-IP budget of submissions, so codes cannot be guessed across numbers."""
        now = int(self._clock())
        hour, hour_end = hour_window(now)
        counter = Counter(f"query-ip#{self._hasher.digest('ip', client_ip)}#{hour}",
                          self._config.query_ip_hourly_limit, hour_end)

        def write() -> None:
            try:
                with transaction() as tx:
                    counter.add_to(tx, now)
            except TransactWriteError as exc:
                if first_refused(exc.cancellation_reasons, [counter]) is None:
                    raise  # a conflict (many clients behind one NAT address): tried again
                raise errors.TooManyRequests(retry_after=counter.retry_after(now)) from exc

        self._retry.run(write)

    def accept(self, phone: str, id_last6: str, code: str, client_ip: str) -> Accepted:
        """An internet-account query: one per number per 24 h (SPEC §1.6)."""
        check = self._codes.check(phone, code, client_ip)
        query_id = str(uuid.uuid4())
        locks = [Lock(f"query#{check.phone_key}", self._config.query_interval_seconds, holder=query_id)]
        return self._accept(check, query_id, ACCOUNTS, {"phone": phone, "id_last6": id_last6}, locks)

    def accept_cards(self, name: str, id_number: str, phone: str, code: str, client_ip: str) -> Accepted:
        """A phone-card query: one per phone per 24 h, and no limit keyed by the ID number (SPEC §9): the
        answer depends only on the requesting phone, so nobody who merely knows an ID number (or holds a
        card opened with it) can use up or date its owner's query."""
        check = self._codes.check(phone, code, client_ip)
        query_id = str(uuid.uuid4())
        from chalicelib.cards import reply_key

        locks = [Lock(f"card-query#phone#{check.phone_key}", self._config.query_interval_seconds, holder=query_id)]
        return self._accept(check, query_id, CARDS, {"phone": phone, "id_number": id_number, "name": name}, locks,
                            reported_key=reply_key(self._hasher, name, id_number, check.phone_key))

    def accept_release(self, phone: str, id_last6: str, code: str, client_ip: str) -> Accepted:
        """A recycled number's release (SPEC §10.2): one completed or running per number per 30 days. The lock
        is held from acceptance until the carrier answers (workflow/carrier.py): a match keeps it 30 days, any
        other outcome gives it back, so a mismatch does not use the number's release. Not the 24 h query lock."""
        check = self._codes.check(phone, code, client_ip)
        query_id = str(uuid.uuid4())
        cfg = self._config
        locks = [Lock(f"release#{check.phone_key}", cfg.release_deadline_seconds + 3600, holder=query_id)]
        return self._accept(check, query_id, RELEASES, {"phone": phone, "id_last6": id_last6}, locks,
                            deadline_seconds=cfg.release_deadline_seconds, limit=errors.ReleaseLimit)

    def _accept(self, check: CodeCheck, query_id: str, kind: LookupKind, personal: dict[str, str],
                locks: list[Lock], reported_key: str | None = None, deadline_seconds: int | None = None,
                limit: type[errors.ServiceError] = errors.QueryLimit) -> Accepted:
        """Consume the code, take the locks and create the record in one transaction; then queue the start."""
        cfg = self._config
        now = check.now
        sealed = self._vault.seal(query_id, personal)  # one KMS request for every field
        deadline_at = now + (cfg.query_deadline_seconds if deadline_seconds is None else deadline_seconds)
        record = QueryRecord(
            query_id,
            # In the deadline index from the start: even a query whose execution never runs is answered.
            **Deadlines(cfg).entry(ReplyType.QUERY, query_id, deadline_at),
            status=QueryStatus.ACCEPTED,
            created_at=now,
            deadline_at=deadline_at,
            data_key=sealed.data_key,
            phone_sealed=sealed.fields["phone"],
            id_sealed=sealed.fields.get("id_last6") or sealed.fields["id_number"],
            name_sealed=sealed.fields.get("name"),
            lock_key=locks[0].key,
            reported_key=reported_key,
            # Kept QUERY_RECORD_DAYS, and never gone before its reply: a release's deadline is 15 days.
            ttl=at(max(now + cfg.query_record_days * 86400, deadline_at + 86400)),
        )
        record.kind = kind.stored

        def write() -> None:
            try:
                with transaction() as tx:
                    check.consume_in(tx)
                    for lock in locks:
                        lock.add_to(tx, now)
                    tx.save(record, condition=QueryRecord.query_id.does_not_exist())
            except TransactWriteError as exc:
                refused = first_refused(exc.cancellation_reasons, [check, *locks])
                if isinstance(refused, Lock):
                    raise limit(retry_after=refused.retry_after(now)) from exc
                if refused is check:
                    raise errors.WrongCode() from exc
                raise  # a conflict (tried again, then 503) or not a condition of ours (500, alarm)

        self._retry.run(write)
        try:
            self.enqueue_start(query_id, int(record.deadline_at))
        except ClientError as exc:
            # Not accepted after all: undo, so the citizen may try again at once.
            record.delete()
            for lock in locks:
                lock.release()
            raise errors.ServiceBusy(retry_after=60) from exc
        return Accepted(query_id, now)

    def enqueue_start(self, query_id: str, deadline_at: int) -> None:
        sqs = self._sqs or clients.client("sqs")
        sqs.send_message(QueueUrl=self._config.start_queue_url,
                         MessageBody=json.dumps({"query_id": query_id, "deadline_at": deadline_at}))


def execution_input(query_id: str, deadline_at: int) -> ExecutionInput:
    """No personal data: the workflow loads what it needs from the query record."""
    return {"query_id": query_id, "deadline_at": int(deadline_at)}


class QueryStarter:
    """Starts one execution per queued query; idempotent by execution name."""

    _DEFER = {"ThrottlingException", "ExecutionLimitExceeded", "ServiceUnavailable",
              "InternalServerError", "RequestTimeout"}

    def __init__(self, sfn_client: Any | None = None, config: Settings | None = None) -> None:
        self._sfn = sfn_client
        self._config = config or settings()

    def start(self, message: dict[str, Any]) -> None:
        sfn = self._sfn or clients.client("stepfunctions")
        try:
            sfn.start_execution(
                stateMachineArn=self._config.state_machine_arn,
                name=message["query_id"],
                input=json.dumps(execution_input(message["query_id"], message["deadline_at"])),
            )
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code == "ExecutionAlreadyExists":
                return  # started before: redelivery is harmless
            if code in self._DEFER:
                raise StartDeferred(code) from exc
            raise


def status_of(query_id: str, kind: LookupKind = ACCOUNTS) -> dict[str, Any]:
    """A query's status, never its counts; a query of the other kind is not found here."""
    try:
        record = QueryRecord.get(query_id)
    except QueryRecord.DoesNotExist as exc:
        raise errors.NotFound("未找到该查询。") from exc
    if kind_of(record.kind) is not kind:
        raise errors.NotFound("未找到该查询。")
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(record.created_at)))
    return {kind.id_name: record.query_id, "status": kind.status(record.status), "created_at": created}

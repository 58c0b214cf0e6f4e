"""Completion: every open record ends with exactly one SMS, sent by its last answer or by its deadline.

A query (either kind of lookup) or a dispute is *open* from acceptance until its reply or outcome
SMS is committed. While open it sits in the sparse `deadline` index of its table, under its
deadline rounded **down** to the slot (a minute deployed: no reply ever comes after the deadline).

Two ways out, one route:
- its last partner answer (fan-out, callback, retry queue, delivery job) *claims* the completion
  with a conditional write, then puts {type, id} on the reply queue;
- the deadline execution of its slot (stepfunctions/deadline.asl.json, one per kind and slot)
  waits until the slot, then claims and enqueues everything due by then that is still open.
The reply queue's consumer (app.send_replies) sends the SMS exactly once (Powertools idempotency)
and takes the record out of the index. A claimer that dies between claim and enqueue loses
nothing: a claim moves the record's slot to `now + reclaim`, so if no reply was committed by
then, that slot's deadline execution claims it again (a stale claim may be taken over).

Executions therefore live seconds: nothing waits on a partner (SPEC §2), and the number of open
executions is the number of pending slots (about 2 × the lead), whatever the query rate.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pynamodb.exceptions import UpdateError
from pynamodb.expressions.update import Action
from pynamodb.models import Model

from chalicelib import clients, telemetry
from chalicelib.config import Settings, settings
from chalicelib.contracts import DeadlineInput, DeadlineStep, QueueMessage, ReplyType
from chalicelib.storage.models import Dispute, QueryRecord, condition_failed

logger = Logger(child=True)

PAGE = 100
SQS_BATCH = 10
SWEEP_THREADS = 8  # shards swept at once (boto3 clients are thread-safe; PynamoDB's connection too)


@dataclass(frozen=True)
class Completable:
    """A kind of record that ends with one SMS: its table and its key attribute."""

    kind: ReplyType
    model: type[Model]
    key: str

    def id_of(self, item: Model) -> str:
        return str(getattr(item, self.key))


COMPLETABLE: dict[ReplyType, Completable] = {
    ReplyType.QUERY: Completable(ReplyType.QUERY, QueryRecord, "query_id"),
    ReplyType.DISPUTE: Completable(ReplyType.DISPUTE, Dispute, "dispute_id"),
}


def slot_of(epoch: float, slot_seconds: int) -> int:
    """The slot an instant falls in, rounded down."""
    return int(epoch) // slot_seconds * slot_seconds


def shard_of(kind: ReplyType, item_id: str, shards: int) -> str:
    return f"{kind.value}#{int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16) % shards}"


def execution_name(kind: ReplyType, slot: int, slot_seconds: int) -> str:
    """`deadline-query-202611301800` (execution names allow no ':'); seconds too for sub-minute slots."""
    stamp = "%Y%m%d%H%M" if slot_seconds % 60 == 0 else "%Y%m%d%H%M%S"
    return f"deadline-{kind.value}-{dt.datetime.fromtimestamp(slot, dt.UTC).strftime(stamp)}"


def finished_actions(model: Any) -> list[Action]:
    """What the reply's commit writes besides the status: out of the deadline index."""
    return [model.deadline_shard.remove(), model.deadline_slot.remove(), model.completion_claimed_at.remove()]


class Deadlines:
    def __init__(self, config: Settings | None = None, sqs_client: Any | None = None, sfn_client: Any | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config or settings()
        self._sqs = sqs_client
        self._sfn = sfn_client
        self._clock = clock

    @property
    def slot_seconds(self) -> int:
        return self._config.deadline_slot_seconds

    # -- entering: at acceptance ----------------------------------------------------------------
    def entry(self, kind: ReplyType, item_id: str, deadline_at: int) -> dict[str, Any]:
        """The index attributes of a new record (constructor keyword arguments)."""
        return {"deadline_shard": shard_of(kind, item_id, self._config.deadline_shards),
                "deadline_slot": slot_of(deadline_at, self.slot_seconds)}

    # -- claiming: by the last answer, or by the deadline ---------------------------------------
    def claim(self, kind: ReplyType, item: Any, extra: Iterable[Action] = ()) -> bool:
        """Claim the completion of an open record and enqueue its reply; False if someone else holds it
        (a fresh claim) or it is no longer open. `extra`: what else the claim writes (forgetting data)."""
        if not self._take(COMPLETABLE[kind].model, item, extra):
            return False
        self.enqueue(kind, [COMPLETABLE[kind].id_of(item)])
        return True

    def rearm(self, kind: ReplyType, item_id: str) -> bool:
        """Its reply could not be sent now (SNS throttling, a dependency down): keep the claim and hand it to
        the deadline execution of `now + reclaim`, which enqueues it again, instead of burning the queue's
        retries into the dead-letter queue. False when the record is no longer open (replied meanwhile)."""
        spec = COMPLETABLE[kind]
        model: Any = spec.model
        now = int(self._clock())
        try:
            model(item_id).update(
                actions=[model.completion_claimed_at.set(now),
                         model.deadline_slot.set(slot_of(now + self._config.reply_reclaim_seconds, self.slot_seconds))],
                condition=model.deadline_slot.exists())
        except UpdateError as exc:
            if condition_failed(exc):
                return False
            raise
        telemetry.count("ReplyDeferred", kind=kind.value)
        return True

    def enqueue(self, kind: ReplyType, ids: list[str]) -> None:
        sqs = self._sqs or clients.client("sqs")
        for start in range(0, len(ids), SQS_BATCH):
            entries = [{"Id": str(i), "MessageBody": json.dumps(QueueMessage(type=kind.value, id=item_id))}
                       for i, item_id in enumerate(ids[start:start + SQS_BATCH])]
            answer = sqs.send_message_batch(QueueUrl=self._config.reply_queue_url, Entries=entries)
            if answer.get("Failed"):
                # Not lost: claimed, so the slot `now + reclaim` claims them again. Counted for the alarm.
                telemetry.count("ReplyEnqueueFailed", len(answer["Failed"]))

    # -- the deadline executions (stepfunctions/deadline.asl.json) ------------------------------
    def step(self, event: DeadlineInput) -> DeadlineStep:
        """Wait until the slot (re-checking the clock: moto's Wait is not trusted), then reply to what is due."""
        kind, slot = ReplyType(event["kind"]), int(event["slot"])
        now = self._clock()
        if now < slot:
            return {"kind": kind.value, "slot": slot, "wait_seconds": max(1, math.ceil(slot - now)), "more": False}
        telemetry.latency("DeadlineLag", 1000 * (now - slot), kind=kind.value)
        more = self.sweep(kind, slot_of(now, self.slot_seconds), budget_end=now + self._config.deadline_budget_seconds)
        return {"kind": kind.value, "slot": slot, "wait_seconds": 0, "more": more}

    def sweep(self, kind: ReplyType, until: int, budget_end: float) -> bool:
        """Claim and enqueue every open record due by `until` (older missed slots included).
        True when the budget ran out first: the execution loops for more (SweepAgain).

        The shards are swept side by side: each claim is one conditional write (a few ms), so one thread
        would cap a slot at a few hundred replies a second, below the query rate a silent partner sends here."""
        from concurrent.futures import ThreadPoolExecutor

        shards = range(self._config.deadline_shards)
        with ThreadPoolExecutor(max_workers=min(SWEEP_THREADS, len(shards))) as pool:
            results = list(pool.map(lambda shard: self._sweep_shard(kind, shard, until, budget_end), shards))
        claimed = sum(count for count, _ in results)
        if claimed:
            telemetry.count("DeadlineReplies", claimed, kind=kind.value)
            logger.info("deadline replies enqueued", extra={"kind": kind.value, "count": claimed, "until": until})
        return any(more for _, more in results)

    def _sweep_shard(self, kind: ReplyType, shard: int, until: int, budget_end: float) -> tuple[int, bool]:
        """(claimed, budget ran out) for one shard of the deadline index."""
        spec = COMPLETABLE[kind]
        model: Any = spec.model
        claimed = 0
        batch: list[str] = []
        for item in model.deadline.query(f"{kind.value}#{shard}", model.deadline_slot <= until, page_size=PAGE):
            if self._clock() >= budget_end:
                self.enqueue(kind, batch)
                return claimed, True
            if self._take(model, item):
                batch.append(spec.id_of(item))
                claimed += 1
            if len(batch) >= SQS_BATCH:
                self.enqueue(kind, batch)
                batch = []
        self.enqueue(kind, batch)
        return claimed, False

    def _take(self, model: Any, item: Any, extra: Iterable[Action] = ()) -> bool:
        """The conditional write of a claim: the record is open, and unclaimed or its claim is stale."""
        now = int(self._clock())
        reclaim = self._config.reply_reclaim_seconds
        # If no reply is committed by then, the deadline execution of that slot claims it again.
        retry_slot = slot_of(now + reclaim, self.slot_seconds)
        current = getattr(item, "deadline_slot", None)
        slot = min(int(current), retry_slot) if current is not None else retry_slot
        claimed = model.completion_claimed_at
        try:
            open_and_free = model.deadline_slot.exists() & (claimed.does_not_exist() | (claimed <= now - reclaim))
            item.update(actions=[claimed.set(now), model.deadline_slot.set(slot), *extra], condition=open_and_free)
        except UpdateError as exc:
            if condition_failed(exc):
                return False  # replied meanwhile, or claimed a moment ago by its last answer or a deadline
            raise
        return True

    # -- the starter (a scheduled function: EventBridge rules cannot name executions) ----------
    def start_ahead(self, now: float | None = None) -> list[str]:
        """Start the deadline executions of the next `deadline_lead_slots` slots per kind that are not running yet
        (one ListExecutions, then about one StartExecution per kind and run: the StartExecution quota
        is the queries'). The current slot too when none runs at all (a fresh deployment, a starter outage);
        a slot whose execution never ran is caught up by the next one anyway."""
        sfn = self._sfn or clients.client("stepfunctions")
        at = self._clock() if now is None else now
        first = slot_of(at, self.slot_seconds)
        machine = self._config.deadline_state_machine_arn
        started = []
        running = {execution["name"] for page in sfn.get_paginator("list_executions").paginate(
            stateMachineArn=machine, statusFilter="RUNNING") for execution in page["executions"]}
        for kind in ReplyType:
            idle = not any(name.startswith(f"deadline-{kind.value}-") for name in running)
            for i in range(0 if idle else 1, self._config.deadline_lead_slots + 1):
                slot = first + i * self.slot_seconds
                name = execution_name(kind, slot, self.slot_seconds)
                if name in running:
                    continue
                execution: DeadlineStep = {"kind": kind.value, "slot": slot,
                                           "wait_seconds": max(0, math.ceil(slot - at)), "more": False}
                try:
                    sfn.start_execution(stateMachineArn=machine, name=name, input=json.dumps(execution))
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "ExecutionAlreadyExists":
                        raise
                    continue
                started.append(name)
        return started

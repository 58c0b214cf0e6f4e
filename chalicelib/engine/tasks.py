"""A task sent to a partner: what a lookup (company or operator) and a dispute share.

- `send`: one signed request, its reply classified (SPEC §4): 5xx, 429, timeout, connection error
  and a body over the cap are transient; 202 means it calls back; 200 carries the answer, parsed by
  the task's own parser (anything unusable, or an answer to another task, is refused); any other
  status is a permanent refusal.
- `park`: a transient failure, or an open circuit, puts the task in its partner's backlog (the
  sparse `backlog` index both task tables carry) and, while the circuit is closed, nudges it back
  through the retry queue after its backoff. A task that was tried backs off on its own, so a failed
  probe moves to the back and the next probe is another task (probes rotate).
- `settle`: the answer stored once; a second one is read back for the caller to tell a duplicate from
  a conflict.
- `expire`: out of the backlog unsent once its deadline passed (its reply says so).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from aws_lambda_powertools import Logger
from pynamodb.exceptions import UpdateError

from chalicelib import http, telemetry
from chalicelib.contracts import QueueMessage, TaskState, TaskType
from chalicelib.partners.protocol import Refused
from chalicelib.registry import Partner
from chalicelib.storage.models import condition_failed

logger = Logger(child=True)

FIRST_BACKOFF_SECONDS = 2
MAX_BACKOFF_SECONDS = 900  # also SQS's longest message delay

A = TypeVar("A")


def backoff(attempts: int) -> int:
    """Seconds before the next try after `attempts` transient failures: 2, 4, 8, … capped at 15 min."""
    return int(min(FIRST_BACKOFF_SECONDS * 2 ** max(0, attempts - 1), MAX_BACKOFF_SECONDS))


class Outcome(Enum):
    ANSWERED = "answered"    # 200 with a valid answer
    WAITING = "waiting"      # 202: it calls back
    REFUSED = "refused"      # any other status, or a 200 we cannot use: permanent, no answer
    TRANSIENT = "transient"  # 5xx, 429, timeout, connection error, too large: the backlog's


@dataclass(frozen=True)
class Sent(Generic[A]):
    outcome: Outcome
    answer: A | None = None


def rejected(partner_id: str, reason: str) -> None:
    """Operators hear of every answer we refuse; the log holds our reason, never partner text."""
    telemetry.count("PartnerAnswerRejected", company=partner_id)
    logger.warning("partner answer rejected", extra={"company": partner_id, "reason": reason})


def send(partner: Partner, url: str, payload: dict[str, Any], secret: str, task_id: str,
         parse: Callable[[Any], A], answers: Callable[[A], str]) -> Sent[A]:
    """POST one signed task; `parse` reads a 200's body (raising Refused), `answers` names the task an
    answer is for (an answer to another task is refused)."""
    try:
        reply = http.post_signed(url, payload, secret)
    except http.Unreachable:
        return Sent(Outcome.TRANSIENT)
    if reply.status >= 500 or reply.status == 429:
        return Sent(Outcome.TRANSIENT)
    if reply.status == 202:
        return Sent(Outcome.WAITING)
    if reply.status == 200:
        try:
            answer = parse(reply.body)
        except Refused as exc:
            rejected(partner.id, exc.reason)
            return Sent(Outcome.REFUSED)
        if answers(answer) == task_id:
            return Sent(Outcome.ANSWERED, answer)
        rejected(partner.id, "wrong_task_id")
    return Sent(Outcome.REFUSED)


def park(task: Any, task_type: TaskType, task_id: str, now: int, tried: bool, circuit_open: bool,
         still_open: Any, sqs: Any, retry_queue_url: str, metric: str) -> None:
    """Into the partner's backlog (`still_open`: the condition that it has not been answered meanwhile)."""
    model: Any = type(task)
    attempts = int(task.attempts or 0) + (1 if tried else 0)
    due = now + backoff(attempts) if tried else now
    try:
        task.update(actions=[model.state.set(TaskState.UNSENT), model.attempts.set(attempts),
                             model.backlog_partner.set(task.company), model.due_at.set(due)],
                    condition=still_open)
    except UpdateError as exc:
        if condition_failed(exc):
            return  # its answer arrived meanwhile (a partner may answer a request it failed)
        raise
    telemetry.count(metric, company=task.company)
    if not circuit_open and due < int(task.deadline_at):
        sqs.send_message(QueueUrl=retry_queue_url,
                         MessageBody=json.dumps(QueueMessage(type=task_type.value, id=task_id)),
                         DelaySeconds=min(backoff(attempts), MAX_BACKOFF_SECONDS))


def settle(task: Any, digest: str, now: int, actions: list[Any], still_open: Any) -> bool:
    """Store a task's answer once (the settle-once rule every kind shares): True when this call stored it;
    False when it was settled (or closed) before, and `task` is then read back as it stands, for the
    caller to tell an exact duplicate (same `answer_digest`) from a conflict."""
    model: Any = type(task)
    try:
        task.update(actions=[model.state.set(TaskState.SETTLED), model.answer_digest.set(digest),
                             model.answered_at.set(now), model.backlog_partner.remove(), model.due_at.remove(),
                             *actions], condition=still_open)
    except UpdateError as exc:
        if not condition_failed(exc):
            raise
        task.refresh(consistent_read=True)
        return False
    return True


def expire(task: Any) -> bool:
    """Out of the backlog unsent (its deadline passed, or nobody to send it to); False if it moved on meanwhile."""
    model: Any = type(task)
    try:
        task.update(actions=[model.state.set(TaskState.EXPIRED), model.backlog_partner.remove(),
                             model.due_at.remove()], condition=model.state == TaskState.UNSENT)
    except UpdateError:
        return False  # settled or expired by someone else meanwhile
    return True

"""A task sent to a partner: what a lookup (company or operator) and a dispute share.

- `TaskClient`: one signed request, its reply classified (SPEC §4): 5xx, 429, timeout, connection error
  and a body over the cap are transient; 202 means it calls back; 200 carries the answer, read by the
  client's `parse` (anything unusable, or an answer to another task, is refused); any other status is a
  permanent refusal.
- `TaskDesk`: one task through its partner's circuit: no request while the circuit is open; each reply
  updates the circuit; a transient failure parks the task; any other reply goes to the desk's hook for
  its outcome. And a callback's task found, as unknown when it is another partner's or kind's.
- `park`: a transient failure, or an open circuit, puts the task in its partner's backlog (the
  sparse `backlog` index both task tables carry) and, while the circuit is closed, nudges it back
  through the retry queue after its backoff. A task that was tried backs off on its own, so a failed
  probe moves to the back and the next probe is another task (probes rotate).
- `settle`: the answer stored once; a second one is read back for the caller to tell a duplicate from
  a conflict (by `digest`).
- `expire`: out of the backlog unsent once its deadline passed (its reply says so).
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

from aws_lambda_powertools import Logger
from pynamodb.exceptions import UpdateError

from chalicelib import clients, errors, http, telemetry
from chalicelib.config import Settings, settings
from chalicelib.contracts import QueueMessage, TaskState, TaskType
from chalicelib.partners.circuit import Circuits, CircuitState
from chalicelib.partners.kinds import LookupKind, kind_of
from chalicelib.partners.protocol import Refused
from chalicelib.privacy import partner_secret
from chalicelib.registry import Partner
from chalicelib.storage.models import condition_failed

logger = Logger(child=True)

MAX_BACKOFF_SECONDS = 900  # also SQS's longest message delay

T = TypeVar("T")  # a task table's item (Lookup, Dispute)
A = TypeVar("A")  # a partner's answer to it, parsed (Answer, DisputeReply)
R = TypeVar("R")  # what sending it gives its caller (a lookup's settled result; nothing for a dispute)


def backoff(attempts: int, first: int) -> int:
    """Seconds before the next try after `attempts` transient failures: first, twice that, … capped at 15 min
    (2, 4, 8, … deployed: Settings.task_first_backoff_seconds)."""
    return int(min(first * 2 ** max(0, attempts - 1), MAX_BACKOFF_SECONDS))


class Outcome(Enum):
    ANSWERED = "answered"    # 200 with a valid answer
    WAITING = "waiting"      # 202: it calls back
    REFUSED = "refused"      # any other status, or a 200 we cannot use: permanent, no answer
    TRANSIENT = "transient"  # 5xx, 429, timeout, connection error, too large: the backlog's


@dataclass(frozen=True)
class Sent(Generic[A]):
    outcome: Outcome
    answer: A | None = None


class Canonical(Protocol):
    def canonical(self) -> str: ...


def digest(answer: Canonical) -> str:
    """What a settled task keeps of its answer: equal answers, equal digests (duplicate vs conflict)."""
    return hashlib.sha256(answer.canonical().encode()).hexdigest()


def rejected(partner_id: str, reason: str) -> None:
    """Operators hear of every answer we refuse; the log holds our reason, never partner text."""
    telemetry.count("PartnerAnswerRejected", company=partner_id)
    logger.warning("partner answer rejected", extra={"company": partner_id, "reason": reason})


class TaskClient(ABC, Generic[A]):
    """One signed task request to a partner, its reply classified; and how the partner's answer to a task of
    this family reads, whether it comes in a 200 or by callback."""

    def __init__(self, config: Settings | None = None,
                 secret_for: Callable[[str], str] = partner_secret) -> None:
        self._config = config or settings()
        self._secret_for = secret_for

    @abstractmethod
    def parse(self, kind: LookupKind, partner: Partner, body: Any) -> A:
        """The partner's answer, or Refused (our reason) when it breaks a bound."""

    @abstractmethod
    def task_of(self, answer: A) -> str:
        """The id of the task an answer says it is for."""

    def post(self, kind: LookupKind, partner: Partner, task_id: str, fields: dict[str, str], path: str,
             callback_suffix: str, id_field: str) -> Sent[A]:
        """POST {base_url}{path} with the task's id (as `id_field`, the id the partner answers with), its
        `fields` and where to call back: /v1/{the kind's route}/{partner}/{callback_suffix}."""
        callback = f"{self._config.public_api_url}/v1/{kind.callback_route}/{partner.id}/{callback_suffix}"
        payload = {id_field: task_id, **fields, "callback_url": callback}
        try:
            reply = http.post_signed(f"{partner.base_url}{path}", payload, self._secret_for(partner.secret_name))
        except http.Unreachable:
            return Sent(Outcome.TRANSIENT)
        if reply.status >= 500 or reply.status == 429:
            return Sent(Outcome.TRANSIENT)
        if reply.status == 202:
            return Sent(Outcome.WAITING)
        if reply.status == 200:
            try:
                answer = self.parse(kind, partner, reply.body)
            except Refused as exc:
                rejected(partner.id, exc.reason)
                return Sent(Outcome.REFUSED)
            if self.task_of(answer) == task_id:
                return Sent(Outcome.ANSWERED, answer)
            rejected(partner.id, "wrong_task_id")
        return Sent(Outcome.REFUSED)


class TaskDesk(ABC, Generic[T, A, R]):
    """Sending one family of tasks (lookups, disputes) through its partners' circuits, and finding the task a
    callback answers. What the family does with each outcome is its hooks'."""

    task_type: TaskType  # what the retry queue calls it
    model: type[Any]  # its table (a `backlog` index; `company` and `kind` on every item)
    deferred_metric: str  # counted for every task parked
    unknown_task: str  # the 404's message for a callback naming no task of this partner's and kind

    def __init__(self, circuits: Circuits, client: TaskClient[A], sqs_client: Any | None, config: Settings | None,
                 clock: Callable[[], float]) -> None:
        self.circuits = circuits
        self.client = client
        self._sqs = sqs_client
        self._config = config or settings()
        self._clock = clock

    @property
    def sqs(self) -> Any:
        return self._sqs or clients.client("sqs")

    # -- what a family says --------------------------------------------------------------------
    @abstractmethod
    def task_id(self, task: T) -> str:
        """Its table's key: what the retry queue names it by."""

    @abstractmethod
    def still_open(self) -> Any:
        """The condition under which a task may still be parked or settled (not answered meanwhile)."""

    @abstractmethod
    def request(self, task: T, partner: Partner, fields: dict[str, str]) -> Sent[A]:
        """Send it once (`fields`: the personal data it carries)."""

    @abstractmethod
    def answered(self, task: T, partner: Partner, answer: A) -> R:
        """A 200 with its answer."""

    @abstractmethod
    def refused(self, task: T) -> R:
        """A 4xx, or a 200 we cannot use: the partner did not take it, and never will."""

    @abstractmethod
    def waiting(self, task: T, now: int) -> None:
        """A 202: the partner calls back."""

    @abstractmethod
    def callback_key(self, kind: LookupKind, partner: Partner, task_id: str) -> str | None:
        """The table key of the task a callback names `task_id`, or None if no task of ours is named so."""

    def delivered(self, partner: Partner) -> None:
        """The partner took the request (any reply but a transient failure)."""

    # -- sending (the first try, the retry queue, the delivery job) -------------------------------
    def send_unless_open(self, task: T, partner: Partner, fields: dict[str, str], state: CircuitState,
                         now: int) -> R | None:
        """The first try: none while the partner's circuit is open (the task waits in the backlog)."""
        if state.is_open:
            self.park(task, now, tried=False, circuit_open=True)
            return None
        return self.dispatch(task, partner, fields, state, now)

    def dispatch(self, task: T, partner: Partner, fields: dict[str, str], state: CircuitState,
                 now: int) -> R | None:
        """Send it and act on the reply: what the outcome's hook returns; None while it waits (parked, or for
        its callback)."""
        sent = self.request(task, partner, fields)
        if sent.outcome is Outcome.TRANSIENT:
            opened = self.circuits.failed(partner.id, now)
            self.park(task, now, tried=True, circuit_open=opened)
            return None
        self.circuits.succeeded(state, now)
        self.delivered(partner)
        if sent.outcome is Outcome.ANSWERED and sent.answer is not None:
            return self.answered(task, partner, sent.answer)
        if sent.outcome is Outcome.REFUSED:
            return self.refused(task)
        self.waiting(task, now)
        return None

    def park(self, task: T, now: int, tried: bool, circuit_open: bool) -> None:
        """Into the partner's backlog: nudged back while the circuit is closed; while open, only the delivery
        job's probe and replay send it (no work per task)."""
        parked: Any = task
        model: Any = type(task)
        attempts = int(parked.attempts or 0) + (1 if tried else 0)
        delay = backoff(attempts, self._config.task_first_backoff_seconds)
        due = now + delay if tried else now
        try:
            parked.update(actions=[model.state.set(TaskState.UNSENT), model.attempts.set(attempts),
                                   model.backlog_partner.set(parked.company), model.due_at.set(due)],
                          condition=self.still_open())
        except UpdateError as exc:
            if condition_failed(exc):
                return  # its answer arrived meanwhile (a partner may answer a request it failed)
            raise
        telemetry.count(self.deferred_metric, company=parked.company)
        if not circuit_open and due < int(parked.deadline_at):
            message = QueueMessage(type=self.task_type.value, id=self.task_id(task))
            self.sqs.send_message(QueueUrl=self._config.retry_queue_url, MessageBody=json.dumps(message),
                                  DelaySeconds=delay)

    # -- callbacks --------------------------------------------------------------------------------
    def answered_task(self, kind: LookupKind, partner: Partner, body: Any) -> tuple[T, A]:
        """The task a (signed) callback answers, and its answer. An answer we cannot use is refused (400, and
        counted); a task of another partner or kind is as unknown as one that does not exist (404)."""
        try:
            answer = self.client.parse(kind, partner, body)
        except Refused as exc:
            rejected(partner.id, exc.reason)
            raise
        key = self.callback_key(kind, partner, self.client.task_of(answer))
        if key is None:
            raise errors.NotFound(self.unknown_task)
        try:
            task = self.model.get(key, consistent_read=True)
        except self.model.DoesNotExist as exc:
            raise errors.NotFound(self.unknown_task) from exc
        if task.company != partner.id or kind_of(task.kind) is not kind:
            raise errors.NotFound(self.unknown_task)
        return task, answer


def mark_waiting(task: Any, now: int, actions: list[Any], condition: Any) -> None:
    """After a 202: pending, out of the backlog, waiting for its callback — unless that came first."""
    model: Any = type(task)
    try:
        task.update(actions=[model.state.set(TaskState.PENDING), model.backlog_partner.remove(),
                             model.due_at.remove(), model.requested_at.set(now), *actions], condition=condition)
    except UpdateError as exc:
        if not condition_failed(exc):
            raise  # else: its callback came first, and settled it


def settle(task: Any, answer_digest: str, now: int, actions: list[Any], still_open: Any) -> bool:
    """Store a task's answer once (the settle-once rule every kind shares): True when this call stored it;
    False when it was settled (or closed) before, and `task` is then read back as it stands, for the
    caller to tell an exact duplicate (same `answer_digest`) from a conflict."""
    model: Any = type(task)
    try:
        task.update(actions=[model.state.set(TaskState.SETTLED), model.answer_digest.set(answer_digest),
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

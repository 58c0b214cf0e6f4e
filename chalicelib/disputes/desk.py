"""Forwarding a dispute to its partner, settling the answer, claiming its one outcome SMS.

Both kinds (partners/kinds.py): "not my account" to a company (SPEC §8, with the phone) and "not my
card" to an operator (SPEC §10.1, with the name and ID number, which are deleted as soon as the
operator accepted it). The dispute workflow's Forward task sends the `submitted` SMS (once), then
forwards the dispute — through the same per-partner delivery as lookups (SPEC §4, §8):
- the partner's circuit (partners/circuit.py) is checked first; an open circuit parks the dispute;
- every reply updates the circuit as lookups do (a transient failure counts, anything else resets);
- a transient failure parks the dispute (engine/tasks.py: state unsent, due after its backoff) and, while
  the circuit is closed, nudges it back through the SQS retry queue ({"type": "dispute"});
- from there a parked dispute is a task like any lookup of the per-partner delivery loop
  (engine/delivery.py, through `DisputeTasks`): the retry nudge, the per-minute replay at the
  partner's pace, the open circuit's probe (whichever task of any kind is due first), its expiry.
The answer (in the 200, or by callback) is stored once — an exact duplicate changes nothing,
a different one is a Conflict — and whoever stores it claims the dispute's completion and enqueues
its outcome SMS (engine/deadlines.py); with no answer, the deadline execution of its slot does.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib import errors, telemetry
from chalicelib.config import Settings
from chalicelib.contracts import DisputeOutcome, DisputeStatus, ReplyType, TaskState, TaskType
from chalicelib.disputes.notify import DisputeNotifier
from chalicelib.disputes.protocol import DISPUTE_ID, DisputeReply, parse_dispute_answer
from chalicelib.engine import tasks
from chalicelib.engine.deadlines import Deadlines
from chalicelib.engine.delivery import TaskKind
from chalicelib.engine.tasks import Sent, TaskClient, TaskDesk
from chalicelib.partners.circuit import Circuits, CircuitState
from chalicelib.partners.kinds import KINDS, LookupKind, kind_of
from chalicelib.privacy import Vault, partner_secret
from chalicelib.registry import Partner
from chalicelib.storage.models import Dispute

logger = Logger(child=True)

_OPEN = (TaskState.PENDING, TaskState.UNSENT)  # not answered, not closed at the deadline
# A card dispute's name and ID number, deleted once the operator accepted it or answered (SPEC §10.1).
_FORGET_IDENTITY = (Dispute.name_sealed.remove(), Dispute.id_sealed.remove())


class DisputeClient(TaskClient[DisputeReply]):
    """One signed dispute request to a partner (SPEC §8, §10.1), its reply classified as for lookups."""

    def send(self, kind: LookupKind, partner: Partner, dispute_id: str, personal: dict[str, str]) -> Sent[DisputeReply]:
        """`personal`: the kind's dispute fields (the phone; or the name and ID number)."""
        return self.post(kind, partner, dispute_id, personal, kind.dispute_path, "disputes", "dispute_id")

    def parse(self, kind: LookupKind, partner: Partner, body: Any) -> DisputeReply:
        return parse_dispute_answer(body, kind, kind.dispute_max(self._config.partner_max_account_count))

    def task_of(self, answer: DisputeReply) -> str:
        return answer.dispute_id


class DisputeDesk(TaskDesk[Dispute, DisputeReply, None]):
    task_type = TaskType.DISPUTE
    model = Dispute
    deferred_metric = "DisputeDeferred"
    unknown_task = "未知的核查申请编号。"
    client: DisputeClient

    def __init__(self, vault: Vault, circuits: Circuits, client: DisputeClient, notifier: DisputeNotifier,
                 deadlines: Deadlines, sqs_client: Any | None = None, config: Settings | None = None,
                 clock: Callable[[], float] = time.time, secret_for: Callable[[str], str] = partner_secret) -> None:
        super().__init__(circuits, client, sqs_client, config, clock)
        self._vault = vault
        self.notifier = notifier
        self._deadlines = deadlines
        self._secret_for = secret_for

    def _personal(self, dispute: Dispute) -> dict[str, str] | None:
        """The sealed fields its partner request carries (the kind's), or None once closed or accepted."""
        sealed = {"phone": dispute.phone_sealed, "name": dispute.name_sealed, "id_number": dispute.id_sealed}
        wanted: dict[str, str | None] = {field: sealed[field] for field in kind_of(dispute.kind).dispute_sealed}
        if dispute.data_key is None or any(value is None for value in wanted.values()):
            return None  # closed, or accepted by the operator: nothing is sent any more
        opened: dict[str, str] = self._vault.open(dispute.dispute_id, dispute.data_key, wanted)
        return opened

    def _phone(self, dispute: Dispute) -> str | None:
        if dispute.data_key is None or dispute.phone_sealed is None:
            return None  # closed: no SMS any more
        return self._vault.open(dispute.dispute_id, dispute.data_key, {"phone": dispute.phone_sealed})["phone"]

    # -- ForwardDispute (the dispute execution's one step) ------------------------------------------
    def forward(self, dispute_id: str) -> None:
        now = int(self._clock())
        dispute = Dispute.get(dispute_id, consistent_read=True)
        phone = self._phone(dispute)
        if phone is not None:
            self.notifier.acknowledge(dispute, phone)
        if dispute.state == TaskState.SETTLED:
            self._complete(dispute)  # answered before this (retried) step
            return
        personal = self._personal(dispute)
        if dispute.state != TaskState.PENDING or personal is None:
            return  # in the backlog: the retry queue and the delivery job own it
        kind = kind_of(dispute.kind)
        partner = kind.partner(dispute.company)
        if partner is None:  # left the registry since: nobody to forward to
            self.settle(dispute, DisputeReply(dispute_id, DisputeOutcome.REJECTED), "left_registry")
            return
        self.send_unless_open(dispute, partner, personal, self.circuits.states([partner.id])[partner.id], now)

    # -- sending (Forward, retry queue, delivery job: TaskDesk.dispatch), its outcomes ----------------
    def task_id(self, dispute: Dispute) -> str:
        return dispute.dispute_id

    def still_open(self) -> Any:
        return Dispute.state.is_in(*_OPEN)

    def request(self, dispute: Dispute, partner: Partner, personal: dict[str, str]) -> Sent[DisputeReply]:
        return self.client.send(kind_of(dispute.kind), partner, dispute.dispute_id, personal)

    def delivered(self, partner: Partner) -> None:
        telemetry.count("DisputeForwarded", company=partner.id)

    def answered(self, dispute: Dispute, partner: Partner, answer: DisputeReply) -> None:
        self.settle(dispute, answer, tasks.digest(answer))

    def refused(self, dispute: Dispute) -> None:  # the company did not take it
        self.settle(dispute, DisputeReply(dispute.dispute_id, DisputeOutcome.REJECTED), "refused")

    def waiting(self, dispute: Dispute, now: int) -> None:
        # It calls back, and has what it needs: a card dispute's name and ID number go now.
        tasks.mark_waiting(dispute, now, [Dispute.status.set(DisputeStatus.FORWARDED), *_FORGET_IDENTITY],
                           self.still_open())

    def send_parked(self, dispute: Dispute, state: CircuitState, now: int) -> None:
        """A dispute from the backlog (the delivery loop's retry, replay or probe)."""
        kind = kind_of(dispute.kind)
        partner = kind.partner(dispute.company)
        personal = self._personal(dispute)
        if partner is None or personal is None:
            tasks.expire(dispute)  # left the registry, or closed: the deadline execution sends the expired SMS
            return
        self.dispatch(dispute, partner, personal, state, now)

    # -- settling -------------------------------------------------------------------------
    def settle(self, dispute: Dispute, reply: DisputeReply, digest: str) -> None:
        """Store the answer once and claim the outcome SMS. A duplicate changes nothing; a different one
        is a Conflict; one after the deadline closed the dispute is acknowledged and changes nothing (SPEC §4)."""
        if tasks.settle(dispute, digest, int(self._clock()),
                        [Dispute.outcome.set(reply.outcome.value), Dispute.accounts.set(reply.accounts),
                         Dispute.status.set(DisputeStatus.FORWARDED), *_FORGET_IDENTITY],
                        self.still_open()):
            telemetry.count("DisputeAnswered", company=dispute.company)
        elif dispute.state == TaskState.EXPIRED:
            telemetry.count("LateAnswer", company=dispute.company)
            return  # closed at its deadline: the citizen has had the expired SMS
        elif dispute.answer_digest != digest:
            raise errors.Conflict("该核查申请已有不同的答复。")
        self._complete(dispute)

    def _complete(self, dispute: Dispute) -> None:
        """Claim the outcome SMS (once; send_replies sends it from the reply queue)."""
        if dispute.state == TaskState.SETTLED and dispute.outcome and dispute.completion_claimed_at is None:
            self._deadlines.claim(ReplyType.DISPUTE, dispute)

    # -- callbacks (POST /v1/partners/{company}/disputes, /v1/operators/{operator}/disputes) ---------
    def record_callback(self, kind: LookupKind, partner: Partner, body: Any) -> None:
        dispute, reply = self.answered_task(kind, partner, body)
        self.settle(dispute, reply, tasks.digest(reply))

    def callback_key(self, kind: LookupKind, partner: Partner, task_id: str) -> str | None:
        return task_id if DISPUTE_ID.fullmatch(task_id) else None


class DisputeTasks(TaskKind):
    """Disputes as tasks of the per-partner delivery loop (engine/delivery.py)."""

    task_type = TaskType.DISPUTE
    model = Dispute

    def __init__(self, desk: DisputeDesk) -> None:
        self._desk = desk

    def backlog(self, partner: str, until: int) -> Iterator[Dispute]:
        """Companies and operators both take disputes (SPEC §8, §10.1)."""
        return super().backlog(partner, until) if any(k.partner(partner) for k in KINDS.values()) else iter(())

    def send(self, now: int, batch: list[tuple[Dispute, CircuitState]]) -> None:
        for dispute, state in batch:
            try:
                self._desk.send_parked(dispute, state, now)
            except Exception:  # one dispute's failure must not stop the others (it stays in the backlog)
                logger.exception("dispute send failed", extra={"company": dispute.company})

"""The dispute's two SMS (SPEC §8, §10.1 in the kind's words): `submitted` when it is forwarded, one outcome
SMS at the end, both to the phone that asked.

Each goes out exactly once even when its step is retried: Powertools Idempotency keyed by
(dispute id, kind). A permanent SNS refusal is counted and logged, never retried.
The outcome SMS is sent from the reply queue (engine/deadlines.py: claimed by the partner's answer,
or by the deadline execution of the dispute's slot). Sending it also closes the dispute: status
resolved/expired, out of the deadline index, the open-dispute lock released, the sealed phone (and a
card dispute's name and ID number, if the operator never took it) deleted.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from pynamodb.exceptions import DeleteError, UpdateError

from chalicelib import sms, telemetry
from chalicelib.contracts import DisputeOutcome, DisputeStatus, TaskState
from chalicelib.engine.deadlines import finished_actions
from chalicelib.partners.kinds import kind_of
from chalicelib.privacy import Vault
from chalicelib.storage.models import Dispute, Throttle

logger = Logger(child=True)

SUBMITTED = "submitted"
OUTCOME = "outcome"


class DisputeNotifier:
    def __init__(self, vault: Vault, sender: sms.SmsSender, persistence: Any | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._vault = vault
        self._clock = clock
        # one SMS per dispute and kind (submitted, outcome)
        self._once = sms.ExactlyOnce(sender, persistence, "[dispute_id, kind]", 30 * 86400)
        self.idempotency = self._once.idempotency

    def send(self, dispute_id: str, kind: str, phone: str, message: str) -> bool:
        """Send once; False when SNS refused it for good (the dispute goes on regardless)."""
        try:
            self._once.send(delivery={"dispute_id": dispute_id, "kind": kind, "phone": phone, "message": message})
        except sms.SmsRejected as exc:
            telemetry.count("SmsRejected")
            logger.error("dispute SMS refused for good", extra={"dispute_id": dispute_id, "kind": kind,
                                                                 "reason": exc.code})
            return False
        return True

    def acknowledge(self, dispute: Dispute, phone: str) -> None:
        kind = kind_of(dispute.kind)
        partner = kind.partner(dispute.company)
        name = partner.name if partner else dispute.company
        self.send(dispute.dispute_id, SUBMITTED, phone, kind.dispute_submitted_text(name, dispute.dispute_id))

    # -- the outcome SMS (the reply queue) ----------------------------------------------------
    def run(self, dispute_id: str, send: bool = True) -> dict[str, Any]:
        """Send the outcome SMS (its answer, or expired) and close the dispute; `send=False` closes it
        without an SMS (the reply queue's dead letters: it could not be sent)."""
        try:
            dispute = Dispute.get(dispute_id, consistent_read=True)
        except Dispute.DoesNotExist:
            logger.warning("outcome for an unknown dispute skipped", extra={"dispute_id": dispute_id})
            return {"dispute_id": dispute_id, "status": None}
        if dispute.deadline_slot is None and dispute.status in (DisputeStatus.RESOLVED, DisputeStatus.EXPIRED):
            return {"dispute_id": dispute_id, "status": dispute.status}  # a duplicate message: closed already
        outcome, accounts = self._close_at_deadline(dispute)
        status = DisputeStatus.EXPIRED if outcome == DisputeOutcome.EXPIRED else DisputeStatus.RESOLVED
        sent = False
        if send and dispute.phone_sealed is not None and dispute.data_key is not None:  # None: closed by an earlier try
            kind = kind_of(dispute.kind)
            phone = self._vault.open(dispute_id, dispute.data_key, {"phone": dispute.phone_sealed})["phone"]
            message = kind.dispute_outcome_text(outcome.value, kind.partner(dispute.company), dispute.company,
                                                dispute_id, accounts)
            sent = self.send(dispute_id, OUTCOME, phone, message)
        dispute.update(actions=[Dispute.status.set(status), Dispute.outcome.set(outcome.value),
                                Dispute.updated_at.set(int(self._clock())),
                                Dispute.data_key.remove(), Dispute.phone_sealed.remove(), Dispute.name_sealed.remove(),
                                Dispute.id_sealed.remove(), *finished_actions(Dispute)])
        try:  # the open-dispute lock: the citizen may dispute this company again
            Throttle(dispute.lock_key).delete(condition=Throttle.holder == dispute_id)
        except DeleteError:
            pass  # expired, or already released by an earlier try
        ended = "Expired" if status == DisputeStatus.EXPIRED else "Resolved"
        telemetry.count(f"Dispute{ended}", company=dispute.company)
        partner = kind_of(dispute.kind).partner(dispute.company)
        if partner is not None and partner.group_id:  # operators: the alarms watch 4 groups, not 132 operators
            telemetry.count(f"CardDispute{ended}", group=partner.group_id)
        logger.info("dispute closed", extra={"dispute_id": dispute_id, "status": status.value,
                                             "outcome": outcome.value, "sms_sent": sent})
        return {"dispute_id": dispute_id, "status": status.value}

    @staticmethod
    def _close_at_deadline(dispute: Dispute) -> tuple[DisputeOutcome, int]:
        """Its answer if it settled; else it is closed unanswered (expired): its deadline came."""
        if dispute.state != TaskState.SETTLED:
            try:
                dispute.update(actions=[Dispute.state.set(TaskState.EXPIRED), Dispute.backlog_partner.remove(),
                                        Dispute.due_at.remove()],
                               condition=Dispute.state.is_in(TaskState.PENDING, TaskState.UNSENT))
            except UpdateError as exc:
                if getattr(exc, "cause_response_code", None) != "ConditionalCheckFailedException":
                    raise
                dispute.refresh(consistent_read=True)  # answered at the last moment (or closed already)
        if dispute.state == TaskState.SETTLED and dispute.outcome:
            return DisputeOutcome(dispute.outcome), int(dispute.accounts or 0)
        return DisputeOutcome.EXPIRED, 0

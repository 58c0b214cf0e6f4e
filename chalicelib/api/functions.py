"""The Lambda functions other than the API: queue consumers, workflow steps and schedules.

Each is named from the one table of functions (chalicelib/contracts.py); each imports the domain it drives when
it runs (see chalicelib/wiring.py), so a container pays only for its own function's modules.
"""
from __future__ import annotations

import json
from typing import Any

from chalice import Blueprint, Rate

from chalicelib import contracts, telemetry, wiring
from chalicelib.config import queue_name

# "app", not __name__: Chalice builds each function's handler string from this ("app.start_queries"), and the
# deployed template's handlers are the app module's names (app.py re-exports every function registered here).
bp = Blueprint("app")


# -- queue consumer: start one execution per accepted query -----------------------
@bp.on_sqs_message(queue=queue_name("START_QUEUE_NAME"), batch_size=10, name=contracts.START_QUERIES.name)
def start_queries(event: Any) -> None:
    from chalicelib.queries import QueryStarter, StartDeferred

    starter = QueryStarter()
    deferred = 0
    for record in event:
        try:
            starter.start(json.loads(record.body))
        except StartDeferred as exc:
            deferred += 1
            telemetry.count("StartDeferred")
            wiring.logger.warning("execution start deferred", extra={"reason": str(exc)})
    if deferred:
        # The whole batch comes back after the visibility timeout; the ones
        # started already are skipped by name (ExecutionAlreadyExists).
        raise StartDeferred(f"{deferred} start(s) deferred")


# -- workflow steps (stepfunctions/query.asl.json) ---------------------------------
@bp.lambda_function(name=contracts.VERIFY_CARRIER.name)
def verify_carrier(event: contracts.ExecutionInput, context: Any) -> contracts.CarrierResult:
    return wiring.carrier_check().run(event["query_id"], int(event["deadline_at"]))


@bp.lambda_function(name=contracts.ASK_COMPANIES.name)
def ask_companies(event: contracts.FanOutInput, context: Any) -> None:
    from chalicelib.partners.kinds import kind_of

    wiring.lookups().ask_all(event["query_id"], int(event["deadline_at"]), kind_of(event.get("kind")))


# -- the dispute workflow (stepfunctions/dispute.asl.json) ---------------------------
@bp.lambda_function(name=contracts.FORWARD_DISPUTE.name)
def forward_dispute(event: contracts.DisputeInput, context: Any) -> None:
    notifier = wiring.dispute_notifier()
    if notifier.idempotency is not None and context is not None:
        notifier.idempotency.register_lambda_context(context)
    wiring.disputes().forward(event["dispute_id"])


# -- the one reply route and the deadlines (chalicelib/engine/deadlines.py) -----------
@bp.on_sqs_message(queue=queue_name("REPLY_QUEUE_NAME"), batch_size=10, name=contracts.SEND_REPLIES.name)
def send_replies(event: Any) -> None:
    """Each query's one reply SMS, each dispute's one outcome SMS; a failed one comes back (then its DLQ)."""
    context = getattr(event, "context", None)
    for idempotency in (wiring.reply_sender().idempotency, wiring.dispute_notifier().idempotency):
        if idempotency is not None and context is not None:
            idempotency.register_lambda_context(context)  # in-progress expiry = this invocation
    failed = 0
    for message in _messages(event, contracts.ReplyType):
        try:
            if message["type"] == contracts.ReplyType.QUERY:
                wiring.reply_sender().run(message["id"])
            else:
                wiring.dispute_notifier().run(message["id"])
        except Exception:
            wiring.logger.exception("reply failed, handed back to the deadline machinery",
                             extra={"type": message["type"], "id": message["id"]})
            try:  # tried again in `reply_reclaim_seconds`, not counted against this message's receives
                wiring.deadlines().rearm(contracts.ReplyType(message["type"]), message["id"])
            except Exception:
                failed += 1
                wiring.logger.exception("reply not re-armed either: the message comes back")
    if failed:
        # The whole batch comes back after the visibility timeout; the ones sent are skipped (idempotent).
        raise RuntimeError(f"{failed} reply(ies) failed")


@bp.on_sqs_message(queue=queue_name("REPLY_DLQ_NAME"), batch_size=10, name=contracts.REPLIES_FAILED.name)
def replies_failed(event: Any) -> None:
    """A reply every retry failed to send: its record still ends in a terminal status (and the DLQ alarm fires)."""
    for message in _messages(event, contracts.ReplyType):
        telemetry.count("ReplyDeadLettered", kind=message["type"])
        if message["type"] == contracts.ReplyType.QUERY:
            wiring.reply_sender().fail(message["id"])
        else:
            wiring.dispute_notifier().run(message["id"], send=False)


def _messages(event: Any, types: Any) -> list[contracts.QueueMessage]:
    parsed = [(record.body, contracts.parse_message(record.body, types)) for record in event]
    for _body, message in parsed:
        if message is None:
            wiring.logger.warning("malformed queue message skipped")
    return [message for _body, message in parsed if message is not None]


@bp.schedule(Rate(1, unit=Rate.MINUTES), name=contracts.START_DEADLINES.name)
def start_deadlines(event: Any) -> None:
    wiring.deadlines().start_ahead()


@bp.lambda_function(name=contracts.DEADLINE_STEP.name)
def deadline_step(event: contracts.DeadlineInput, context: Any) -> contracts.DeadlineStep:
    return wiring.deadlines().step(event)


# -- partner delivery (chalicelib/engine/delivery.py) ------------------------------
@bp.on_sqs_message(queue=queue_name("RETRY_QUEUE_NAME"), batch_size=10, name=contracts.RETRY_LOOKUPS.name)
def retry_lookups(event: Any) -> None:
    # Lookups and disputes alike; a malformed message is skipped: its task waits in the backlog.
    wiring.delivery().retry(_messages(event, contracts.TaskType))


@bp.schedule(Rate(1, unit=Rate.MINUTES), name=contracts.DELIVER_BACKLOG.name)
def deliver_backlog(event: Any) -> None:
    wiring.delivery().deliver()

"""一证通查: routes and Lambda entry points. Decorators and wiring only.

The domain lives in chalicelib/; collaborators are built on first use and kept
for the life of the Lambda container.
"""
from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from chalice import Chalice, Rate, Response
from chalice.app import Request

from chalicelib import clients, contracts, errors, pages, registry, telemetry
from chalicelib.api import requests as api_requests
from chalicelib.api.requests import parse_json_object, require_fields
from chalicelib.api.responses import conform, error_response, json_response
from chalicelib.cards.validation import normalise_id_number, normalise_name
from chalicelib.codes import CodeService
from chalicelib.config import settings
from chalicelib.disputes.desk import DisputeClient, DisputeDesk, DisputeTasks
from chalicelib.disputes.intake import DisputeIntake
from chalicelib.disputes.intake import status_of as dispute_status_of
from chalicelib.disputes.notify import DisputeNotifier
from chalicelib.engine.deadlines import Deadlines
from chalicelib.engine.delivery import Delivery
from chalicelib.partners.circuit import Circuits
from chalicelib.partners.delivery import LookupTasks, partner_groups
from chalicelib.partners.kinds import ACCOUNTS, CARDS, LookupKind, kind_of
from chalicelib.partners.lookups import LookupDesk, PartnerClient
from chalicelib.privacy import Hasher, Vault
from chalicelib.queries import Accepted, QueryIntake, QueryStarter, StartDeferred, status_of
from chalicelib.sms import SmsSender
from chalicelib.throttle import china_today
from chalicelib.validation import check_code_format, normalise_id_last6, normalise_phone
from chalicelib.workflow.carrier import CarrierCheck
from chalicelib.workflow.reply import ReplySender

app = Chalice(app_name="yizhengtongcha", configure_logs=False)  # Powertools Logger owns logging
logger = Logger(service="yizhengtongcha")

START_QUEUE_NAME = os.environ.get("START_QUEUE_NAME", "yztc-query-starts")
RETRY_QUEUE_NAME = os.environ.get("RETRY_QUEUE_NAME", "yztc-lookup-retries")
REPLY_QUEUE_NAME = os.environ.get("REPLY_QUEUE_NAME", "yztc-replies")
REPLY_DLQ_NAME = os.environ.get("REPLY_DLQ_NAME", "yztc-replies-dead")
BODY_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded"]
_QUERY_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# -- collaborators, built once per container -----------------------------------
@functools.cache
def hasher() -> Hasher:
    return Hasher()


@functools.cache
def vault() -> Vault:
    return Vault()


@functools.cache
def code_service() -> CodeService:
    return CodeService(hasher(), SmsSender())


@functools.cache
def intake() -> QueryIntake:
    return QueryIntake(code_service(), hasher(), vault())


@functools.cache
def deadlines() -> Deadlines:
    return Deadlines()


@functools.cache
def lookups() -> LookupDesk:
    config = settings()
    return LookupDesk(hasher(), vault(), Circuits(config.circuit_failure_threshold, config.circuit_probe_seconds),
                      PartnerClient(config), deadlines())


@functools.cache
def delivery() -> Delivery:
    return Delivery([LookupTasks(lookups()), DisputeTasks(disputes())], lookups().circuits, partner_groups)


def _idempotency_store() -> Any:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    return DynamoDBPersistenceLayer(table_name=settings().idempotency_table, boto3_client=clients.client("dynamodb"))


@functools.cache
def dispute_notifier() -> DisputeNotifier:
    return DisputeNotifier(vault(), SmsSender(), persistence=_idempotency_store())


@functools.cache
def disputes() -> DisputeDesk:
    config = settings()
    return DisputeDesk(vault(), lookups().circuits, DisputeClient(config), dispute_notifier(), deadlines())


@functools.cache
def dispute_intake() -> DisputeIntake:
    return DisputeIntake(code_service(), vault())


@functools.cache
def carrier_check() -> CarrierCheck:
    return CarrierCheck(vault(), deadlines())


@functools.cache
def reply_sender() -> ReplySender:
    return ReplySender(vault(), SmsSender(), persistence=_idempotency_store(), hasher=hasher())


def _request() -> Request:
    request = app.current_request
    assert request is not None  # always set while a route runs
    return request


def _raw_body(request: Request | None = None) -> bytes:
    raw = (request or _request()).raw_body
    # surrogatepass: a str body holding a lone surrogate becomes bytes that strict UTF-8 decoding
    # refuses later (a 400), instead of an encoding error here (a 500).
    return raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw or b"")


def _client_ip() -> str:
    identity = (_request().context or {}).get("identity") or {}
    return str(identity.get("sourceIp") or "unknown")


def json_api(view: Callable[..., Response | dict[str, Any]]) -> Callable[..., Response]:
    """Domain errors become SPEC §3 error bodies; nothing else ever leaks out."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            result = view(*args, **kwargs)
        except errors.ServiceError as exc:
            return error_response(exc)
        except Exception:
            logger.exception("unhandled error", extra={"route": view.__name__})
            return error_response(errors.ServiceError())
        return result if isinstance(result, Response) else json_response(result)

    return wrapper


@app.middleware("http")
def spec_errors(request: Request, get_response: Callable[[Request], Response]) -> Response:
    """Every request, whatever its route: the body size limit first, and whatever Chalice answers
    itself (wrong method, unsupported media type, an escaped exception) in the SPEC error shape."""
    try:
        api_requests.check_size(_raw_body(request), request.path)
    except errors.ServiceError as exc:
        return error_response(exc)
    except Exception:  # an undecodable base64 body: API Gateway never sends one
        return error_response(errors.InvalidRequest())
    return conform(get_response(request))


# -- HTTP API (SPEC §3) ----------------------------------------------------------
@app.route("/", methods=["GET"])
def index() -> Response:
    return Response(body=pages.index_html(), status_code=200,
                    headers={"Content-Type": "text/html; charset=utf-8"})


@app.route("/v1/companies", methods=["GET"])
@json_api
def list_companies() -> dict[str, Any]:
    return {"companies": [c.public() for c in registry.companies()]}


@app.route("/v1/challenges", methods=["GET"])
@json_api
def new_challenge() -> dict[str, Any]:
    """SPEC §3: an ALTCHA v1 challenge, for a code request beyond the free ones."""
    return code_service().challenge()


@app.route("/v1/verification-codes", methods=["POST"], content_types=BODY_TYPES)
@json_api
def request_code() -> Response:
    body = parse_json_object(_raw_body())
    (phone,) = require_fields(body, "phone")
    issued = code_service().issue(normalise_phone(phone), _client_ip(), body.get("altcha"))
    telemetry.count("CodeSent")
    return json_response({"expires_in": issued.expires_in, "resend_after": issued.resend_after}, 202)


@app.route("/v1/queries", methods=["POST"], content_types=BODY_TYPES)
@json_api
def submit_query() -> Response:
    body = parse_json_object(_raw_body())
    phone, id_last6, code = require_fields(body, "phone", "id_last6", "code")
    phone, id_last6, code = normalise_phone(phone), normalise_id_last6(id_last6), check_code_format(code)
    intake().check_client(_client_ip())
    return _accepted(intake().accept(phone, id_last6, code, _client_ip()), "QueryAccepted")


def _accepted(accepted: Accepted, metric: str) -> Response:
    """The same 202 whatever the carrier will say (SPEC §3, §9): the outcome goes only to the phone."""
    logger.info("query accepted", extra={"query_id": accepted.query_id})
    telemetry.count(metric)
    # 48: SPEC §3's promise to the citizen, whatever QUERY_DEADLINE_SECONDS a test or local stack runs with.
    return json_response({"query_id": accepted.query_id, "status": "accepted", "reply_within_hours": 48,
                          "sms_sender": settings().sms_sender_id}, 202)


@app.route("/v1/queries/{query_id}", methods=["GET"])
@json_api
def query_status(query_id: str) -> dict[str, Any]:
    return _status(query_id, ACCOUNTS)


def _status(query_id: str, kind: LookupKind) -> dict[str, Any]:
    if not _QUERY_ID.fullmatch(query_id):
        raise errors.NotFound("未找到该查询。")
    return status_of(query_id, kind)


@app.route("/v1/partners/{company}/results", methods=["POST"], content_types=BODY_TYPES)
@json_api
def partner_result(company: str) -> dict[str, Any]:
    return _record_callback(ACCOUNTS, company)


def _record_callback(kind: LookupKind, partner_id: str) -> dict[str, Any]:
    raw = _raw_body()
    partner = lookups().verify_callback(kind, partner_id, dict(_request().headers), raw)
    lookups().record_callback(kind, partner, parse_json_object(raw))
    return {"status": "recorded"}


# -- phone cards registered to my ID (SPEC §9) -----------------------------------------
@app.route("/v1/card-queries", methods=["POST"], content_types=BODY_TYPES)
@json_api
def submit_card_query() -> Response:
    body = parse_json_object(_raw_body())
    name, id_number, phone, code = require_fields(body, "name", "id_number", "phone", "code")
    name, id_number = normalise_name(name), normalise_id_number(id_number, china_today())
    phone, code = normalise_phone(phone), check_code_format(code)
    intake().check_client(_client_ip())
    return _accepted(intake().accept_cards(name, id_number, phone, code, _client_ip()), "CardQueryAccepted")


@app.route("/v1/card-queries/{query_id}", methods=["GET"])
@json_api
def card_query_status(query_id: str) -> dict[str, Any]:
    return _status(query_id, CARDS)


@app.route("/v1/operators/{operator}/results", methods=["POST"], content_types=BODY_TYPES)
@json_api
def operator_result(operator: str) -> dict[str, Any]:
    return _record_callback(CARDS, operator)


@app.route("/v1/openapi.json", methods=["GET"])
def openapi_description() -> Response:
    return Response(body=pages.openapi_json(), status_code=200,
                    headers={"Content-Type": "application/json; charset=utf-8"})


@app.route("/v1/disputes", methods=["POST"], content_types=BODY_TYPES)
@json_api
def submit_dispute() -> Response:
    body = parse_json_object(_raw_body())
    phone, code, company = require_fields(body, "phone", "code", "company")
    phone, code = normalise_phone(phone), check_code_format(code)
    if not isinstance(company, str) or registry.company(company) is None:
        raise errors.InvalidCompany()
    intake().check_client(_client_ip())
    accepted = dispute_intake().accept(phone, code, company, _client_ip())
    logger.info("dispute accepted", extra={"dispute_id": accepted.dispute_id, "company": accepted.company})
    telemetry.count("DisputeSubmitted", company=accepted.company)
    return json_response({"dispute_id": accepted.dispute_id, "status": "submitted", "company": accepted.company,
                          "respond_within_days": 15}, 202)


@app.route("/v1/disputes/{dispute_id}", methods=["GET"])
@json_api
def dispute_status(dispute_id: str) -> dict[str, Any]:
    return dispute_status_of(dispute_id)


@app.route("/v1/partners/{company}/disputes", methods=["POST"], content_types=BODY_TYPES)
@json_api
def partner_dispute_answer(company: str) -> dict[str, Any]:
    raw = _raw_body()
    partner = lookups().verify_callback(ACCOUNTS, company, dict(_request().headers), raw)
    disputes().record_callback(partner, parse_json_object(raw))
    return {"status": "recorded"}


ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def _refuse_other_methods() -> None:
    """Every method a path does not serve answers 405 method_not_allowed, with Allow.

    Registered as routes so that API Gateway passes them to us: a method it does not know is
    otherwise its own 403 "Missing Authentication Token" (rewritten to 404 by a Gateway Response,
    which cannot tell a wrong method from a wrong path). Any content type, so 405 wins over 415.
    Called once, after every route above.
    """
    for path, served in list(app.routes.items()):
        others = [m for m in ALL_METHODS if m not in served]
        if others:
            app.route(path, methods=others, content_types=["*/*"], name=f"refuse{path}")(
                _method_not_allowed(", ".join(served)))


def _method_not_allowed(allowed: str) -> Callable[..., Response]:
    def refuse(**_path_params: str) -> Response:
        return error_response(errors.MethodNotAllowed(), headers={"Allow": allowed})

    return refuse


_refuse_other_methods()


# -- queue consumer: start one execution per accepted query -----------------------
@app.on_sqs_message(queue=START_QUEUE_NAME, batch_size=10, name=contracts.START_QUERIES.name)
def start_queries(event: Any) -> None:
    starter = QueryStarter()
    deferred = 0
    for record in event:
        try:
            starter.start(json.loads(record.body))
        except StartDeferred as exc:
            deferred += 1
            telemetry.count("StartDeferred")
            logger.warning("execution start deferred", extra={"reason": str(exc)})
    if deferred:
        # The whole batch comes back after the visibility timeout; the ones
        # started already are skipped by name (ExecutionAlreadyExists).
        raise StartDeferred(f"{deferred} start(s) deferred")


# -- workflow steps (stepfunctions/query.asl.json) ---------------------------------
@app.lambda_function(name=contracts.VERIFY_CARRIER.name)
def verify_carrier(event: contracts.ExecutionInput, context: Any) -> contracts.CarrierResult:
    return carrier_check().run(event["query_id"], int(event["deadline_at"]))


@app.lambda_function(name=contracts.ASK_COMPANIES.name)
def ask_companies(event: contracts.FanOutInput, context: Any) -> None:
    lookups().ask_all(event["query_id"], int(event["deadline_at"]), kind_of(event.get("kind")))


# -- the dispute workflow (stepfunctions/dispute.asl.json) ---------------------------
@app.lambda_function(name=contracts.FORWARD_DISPUTE.name)
def forward_dispute(event: contracts.DisputeInput, context: Any) -> None:
    notifier = dispute_notifier()
    if notifier.idempotency is not None and context is not None:
        notifier.idempotency.register_lambda_context(context)
    disputes().forward(event["dispute_id"])


# -- the one reply route and the deadlines (chalicelib/engine/deadlines.py) -----------
@app.on_sqs_message(queue=REPLY_QUEUE_NAME, batch_size=10, name=contracts.SEND_REPLIES.name)
def send_replies(event: Any) -> None:
    """Each query's one reply SMS, each dispute's one outcome SMS; a failed one comes back (then its DLQ)."""
    context = getattr(event, "context", None)
    for idempotency in (reply_sender().idempotency, dispute_notifier().idempotency):
        if idempotency is not None and context is not None:
            idempotency.register_lambda_context(context)  # in-progress expiry = this invocation
    failed = 0
    for message in _messages(event, contracts.ReplyType):
        try:
            if message["type"] == contracts.ReplyType.QUERY:
                reply_sender().run(message["id"])
            else:
                dispute_notifier().run(message["id"])
        except Exception:
            logger.exception("reply failed, handed back to the deadline machinery",
                             extra={"type": message["type"], "id": message["id"]})
            try:  # tried again in `reply_reclaim_seconds`, not counted against this message's receives
                deadlines().rearm(contracts.ReplyType(message["type"]), message["id"])
            except Exception:
                failed += 1
                logger.exception("reply not re-armed either: the message comes back")
    if failed:
        # The whole batch comes back after the visibility timeout; the ones sent are skipped (idempotent).
        raise RuntimeError(f"{failed} reply(ies) failed")


@app.on_sqs_message(queue=REPLY_DLQ_NAME, batch_size=10, name=contracts.REPLIES_FAILED.name)
def replies_failed(event: Any) -> None:
    """A reply every retry failed to send: its record still ends in a terminal status (and the DLQ alarm fires)."""
    for message in _messages(event, contracts.ReplyType):
        telemetry.count("ReplyDeadLettered", kind=message["type"])
        if message["type"] == contracts.ReplyType.QUERY:
            reply_sender().fail(message["id"])
        else:
            dispute_notifier().run(message["id"], send=False)


def _messages(event: Any, types: Any) -> list[contracts.QueueMessage]:
    parsed = [(record.body, contracts.parse_message(record.body, types)) for record in event]
    for _body, message in parsed:
        if message is None:
            logger.warning("malformed queue message skipped")
    return [message for _body, message in parsed if message is not None]


@app.schedule(Rate(1, unit=Rate.MINUTES), name=contracts.START_DEADLINES.name)
def start_deadlines(event: Any) -> None:
    deadlines().start_ahead()


@app.lambda_function(name=contracts.DEADLINE_STEP.name)
def deadline_step(event: contracts.DeadlineInput, context: Any) -> contracts.DeadlineStep:
    return deadlines().step(event)


# -- partner delivery (chalicelib/engine/delivery.py) ------------------------------
@app.on_sqs_message(queue=RETRY_QUEUE_NAME, batch_size=10, name=contracts.RETRY_LOOKUPS.name)
def retry_lookups(event: Any) -> None:
    # Lookups and disputes alike; a malformed message is skipped: its task waits in the backlog.
    delivery().retry(_messages(event, contracts.TaskType))


@app.schedule(Rate(1, unit=Rate.MINUTES), name=contracts.DELIVER_BACKLOG.name)
def deliver_backlog(event: Any) -> None:
    delivery().deliver()

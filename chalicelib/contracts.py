"""The data that crosses steps, and the names every part of the service shares.

One definition each: the query workflow's inputs and outputs (stepfunctions/query.asl.json),
the statuses stored and shown, and the table of Lambda functions that app.py registers,
infra/generate.py wires into the template and local/ routes moto's invocations to.
Nothing here carries personal data: executions hold ids, outcomes and account counts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

# A query's id (either lookup kind, or a release): a uuid4, the execution's name. What a path or a partner's
# answer says is one is checked against this before any read.
QUERY_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

class QueryStatus(StrEnum):
    """What GET /v1/queries/{id} shows (SPEC §3); never counts."""

    ACCEPTED = "accepted"
    VERIFYING = "verifying"
    LOOKING_UP = "looking_up"
    REPLIED = "replied"
    FAILED = "failed"


class CarrierOutcome(StrEnum):
    """The carrier's real-name check (SPEC §4)."""

    MATCH = "match"
    MISMATCH = "mismatch"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


class TaskState(StrEnum):
    """One partner task — a lookup or a dispute, to a company or an operator — as the delivery mechanism sees it."""

    PENDING = "pending"    # asked (or about to be): the partner answers in the 200 or by callback
    UNSENT = "unsent"      # a transient failure or an open circuit: in the partner's backlog
    SETTLED = "settled"    # answered, answered with an error, or refused for good (4xx)
    EXPIRED = "expired"    # the query's deadline passed before it could be sent


# -- the query workflow ----------------------------------------------------------------
class ExecutionInput(TypedDict):
    """StartExecution input, named by the query id."""

    query_id: str
    deadline_at: int  # epoch seconds: accepted_at + QUERY_DEADLINE_SECONDS


class CarrierResult(TypedDict):
    """VerifyCarrier's output: AskCompanies runs only on a match; any other outcome has asked for its reply."""

    query_id: str
    kind: str  # partners/kinds.py: accounts or cards — who AskCompanies asks
    deadline_at: int
    outcome: str  # CarrierOutcome


class FanOutInput(TypedDict):
    """AskCompanies' input: a plain task (no token). It asks every partner and ends the execution."""

    query_id: str
    kind: str
    deadline_at: int


class LookupResult(TypedDict):
    """One partner's settled lookup: the only thing of a partner's answer that travels on.

    Partner ids come from the registry, counts are bounded integers, app names are the
    registry's own strings (chalicelib/partners/protocol.py checks all three).
    """

    company: str  # the partner's registry id: a company, or an operator for phone cards
    answered: bool
    count: NotRequired[int]  # accounts, or phone cards
    apps: NotRequired[dict[str, int]]


# -- queue messages (one typed shape per queue; app.py dispatches on `type`) -------------------
class ReplyType(StrEnum):
    """What the reply queue carries: a query's one reply SMS, or a dispute's one outcome SMS."""

    QUERY = "query"
    DISPUTE = "dispute"


class TaskType(StrEnum):
    """What the retry queue carries: a partner task whose backoff ran out."""

    LOOKUP = "lookup"
    DISPUTE = "dispute"


class QueueMessage(TypedDict):
    """Every message of the reply and retry queues: a type and an id, no personal data."""

    type: str  # ReplyType on the reply queue, TaskType on the retry queue
    id: str


def parse_message(body: str, types: type[StrEnum]) -> QueueMessage | None:
    """A queue message as sent by this service; None for anything else (skipped and logged by the caller).

    Messages queued by the version before typed messages ({"lookup_id": …} / {"dispute_id": …})
    are still read, so a deployment does not strand what is in flight.
    """
    import json

    try:
        message: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    if "type" not in message:  # the shape before typed messages
        for key, kind in (("lookup_id", "lookup"), ("dispute_id", "dispute"), ("query_id", "query")):
            if key in message:
                message = {"type": kind, "id": message[key]}
                break
    kind, item_id = message.get("type"), message.get("id")
    if kind not in {t.value for t in types} or not isinstance(item_id, str) or not 0 < len(item_id) <= 64:
        return None
    return QueueMessage(type=str(kind), id=item_id)


class DeadlineInput(TypedDict):
    """A deadline execution (stepfunctions/deadline.asl.json): one per kind and slot (a minute, deployed)."""

    kind: str  # ReplyType: which records' deadlines it keeps
    slot: int  # epoch seconds: it waits until then, then replies to everything due by then


class DeadlineStep(DeadlineInput):
    """DeadlineStep's output: wait `wait_seconds` more, or sweep again while `more` is due."""

    wait_seconds: int
    more: bool


# -- the dispute workflow (SPEC §8, stepfunctions/dispute.asl.json) ------------------------
class DisputeStatus(StrEnum):
    """What GET /v1/disputes/{id} shows (SPEC §8); never the outcome."""

    SUBMITTED = "submitted"
    FORWARDED = "forwarded"
    RESOLVED = "resolved"
    EXPIRED = "expired"


class DisputeOutcome(StrEnum):
    """A partner's answer to a dispute (SPEC §8 companies, §10.1 operators: each kind allows its own four,
    partners/kinds.py); EXPIRED is ours: no answer by the deadline."""

    UNBOUND = "unbound"
    OWNER_CONFIRMED = "owner_confirmed"
    NO_ACCOUNT = "no_account"
    SUSPENDED = "suspended"
    NO_CARD = "no_card"
    REJECTED = "rejected"
    EXPIRED = "expired"


class DisputeInput(TypedDict):
    """StartExecution input, named by the dispute id: Forward sends it and the execution ends."""

    dispute_id: str
    deadline_at: int  # epoch seconds: submitted_at + DISPUTE_DEADLINE_SECONDS


class DisputeAnswer(TypedDict):
    """A partner's answer to a dispute: an outcome (a registry string) and a bounded count."""

    outcome: str  # DisputeOutcome, never EXPIRED
    accounts: int


# -- Lambda functions -------------------------------------------------------------------
@dataclass(frozen=True)
class Function:
    """A Lambda function of the service: its Chalice name and, for workflow steps, its ASL placeholder."""

    name: str
    placeholder: str | None = None

    @property
    def logical_id(self) -> str:
        """Chalice's CloudFormation logical id: PascalCase of the function name."""
        return "".join(part.capitalize() for part in self.name.split("_"))


API_HANDLER = "APIHandler"  # Chalice's one function for every route
VERIFY_CARRIER = Function("verify_carrier", "VerifyCarrierArn")
ASK_COMPANIES = Function("ask_companies", "AskCompaniesArn")
START_QUERIES = Function("start_queries")
RETRY_LOOKUPS = Function("retry_lookups")
DELIVER_BACKLOG = Function("deliver_backlog")
FORWARD_DISPUTE = Function("forward_dispute", "ForwardDisputeArn")
# The one reply route (query replies and dispute outcomes), its dead letters, and the deadline machinery.
SEND_REPLIES = Function("send_replies")
REPLIES_FAILED = Function("replies_failed")
START_DEADLINES = Function("start_deadlines")
DEADLINE_STEP = Function("deadline_step", "DeadlineStepArn")

WORKFLOW_FUNCTIONS: tuple[Function, ...] = (VERIFY_CARRIER, ASK_COMPANIES)
DISPUTE_WORKFLOW_FUNCTIONS: tuple[Function, ...] = (FORWARD_DISPUTE,)
DEADLINE_WORKFLOW_FUNCTIONS: tuple[Function, ...] = (DEADLINE_STEP,)
FUNCTIONS: tuple[Function, ...] = (START_QUERIES, *WORKFLOW_FUNCTIONS, RETRY_LOOKUPS, DELIVER_BACKLOG,
                                   *DISPUTE_WORKFLOW_FUNCTIONS, SEND_REPLIES, REPLIES_FAILED, START_DEADLINES,
                                   *DEADLINE_WORKFLOW_FUNCTIONS)
# The query workflow's other placeholders: the reply queue it writes directly (a carrier that never answered).
WORKFLOW_QUEUES: dict[str, str] = {"ReplyQueueUrl": "REPLY_QUEUE_URL"}

"""The data that crosses steps, and the names every part of the service shares.

One definition each: the query workflow's inputs and outputs (stepfunctions/query.asl.json),
the statuses stored and shown, and the table of Lambda functions that app.py registers,
infra/generate.py wires into the template and local/ routes moto's invocations to.
Nothing here carries personal data: executions hold ids, outcomes and account counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NotRequired, TypedDict


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


class LookupState(StrEnum):
    """One partner lookup, as the delivery mechanism sees it."""

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
    """VerifyCarrier's output; AskCompanies waits at most timeout_seconds (to the deadline)."""

    query_id: str
    kind: str  # partners/kinds.py: accounts or cards — who AskCompanies asks
    deadline_at: int
    outcome: str  # CarrierOutcome
    timeout_seconds: int


class FanOutInput(TypedDict):
    """The payload of the one waitForTaskToken task that asks every company."""

    query_id: str
    kind: str
    deadline_at: int
    task_token: str


class LookupResult(TypedDict):
    """One company's settled lookup: the only thing of a partner's answer that travels on.

    Company ids come from the registry, counts are bounded integers, app names are the
    registry's own strings (chalicelib/partners/protocol.py checks all three).
    """

    company: str  # the partner's registry id: a company, or an operator for phone cards
    answered: bool
    count: NotRequired[int]  # accounts, or phone cards
    apps: NotRequired[dict[str, int]]


class FanOutOutput(TypedDict):
    """What the released task token carries: every asked company's settled lookup."""

    results: list[LookupResult]


class ReplyInput(TypedDict):
    """SendReply's input: the state as AskCompanies left it (or VerifyCarrier, when no company was asked).

    fan_out is absent at the deadline: the step then reports what had settled by then.
    """

    query_id: str
    outcome: str  # CarrierOutcome
    fan_out: NotRequired[FanOutOutput]


# -- the dispute workflow (SPEC §8, stepfunctions/dispute.asl.json) ------------------------
class DisputeStatus(StrEnum):
    """What GET /v1/disputes/{id} shows (SPEC §8); never the outcome."""

    SUBMITTED = "submitted"
    FORWARDED = "forwarded"
    RESOLVED = "resolved"
    EXPIRED = "expired"


class DisputeOutcome(StrEnum):
    """A partner's answer to a dispute (SPEC §8); EXPIRED is ours: no answer by the deadline."""

    UNBOUND = "unbound"
    OWNER_CONFIRMED = "owner_confirmed"
    NO_ACCOUNT = "no_account"
    REJECTED = "rejected"
    EXPIRED = "expired"


class DisputeInput(TypedDict):
    """StartExecution input, named by the dispute id; the Forward task waits at most timeout_seconds."""

    dispute_id: str
    deadline_at: int  # epoch seconds: submitted_at + DISPUTE_DEADLINE_SECONDS
    timeout_seconds: int


class ForwardInput(TypedDict):
    """The payload of the one waitForTaskToken task that forwards the dispute to its company."""

    dispute_id: str
    deadline_at: int
    task_token: str


class DisputeAnswer(TypedDict):
    """What the released task token carries: the partner's outcome (a registry string) and a bounded count."""

    outcome: str  # DisputeOutcome, never EXPIRED
    accounts: int


class NotifyInput(TypedDict):
    """NotifyDispute's input: the execution input, plus the answer unless the deadline came first."""

    dispute_id: str
    deadline_at: int
    timeout_seconds: int
    answer: NotRequired[DisputeAnswer]


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
SEND_REPLY = Function("send_reply", "SendReplyArn")
START_QUERIES = Function("start_queries")
RETRY_LOOKUPS = Function("retry_lookups")
DELIVER_BACKLOG = Function("deliver_backlog")
FORWARD_DISPUTE = Function("forward_dispute", "ForwardDisputeArn")
NOTIFY_DISPUTE = Function("notify_dispute", "NotifyDisputeArn")

WORKFLOW_FUNCTIONS: tuple[Function, ...] = (VERIFY_CARRIER, ASK_COMPANIES, SEND_REPLY)
DISPUTE_WORKFLOW_FUNCTIONS: tuple[Function, ...] = (FORWARD_DISPUTE, NOTIFY_DISPUTE)
FUNCTIONS: tuple[Function, ...] = (START_QUERIES, *WORKFLOW_FUNCTIONS, RETRY_LOOKUPS, DELIVER_BACKLOG,
                                   *DISPUTE_WORKFLOW_FUNCTIONS)
# The workflow's other placeholders: tables it writes directly (MarkFailed), by their environment variable.
WORKFLOW_TABLES: dict[str, str] = {"QueriesTable": "QUERIES_TABLE"}

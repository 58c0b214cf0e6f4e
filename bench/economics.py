"""From what a pattern measured to what it costs and how much of it an account-region can carry."""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from bench.meter import API_HANDLER, Capacity, Meter
from bench.patterns import CARDS, STATUS_CHECK, Measured
from bench.prices import ASSUMPTIONS, PRICES, QUOTAS, lambda_memory_mb, production_deadline_seconds
from chalicelib.contracts import DELIVER_BACKLOG, FUNCTIONS, RETRY_LOOKUPS, START_QUERIES

PER_MILLION = 1_000_000
# Chalice's function names by the logical ids the meter records (the API's is api_handler).
CONFIG_NAMES = {API_HANDLER: "api_handler", **{fn.logical_id: fn.name for fn in FUNCTIONS}}
PER_MINUTE = DELIVER_BACKLOG.logical_id  # work that is per minute, not per query
NOT_PRICED = {STATUS_CHECK, PER_MINUTE}
QUEUE_CONSUMERS = (START_QUERIES.logical_id, RETRY_LOOKUPS.logical_id)  # invoked by Lambda's SQS event source


@dataclass
class Usage:
    """Billable things, per query (or per delivery-job minute)."""

    transitions: float = 0.0
    invocations: dict[str, float] = field(default_factory=dict)  # function -> invocations
    gb_seconds: dict[str, float] = field(default_factory=dict)  # function -> GB-s
    api_requests: float = 0.0
    requests: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # "service:Operation" -> n
    rru: float = 0.0
    wru: float = 0.0
    wru_worst_token: float = 0.0
    reads: float = 0.0  # DynamoDB read requests
    writes: float = 0.0  # DynamoDB write requests
    consumer_batches: float = 0.0  # SQS batches handed to a function (event source requests)

    def by_service(self) -> dict[str, float]:
        services: dict[str, float] = defaultdict(float)
        for request, count in self.requests.items():
            services[request.split(":")[0]] += count
        services["sqs"] += self.consumer_batches * int(ASSUMPTIONS["sqs_requests_per_consumer_batch"])
        return services

    def cost(self) -> dict[str, float]:
        """USD by component."""
        services = self.by_service()
        units = {
            "Step Functions": self.transitions,
            "Lambda requests": sum(self.invocations.values()),
            "Lambda GB-s": sum(self.gb_seconds.values()),
            "API Gateway": self.api_requests,
            "DynamoDB writes": self.wru,
            "DynamoDB reads": self.rru,
            "KMS": services["kms"],
            "SQS": services["sqs"],
            "Secrets Manager": services["secretsmanager"],
        }
        return {component: count * PRICES[component].each for component, count in units.items()}


def billed_ms(function: str, kind: str = "") -> int:
    """The billed duration assumed for one invocation of this function on AWS (bench/prices.py)."""
    if kind == CARDS and function in ASSUMPTIONS["lambda_billed_ms_cards"]:
        return int(ASSUMPTIONS["lambda_billed_ms_cards"][function])
    return int(ASSUMPTIONS["lambda_billed_ms"][function])


def median_ms(durations: list[float]) -> int:
    """The median in-process duration measured on moto, for comparison."""
    return math.ceil(statistics.median(durations) * 1000) if durations else 0


def billed_gb_seconds(function: str, invocations: int, kind: str = "") -> float:
    return invocations * billed_ms(function, kind) / 1000 * lambda_memory_mb(CONFIG_NAMES[function]) / 1024


def usage(meter: Meter, functions: set[str], divide_by: float, transitions: float = 0.0, kind: str = "") -> Usage:
    """The meter's counts for these functions, divided by queries (or minutes)."""
    capacity = Capacity()
    for function in functions:
        capacity.add(meter.capacity.get(function, Capacity()))
    result = Usage(transitions=transitions)
    for function in functions:
        durations = meter.durations.get(function, [])
        if durations:
            result.invocations[function] = len(durations) / divide_by
            result.gb_seconds[function] = billed_gb_seconds(function, len(durations), kind) / divide_by
    result.api_requests = sum(n for (function, _), n in meter.api.items() if function in functions) / divide_by
    for (function, request), count in meter.requests.items():
        if function in functions:
            result.requests[request] += count / divide_by
    result.rru, result.wru = capacity.rru / divide_by, capacity.wru / divide_by
    result.wru_worst_token = capacity.wru_worst_token / divide_by
    result.reads, result.writes = capacity.reads / divide_by, capacity.writes / divide_by
    result.consumer_batches = sum(result.invocations.get(f, 0.0) for f in QUEUE_CONSUMERS)
    return result


@dataclass
class Economics:
    measured: Measured
    per_query: Usage
    per_minute: Usage
    mean_execution_seconds: float  # as it would be deployed (down/silent: the full deadline)
    capacity: dict[str, float]  # quota -> sustainable queries/s

    @property
    def cost_per_million(self) -> dict[str, float]:
        """USD per million queries by component; the per-minute job spread at the reference rate."""
        minutes_per_million = PER_MILLION / (60 * float(ASSUMPTIONS["reference_queries_per_second"]))
        per_query = self.per_query.cost()
        per_minute = self.per_minute.cost()
        return {k: per_query[k] * PER_MILLION + per_minute[k] * minutes_per_million for k in per_query}

    @property
    def total_per_million(self) -> float:
        return sum(self.cost_per_million.values())

    @property
    def sustainable_qps(self) -> float:
        return min(self.capacity.values())


def economics(measured: Measured) -> Economics:
    meter = measured.meter
    functions = {f for (f, _) in meter.requests} | set(meter.durations) | {f for (f, _) in meter.api}
    n = max(1, measured.queries)
    transitions = statistics.mean(measured.transitions) if measured.transitions else 0.0
    per_query = usage(meter, functions - NOT_PRICED, n, transitions, measured.pattern.kind)
    per_minute = usage(meter, {PER_MINUTE}, max(1, measured.delivery_runs))
    if measured.pattern.failing_mode in ("down", "silent"):
        execution_seconds = float(production_deadline_seconds())  # every query waits for the deadline
    else:
        execution_seconds = statistics.mean(measured.execution_seconds)
    starts = per_query.requests.get("states:StartExecution", 1.0) or 1.0
    capacity = {
        "StartExecution": QUOTAS["start_execution_refill_per_second"] / starts,
        "state transitions": QUOTAS["state_transitions_refill_per_second"] / max(transitions, 1e-9),
        "open executions": QUOTAS["open_executions"] / execution_seconds,  # Little's law
    }
    return Economics(measured, per_query, per_minute, execution_seconds, capacity)

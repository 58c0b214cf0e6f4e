"""From what a pattern measured to what it costs and how much of it an account-region can carry."""
from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from bench.meter import API_HANDLER, Capacity, Meter
from bench.patterns import CARDS, STATUS_CHECK, Measured
from bench.prices import ASSUMPTIONS, PRICES, QUOTAS, ROOT, chalice_config, lambda_memory_mb
from chalicelib.contracts import (
    DEADLINE_STEP,
    DELIVER_BACKLOG,
    FUNCTIONS,
    REPLIES_FAILED,
    RETRY_LOOKUPS,
    SEND_REPLIES,
    START_DEADLINES,
    START_QUERIES,
)

PER_MILLION = 1_000_000
# Chalice's function names by the logical ids the meter records (the API's is api_handler).
CONFIG_NAMES = {API_HANDLER: "api_handler", **{fn.logical_id: fn.name for fn in FUNCTIONS}}
PER_MINUTE = DELIVER_BACKLOG.logical_id  # work that is per minute, not per query
NOT_PRICED = {STATUS_CHECK, PER_MINUTE}
QUEUE_CONSUMERS = (START_QUERIES.logical_id, RETRY_LOOKUPS.logical_id, SEND_REPLIES.logical_id,
                   REPLIES_FAILED.logical_id)  # invoked by Lambda's SQS event source
# The deadline machinery: per kind and slot (a minute deployed), not per query. Its executions' transitions are
# a fixed cost per minute, spread over the reference rate's queries like the delivery job's (priced); capacity
# takes their deployed rate off each quota once. Its functions' work during a pattern (which includes the
# claims of the queries due) is shared among the pattern's queries as measured.
DEADLINE_FUNCTIONS = {START_DEADLINES.logical_id, DEADLINE_STEP.logical_id}
DEADLINE_KINDS = 2  # query (account and card queries, releases), dispute (account and card disputes)
DEADLINE_EXECUTIONS_PER_KIND_PER_MINUTE = 1  # one slot a minute deployed
# The starter lists the running executions first and starts only the slots not running: one a kind a minute.
DEADLINE_STARTS_PER_KIND_PER_MINUTE = 1
STEP_FUNCTIONS_QUOTAS = ("StartExecution", "state transitions", "open executions")


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
    result.reads, result.writes = capacity.reads / divide_by, capacity.writes / divide_by
    result.consumer_batches = sum(result.invocations.get(f, 0.0) for f in QUEUE_CONSUMERS)
    return result


def production_lead_slots(stage: str = "prod") -> int:
    """DEADLINE_LEAD_SLOTS as deployed (.chalice/config.json)."""
    config = chalice_config()
    stage_env = config.get("stages", {}).get(stage, {}).get("environment_variables", {})
    return int(stage_env.get("DEADLINE_LEAD_SLOTS", config["environment_variables"]["DEADLINE_LEAD_SLOTS"]))


@dataclass(frozen=True)
class DeadlineFigures:
    """The deadline executions of the whole run, measured from their histories (those that ran to their end)."""

    executions: int
    transitions_per_execution: float  # mean StateEntered events of a whole deadline execution
    steps_per_execution: float  # mean DeadlineStep invocations of one
    starts_per_run: float  # StartExecution requests per run of the deadline starter (after its first)

    @property
    def transitions_per_minute(self) -> float:
        """As deployed: 2 kinds × one execution a minute × its transitions."""
        return DEADLINE_KINDS * DEADLINE_EXECUTIONS_PER_KIND_PER_MINUTE * self.transitions_per_execution

    @property
    def share_per_query(self) -> float:
        """The per-minute transitions spread over the reference rate's queries (the delivery job's convention)."""
        return self.transitions_per_minute / (60 * float(ASSUMPTIONS["reference_queries_per_second"]))


def deadline_execution_figures(measured: list[Measured]) -> DeadlineFigures:
    transitions = [t for m in measured for t in m.deadline_execution_transitions]
    steps = [s for m in measured for s in m.deadline_execution_steps]
    runs = sum(m.meter.invocations(START_DEADLINES.logical_id) for m in measured)
    starts = sum(m.deadline_starts for m in measured)
    if not transitions:
        raise RuntimeError("no deadline execution ran to its end in the whole run: nothing to measure")
    return DeadlineFigures(len(transitions), statistics.mean(transitions), statistics.mean(steps),
                           starts / runs if runs else 0.0)


@dataclass
class Economics:
    measured: Measured
    per_query: Usage
    per_minute: Usage
    own_transitions: float  # the query's own execution
    deadline_share: float  # the deadline executions' transitions per minute (deployed) ÷ the reference rate's queries
    local_deadline_share: float  # for comparison: their StateEntered events during the pattern ÷ its queries
    deadline: DeadlineFigures
    mean_execution_seconds: float  # measured lifetime of the query executions (Little's law)
    capacity: dict[str, float]  # quota -> sustainable queries/s
    fixed: dict[str, float]  # quota -> what the deadline machinery takes of it, deployed, whatever the traffic
    tables: dict[str, Capacity] = field(default_factory=dict)  # table -> its units and requests per query

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
    def transitions(self) -> float:
        """Per query: its own execution's plus its share of the deadline executions'."""
        return self.own_transitions + self.deadline_share

    @property
    def sustainable_qps(self) -> float:
        return min(self.capacity.values())

    @property
    def binding(self) -> str:
        return min(self.capacity, key=lambda k: self.capacity[k])

    @property
    def step_functions_qps(self) -> float:
        return min(self.capacity[k] for k in STEP_FUNCTIONS_QUOTAS)

    def raise_for(self, quota: str, target_qps: float) -> float:
        """The quota value needed to sustain `target_qps` (what the deadline machinery takes included); 0 for a
        quota this pattern does not use (a table it never touches)."""
        if quota not in self.capacity:
            return 0.0
        value = quota_value(quota)
        used_per_query = (value - self.fixed.get(quota, 0.0)) / self.capacity[quota]
        return needed_quota(target_qps, used_per_query, self.fixed.get(quota, 0.0))

    @property
    def sms_per_query(self) -> float:
        """SNS Publish requests per query as measured (a code and the reply for a query; a code, the submitted
        and the outcome SMS for a dispute); the assumption where none was measured."""
        return self.per_query.requests.get("sns:Publish", 0.0) or float(ASSUMPTIONS["sms_per_query"])

    @property
    def kms_per_query(self) -> float:
        return self.per_query.by_service().get("kms", 0.0)


# quota name -> its default (bench/prices.py). DynamoDB's are per table: one quota per table and kind of unit,
# named by table_quota() and valued by quota_value().
QUOTA_VALUES: dict[str, float] = {
    "StartExecution": QUOTAS["start_execution_refill_per_second"],
    "state transitions": QUOTAS["state_transitions_refill_per_second"],
    "open executions": QUOTAS["open_executions"],
    "API Gateway requests": QUOTAS["api_gateway_requests_per_second"],
    "Lambda concurrency": QUOTAS["lambda_concurrent_executions"],
    "KMS requests": QUOTAS["kms_symmetric_requests_per_second"],
    "SNS SMS": QUOTAS["sns_sms_per_second"],
}
DYNAMODB_UNITS = {"WRU": QUOTAS["dynamodb_table_write_units_per_second"],
                  "RRU": QUOTAS["dynamodb_table_read_units_per_second"]}
TABLE_PREFIX = "yztc-"  # every table's name starts so (chalicelib/config.py): left out of the labels


def table_quota(unit: str, table: str) -> str:
    """The per-table quota's name: "DynamoDB WRU queries" for yztc-queries' write units."""
    return f"DynamoDB {unit} {table.removeprefix(TABLE_PREFIX)}"


def quota_value(quota: str) -> float:
    """A quota's default, the per-table DynamoDB ones included."""
    if quota in QUOTA_VALUES:
        return QUOTA_VALUES[quota]
    service, unit, _ = quota.split(" ", 2)
    if service != "DynamoDB" or unit not in DYNAMODB_UNITS:
        raise KeyError(quota)
    return DYNAMODB_UNITS[unit]


def capacity_under(quota_default: float, fixed: float, used_per_item: float) -> float:
    """Items/s sustainable under a quota: what the fixed use (the deadline machinery) leaves, ÷ each item's use."""
    return (quota_default - fixed) / max(used_per_item, 1e-9)


def little_lifetime_capacity(open_quota: float, fixed: float, lifetime_seconds: float) -> float:
    """Little's law: open executions = start rate × mean lifetime, so the start rate the quota allows."""
    return capacity_under(open_quota, fixed, lifetime_seconds)


def needed_quota(target_per_second: float, used_per_item: float, fixed: float = 0.0) -> float:
    """The quota value that sustains `target_per_second` items (the fixed use included)."""
    return target_per_second * used_per_item + fixed


def table_units(meter: Meter, n: float) -> dict[str, Capacity]:
    """Each table's units and requests per item (priced functions only), by table name."""
    tables: dict[str, Capacity] = defaultdict(Capacity)
    for (function, table, _), units in meter.tables.items():
        if function not in NOT_PRICED:
            tables[table].add(Capacity(units.rru / n, units.wru / n, units.reads / n, units.writes / n))
    return dict(tables)


def economics(measured: Measured, deadline: DeadlineFigures) -> Economics:
    meter = measured.meter
    functions = {f for (f, _) in meter.requests} | set(meter.durations) | {f for (f, _) in meter.api}
    n = max(1, measured.queries)
    own = statistics.mean(measured.transitions) if measured.transitions else 0.0
    share = deadline.share_per_query
    kind = measured.pattern.kind
    per_query = usage(meter, functions - NOT_PRICED, n, own + share, kind)
    per_minute = usage(meter, {PER_MINUTE}, max(1, measured.delivery_runs))
    lifetime = statistics.mean(measured.execution_seconds) if measured.execution_seconds else 0.0
    # Per query, the query's own use; the deadline machinery's deployed rate is taken off each quota once.
    # Its own StartExecution requests: a query's from the start queue's consumer, a dispute's from the API
    own_starts = sum(count for (function, request), count in meter.requests.items()
                     if request == "states:StartExecution" and function not in DEADLINE_FUNCTIONS) / n or 1.0
    lead = production_lead_slots()
    fixed = {  # deployed: each minute the starter starts one slot per kind (the others run already), and per kind
        # one execution runs through its states (as measured); lead + 1 slots per kind are open at once
        "StartExecution": DEADLINE_KINDS * DEADLINE_STARTS_PER_KIND_PER_MINUTE / 60,
        "state transitions": deadline.transitions_per_minute / 60,
        "open executions": float(DEADLINE_KINDS * (lead + 1)),
    }
    concurrency_seconds = sum(count * billed_ms(function, kind) / 1000
                              for function, count in per_query.invocations.items()
                              if function not in DEADLINE_FUNCTIONS)
    tables = table_units(meter, n)
    sms = per_query.requests.get("sns:Publish", 0.0) or float(ASSUMPTIONS["sms_per_query"])
    capacity = {
        "StartExecution": capacity_under(QUOTA_VALUES["StartExecution"], fixed["StartExecution"], own_starts),
        "state transitions": capacity_under(QUOTA_VALUES["state transitions"], fixed["state transitions"], own),
        # Little's law on the measured lifetimes: open executions = start rate × lifetime
        "open executions": little_lifetime_capacity(QUOTA_VALUES["open executions"], fixed["open executions"],
                                                    lifetime),
        "API Gateway requests": capacity_under(QUOTA_VALUES["API Gateway requests"], 0.0, per_query.api_requests),
        "Lambda concurrency": capacity_under(QUOTA_VALUES["Lambda concurrency"], 0.0, concurrency_seconds),
        # One shared quota for Decrypt, Encrypt and GenerateDataKey: every KMS request a query makes
        "KMS requests": capacity_under(QUOTA_VALUES["KMS requests"], 0.0, per_query.by_service().get("kms", 0.0)),
        "SNS SMS": capacity_under(QUOTA_VALUES["SNS SMS"], 0.0, sms),
    }
    for table, units in sorted(tables.items()):  # each table its own quota (on-demand, per table)
        if units.wru:
            capacity[table_quota("WRU", table)] = capacity_under(DYNAMODB_UNITS["WRU"], 0.0, units.wru)
        if units.rru:
            capacity[table_quota("RRU", table)] = capacity_under(DYNAMODB_UNITS["RRU"], 0.0, units.rru)
    return Economics(measured, per_query, per_minute, own, share, measured.deadline_transitions / n, deadline,
                     lifetime, capacity, fixed, tables)


DISPUTE_ASL = os.path.join("stepfunctions", "dispute.asl.json")


def asl_success_path(path: str) -> list[str]:
    """The states an execution enters when every step succeeds the first time: from StartAt along Next until
    an End or a Succeed (no Choice expected: its branch would depend on the input)."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as fh:
        definition = json.load(fh)
    states: dict[str, dict[str, object]] = definition["States"]
    name: object = definition["StartAt"]
    entered: list[str] = []
    while isinstance(name, str):
        state = states[name]
        if state["Type"] in ("Choice", "Map", "Parallel") or name in entered:
            raise ValueError(f"{path}: {name} ({state['Type']}) has no single success path")
        entered.append(name)
        if state.get("End") or state["Type"] in ("Succeed", "Fail"):
            break
        name = state.get("Next")
    return entered


@dataclass(frozen=True)
class AslEstimate:
    """A flow's state transitions read from its state machine definition, not measured: the states its
    execution enters on success, plus the same share of the deadline executions as a query (a)."""

    path: str
    states: list[str]
    deadline_share: float

    @property
    def own_transitions(self) -> int:
        return len(self.states)

    @property
    def transitions(self) -> float:
        return self.own_transitions + self.deadline_share

    @property
    def step_functions_per_million(self) -> float:
        """USD per million: Step Functions only (the only component the definition tells)."""
        return self.transitions * PRICES["Step Functions"].each * PER_MILLION


def dispute_estimate(deadline: DeadlineFigures) -> AslEstimate:
    """A dispute's (SPEC §8) and a card dispute's (SPEC §10.1): the one dispute state machine runs both."""
    return AslEstimate(DISPUTE_ASL, asl_success_path(DISPUTE_ASL), deadline.share_per_query)

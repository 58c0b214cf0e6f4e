"""Run the fixture subscribers' queries through the whole local stack under one partner pattern.

One fresh stack (moto in-process, executing stepfunctions/query.asl.json and deadline.asl.json) per
pattern. The company list is the registry's; partners answer as in local/fixtures/partners.csv
(immediate or, otherwise, by callback after 1 s), and one partner (the registry's last) may misbehave.
The card pattern (SPEC §9) asks every operator of the operator registry through the one operator
simulator, each answering as local/fixtures/operators.csv says (flaky ones included). The release pattern
(SPEC §10.2) asks every company to unbind a recycled number's earlier accounts, on the same query state
machine and query records: partners answer releases as they answer lookups.
The start and retry queues are pumped here, as Lambda's SQS event source would, so every batch is
counted; the stack pumps the reply queue (its consumers are metered here too). The deadline starter
runs here once a deadline slot, as its EventBridge schedule does; slots are a minute, as deployed (the down
and silent patterns, which wait for their deadlines, on shorter slots: see Pattern.slot_seconds).
The delivery job runs only when this module runs it, with a `now` standing minutes later.
A query counts once its reply is committed (status replied/failed, out of the deadline index), not
when its execution ends: executions end in seconds, before partners answer.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench.meter import API_HANDLER, Meter, acting_as, metering

ACCOUNTS = "accounts"  # internet accounts: POST /v1/queries, the companies (SPEC §3)
CARDS = "cards"  # phone cards: POST /v1/card-queries, the operators (SPEC §9)
RELEASES = "releases"  # recycled-number releases: POST /v1/number-releases, the companies (SPEC §10.2)
DISPUTES = "disputes"  # disputes: POST /v1/disputes after an account query (SPEC §8), bench/disputes.py
# What Run.submit posts (a dispute's: the account query before it, not measured)
SUBMIT_PATHS = {ACCOUNTS: "/v1/queries", CARDS: "/v1/card-queries", RELEASES: "/v1/number-releases",
                DISPUTES: "/v1/queries"}
ID_FIELDS = {ACCOUNTS: "query_id", CARDS: "query_id", RELEASES: "release_id",
             DISPUTES: "query_id"}  # the submission's 202 names it so
STATUS_CHECK = "StatusCheck"  # the citizen may look at GET /v1/queries/{id}: measured, not priced
CALLBACK_DELAY_SECONDS = 1.0
DEADLINE_SLOT_SECONDS = 60  # as deployed
# A deadline is rounded DOWN to its slot, so a query's reply may come up to one slot before its deadline: every
# pattern's deadline is at least this many slots, so that the rounding cannot cut in before partners answer.
DEADLINE_MIN_SLOTS = 3
DEADLINE_LEAD_SLOTS = 1  # deployed 10: the lead changes what is open, not the transitions per minute
MOTO_CONFIG: Any = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}


@dataclass(frozen=True)
class Pattern:
    key: str
    title: str
    failing_mode: str | None = None  # the mode of the registry's last company, if it misbehaves
    all_immediate: bool = False  # every company answers in its 200 (the latency reference)
    deadline_seconds: int = DEADLINE_MIN_SLOTS * DEADLINE_SLOT_SECONDS
    # The deadline slot (DEADLINE_SLOT_SECONDS). Shorter than deployed only where the pattern waits for its
    # deadlines (down, silent), to keep the wait short; a deadline execution's transitions do not depend on it.
    slot_seconds: int = DEADLINE_SLOT_SECONDS
    in_flight: int = 1  # queries allowed in flight at once (0: all of them)
    probe_minutes: int = 0  # delivery-job runs, one simulated minute apart, while queries wait
    kind: str = ACCOUNTS
    max_queries: int = 0  # 0: every subscriber given
    warm_up: bool = False  # one query first, not measured: the secrets cached as in a warm container
    company_mode: str = ""  # disputes: how the disputed company treats the dispute (immediate, silent)

    @property
    def submit_path(self) -> str:
        return SUBMIT_PATHS[self.kind]

    @property
    def id_field(self) -> str:
        return ID_FIELDS[self.kind]


@dataclass
class Measured:
    pattern: Pattern
    partners: list[str]  # the partners asked: the companies (accounts, releases), or the operators for cards
    failing: str | None
    flaky: list[str] = field(default_factory=list)  # cards: operators flaky in operators.csv
    modes: Counter[str] = field(default_factory=Counter)  # cards: operators by simulator mode
    groups: Counter[str] = field(default_factory=Counter)  # cards: operators by registry group
    queries: int = 0
    meter: Meter = field(default_factory=Meter)
    transitions: list[int] = field(default_factory=list)  # each query's own execution: StateEntered events
    execution_seconds: list[float] = field(default_factory=list)  # each query execution's startDate -> stopDate
    reply_seconds: list[float] = field(default_factory=list)  # submission answered -> reply committed
    deadline_transitions: int = 0  # StateEntered events of the deadline executions during the pattern
    deadline_executions: int = 0  # deadline executions that entered a state during the pattern
    # Every deadline execution of the pattern's stack that ran to its end (SUCCEEDED): its whole history
    deadline_execution_transitions: list[int] = field(default_factory=list)  # StateEntered events each
    deadline_execution_steps: list[int] = field(default_factory=list)  # DeadlineStep invocations each
    deadline_starts: int = 0  # StartExecution requests of the deadline starter's runs during the pattern
    window_seconds: float = 0.0  # the pattern: first submission to last reply committed
    delivery_runs: int = 0  # DeliverBacklog invocations measured (each one simulated minute)
    failing_requests: int = 0  # requests the failing partner received in the whole run
    initial_requests: int = 0  # ... before the circuit opened (down)
    circuit_open: bool = False  # the failing partner's circuit once the queries were asked
    probes: int = 0  # requests it received from the delivery job's runs
    replies: int = 0  # reply SMS sent
    unanswered_reported: int = 0  # replies that report the failing partner as 暂未返回 (cards, releases: any)
    circuits_opened: list[str] = field(default_factory=list)  # partners whose circuit was open at the end
    timings: dict[str, list[float]] = field(default_factory=lambda: {"code": [], "submit": [], "status": []})
    log_bytes: int = 0
    notes: list[str] = field(default_factory=list)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reset_caches() -> None:
    """What a fresh Lambda container has: no cached settings, registry, clients, secrets or services."""
    import app as app_module
    from chalicelib import clients, registry
    from chalicelib.config import settings

    for cached in (settings, registry.companies, registry.carriers):
        cached.cache_clear()
    for name in dir(app_module):
        clear = getattr(getattr(app_module, name), "cache_clear", None)
        if callable(clear):
            clear()
    clients.reset()


def _client_project(workdir: str) -> str:
    """Chalice's test client applies a stage's environment: give it a project with none."""
    project = os.path.join(workdir, "chalice-project")
    os.makedirs(os.path.join(project, ".chalice"), exist_ok=True)
    with open(os.path.join(project, ".chalice", "config.json"), "w") as fh:
        json.dump({"version": "2.0", "app_name": "yizhengtongcha", "stages": {"dev": {}}}, fh)
    return project


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class Run:
    """One pattern on one fresh stack."""

    def __init__(self, pattern: Pattern, workdir: str, subscribers: list[dict[str, str]]) -> None:
        self.pattern = pattern
        self.workdir = os.path.join(workdir, pattern.key)
        self.subscribers = subscribers
        self.stack: Any = None
        self.api: Any = None
        self.meter: Meter = Meter()
        self.sfn: Any = None
        self.queries_table: Any = None
        self._stop = threading.Event()
        self._first_start = threading.Event()  # the deadline starter's first run is done
        self.submitted: dict[str, float] = {}  # query id -> perf_counter when its submission was answered
        self.replied: dict[str, float] = {}  # query id -> perf_counter when send_replies committed its reply

    # -- assembling ------------------------------------------------------------------------
    @contextmanager
    def running(self) -> Iterator[Run]:
        from chalice.test import Client
        from moto import mock_aws

        from local.stack import LocalStack, StackOptions

        options = StackOptions(workdir=self.workdir, api_port=free_port(),
                               deadline_seconds=self.pattern.deadline_seconds,
                               release_deadline_seconds=self.pattern.deadline_seconds,
                               dispute_deadline_seconds=self.pattern.deadline_seconds, pump=False, retries=False,
                               schedule_seconds=0, deadline_slot_seconds=self.pattern.slot_seconds,
                               deadline_lead_slots=DEADLINE_LEAD_SLOTS, deadlines=False)
        with mock_aws(config=MOTO_CONFIG):
            reset_caches()
            self.stack = LocalStack(options)
            originals: dict[str, Any] = {}
            pump = threading.Thread(target=self._pump_retries, daemon=True)
            starter = threading.Thread(target=self._start_deadlines, daemon=True)
            try:
                import boto3

                app_module = self.stack.start().app_module
                originals = {name: getattr(app_module, name)
                             for name in ("start_queries", "retry_lookups", "send_replies", "replies_failed")}

                self.sfn = boto3.client("stepfunctions")
                self.queries_table = boto3.resource("dynamodb").Table(self.stack.env["QUERIES_TABLE"])
                with metering() as self.meter, Client(app_module.app,
                                                      project_dir=_client_project(self.workdir)) as self.api:
                    self._instrument(originals)
                    pump.start()
                    starter.start()
                    # The first run starts the current and next slots' executions at once (a fresh stack's
                    # burst, not the per-minute steady state): let them reach their Wait before measuring.
                    self._first_start.wait(timeout=60)
                    time.sleep(2)
                    yield self
            finally:
                self._stop.set()
                for thread in (pump, starter):
                    if thread.is_alive():
                        thread.join(timeout=5)
                for name, handler in originals.items():
                    setattr(self.stack.app_module, name, handler)
                self._stop_executions()
                self.stack.stop()
                reset_caches()

    def _instrument(self, originals: dict[str, Any]) -> None:
        from chalicelib.contracts import REPLIES_FAILED, RETRY_LOOKUPS, SEND_REPLIES, START_QUERIES
        from local.lambdas import logical_id

        for function in (START_QUERIES, RETRY_LOOKUPS, REPLIES_FAILED):
            setattr(self.stack.app_module, function.name, self.meter.timed(function.logical_id,
                                                                           originals[function.name]))
        setattr(self.stack.app_module, SEND_REPLIES.name,
                self.meter.timed(SEND_REPLIES.logical_id, self._noting_replies(originals[SEND_REPLIES.name])))
        dispatcher = self.stack.dispatcher
        for name, handler in list(dispatcher.handlers.items()):
            dispatcher.handlers[name] = self.meter.timed(logical_id(name), handler)

    def _noting_replies(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """send_replies, noting when each reply (a query's, a dispute's outcome) was committed (the end of the
        batch that sent it)."""

        def run(event: dict[str, Any], *args: Any) -> Any:
            result = handler(event, *args)
            done = time.perf_counter()
            for record in event.get("Records", []):
                try:
                    message = json.loads(record["body"])
                except ValueError:
                    continue
                if isinstance(message, dict) and message.get("type") in ("query", "dispute"):
                    self.replied.setdefault(str(message.get("id")), done)
            return result

        return run

    def _start_deadlines(self) -> None:
        """The deadline starter's schedule (EventBridge deployed: moto fires none), once a slot, metered."""
        start = self.meter.timed("StartDeadlines", self.stack.start_deadlines_once)
        while not self._stop.is_set():
            try:
                start()
            except Exception as exc:  # the next run tries again, as the real schedule would
                print(f"[bench] start_deadlines failed: {type(exc).__name__}: {exc}", flush=True)
            self._first_start.set()
            self._stop.wait(self.pattern.slot_seconds)

    def _pump_retries(self) -> None:
        """Lambda's SQS event source for the lookup retry queue (the stack's own poller is off)."""
        while not self._stop.is_set():
            try:
                if not self.stack.pump_retries(wait_seconds=1):
                    self._stop.wait(0.1)
            except Exception as exc:  # the messages come back after their visibility timeout
                print(f"[bench] retry_lookups failed: {type(exc).__name__}: {exc}", flush=True)
                self._stop.wait(0.5)

    def _stop_executions(self) -> None:
        if self.sfn is None:
            return
        for machine in self.sfn.list_state_machines()["stateMachines"]:
            for execution in self.sfn.list_executions(stateMachineArn=machine["stateMachineArn"],
                                                      statusFilter="RUNNING")["executions"]:
                with_retries = time.monotonic() + 10
                while time.monotonic() < with_retries:
                    try:
                        self.sfn.stop_execution(executionArn=execution["executionArn"])
                        break
                    except AttributeError:  # its worker thread has not begun yet
                        time.sleep(0.05)

    # -- the citizen's side --------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, str]) -> Any:
        return self.api.http.post(path, headers={"Content-Type": "application/json"}, body=json.dumps(body))

    def _latest_code(self, phone: str) -> str:
        for line in reversed(self.stack.read_outbox()):
            if line["phone"] == phone and "验证码为" in line["message"]:
                return str(line["message"].split("验证码为")[1][:6])
        raise RuntimeError(f"no code SMS for {phone}")

    def submit(self, subscriber: dict[str, str], timings: dict[str, list[float]]) -> str:
        """Code request, submission and the start queue's batch: what one citizen's query sets off."""
        phone = subscriber["phone"]
        if self.pattern.kind == CARDS:
            body = {"name": subscriber["name"], "id_number": subscriber["id_number"], "phone": phone}
        else:
            body = {"phone": phone, "id_last6": subscriber["id_last6"]}
        with acting_as(API_HANDLER):
            started = time.perf_counter()
            response = self._post("/v1/verification-codes", {"phone": phone})
            timings["code"].append(time.perf_counter() - started)
        if response.status_code != 202:
            raise RuntimeError(f"code request refused: {response.status_code} {response.body!r}")
        code = self._latest_code(phone)
        with acting_as(API_HANDLER):
            started = time.perf_counter()
            response = self._post(self.pattern.submit_path, {**body, "code": code})
            timings["submit"].append(time.perf_counter() - started)
        if response.status_code != 202:
            raise RuntimeError(f"query refused: {response.status_code} {response.body!r}")
        query_id = str(json.loads(response.body)[self.pattern.id_field])
        self.submitted[query_id] = time.perf_counter()
        wait_for(lambda: self.stack.pump_once(), 10, "the start queue's message")
        return query_id

    def execution_arn(self, query_id: str) -> str:
        return str(self.stack.env["STATE_MACHINE_ARN"].replace(":stateMachine:", ":execution:") + ":" + query_id)

    def finished(self, query_id: str) -> dict[str, Any] | None:
        try:
            described: dict[str, Any] = self.sfn.describe_execution(executionArn=self.execution_arn(query_id))
        except self.sfn.exceptions.ExecutionDoesNotExist:
            return None
        return described if described["status"] != "RUNNING" else None

    def wait_finished(self, query_id: str, timeout: float) -> dict[str, Any]:
        described: dict[str, Any] = wait_for(lambda: self.finished(query_id), timeout, f"execution {query_id}")
        return described

    def closed(self, query_id: str) -> bool:
        """Its one reply is committed: a terminal status and out of the deadline index (tests' wait_closed)."""
        item = self.queries_table.get_item(Key={"query_id": query_id}, ConsistentRead=True).get("Item")
        return item is not None and item.get("status") in ("replied", "failed") and "deadline_slot" not in item

    def wait_closed(self, query_id: str) -> None:
        """The reply committed (at the latest one slot after the deadline), then the execution ended."""
        timeout = self.pattern.deadline_seconds + 2 * self.pattern.slot_seconds + 30
        wait_for(lambda: self.closed(query_id), timeout, f"the reply to {query_id}")
        self.wait_finished(query_id, timeout=60)

    def deadline_activity(self, since: dt.datetime, until: dt.datetime) -> tuple[int, int]:
        """(StateEntered events, executions with any) of the deadline state machine between the two instants."""
        arn = self.stack.env["DEADLINE_STATE_MACHINE_ARN"]
        events = executions = 0
        for page in self.sfn.get_paginator("list_executions").paginate(stateMachineArn=arn):
            for execution in page["executions"]:
                history = self.sfn.get_execution_history(executionArn=execution["executionArn"],
                                                         maxResults=1000)["events"]
                entered = sum(1 for e in history
                              if e["type"].endswith("StateEntered") and since <= e["timestamp"] <= until)
                events += entered
                executions += int(entered > 0)
        return events, executions

    def deadline_histories(self) -> tuple[list[int], list[int]]:
        """(StateEntered events, DeadlineStep entries) of every deadline execution that ran to its end."""
        arn = self.stack.env["DEADLINE_STATE_MACHINE_ARN"]
        transitions: list[int] = []
        steps: list[int] = []
        for page in self.sfn.get_paginator("list_executions").paginate(stateMachineArn=arn,
                                                                       statusFilter="SUCCEEDED"):
            for execution in page["executions"]:
                history = self.sfn.get_execution_history(executionArn=execution["executionArn"],
                                                         maxResults=1000)["events"]
                entered = [e for e in history if e["type"].endswith("StateEntered")]
                transitions.append(len(entered))
                steps.append(sum(1 for e in entered if e.get("stateEnteredEventDetails", {}).get("name")
                                 == "DeadlineStep"))
        return transitions, steps

    def status(self, query_id: str, timings: dict[str, list[float]]) -> None:
        with acting_as(STATUS_CHECK):
            started = time.perf_counter()
            self.api.http.get(f"{self.pattern.submit_path}/{query_id}")
            timings["status"].append(time.perf_counter() - started)

    def retry_queue_idle(self) -> bool:
        from chalicelib import clients

        attributes = clients.client("sqs").get_queue_attributes(
            QueueUrl=self.stack.env["RETRY_QUEUE_URL"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                            "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return all(int(v) == 0 for v in attributes.values())


def _circuit_is_open(stack: Any, partner: str) -> bool:
    return bool(stack.app_module.lookups().circuits.states([partner])[partner].is_open)


def chosen(pattern: Pattern, subscribers: list[dict[str, str]]) -> list[dict[str, str]]:
    """The subscribers who query in this pattern. Cards: one per ID number (two phones share one, and a
    card query is limited to one per ID number per 24 h); releases: those whose carrier states a `since`
    (SPEC §10.2: without one the release ends as `unknown`); at most `max_queries` of them."""
    if pattern.kind == CARDS:
        by_id: dict[str, dict[str, str]] = {}
        for row in subscribers:
            by_id.setdefault(row["id_number"], row)
        subscribers = list(by_id.values())
    elif pattern.kind == RELEASES:
        subscribers = [row for row in subscribers if row.get("since")]
    wanted = pattern.max_queries + int(pattern.warm_up)
    return subscribers[:wanted] if pattern.max_queries else subscribers


def _partners(pattern: Pattern, stack: Any) -> tuple[list[str], str | None, dict[str, str]]:
    """(the partners asked, the misbehaving one, operator -> mode), the simulators set for the pattern."""
    from chalicelib import registry
    from local import simulators

    if pattern.kind == CARDS:  # every operator as local/fixtures/operators.csv says: all of them answer
        operators = [o.id for o in registry.operators()]
        modes = {op: stack.operators.mode_of(op)[0] for op in operators}
        unanswering = {op: mode for op, mode in modes.items() if mode not in ("immediate", "callback", "flaky")}
        if unanswering:
            raise RuntimeError(f"operators.csv: operators that would not answer: {unanswering}")
        return operators, None, modes
    companies = [c.id for c in registry.companies()]
    fixture = simulators.load_partner_modes()
    for company in companies:  # all answering: the fixture's immediate ones at once, the rest by callback
        partner = stack.partners[company]
        immediate = pattern.all_immediate or fixture.get(company, ("callback", 1.0))[0] == "immediate"
        partner.mode = "immediate" if immediate else "callback"
        partner.delay_seconds = CALLBACK_DELAY_SECONDS
    failing = companies[-1] if pattern.failing_mode else None
    if failing:
        stack.partners[failing].mode = pattern.failing_mode
    return companies, failing, {}


def measure(pattern: Pattern, workdir: str, subscribers: list[dict[str, str]], log: Any) -> Measured:
    from chalicelib import registry

    run = Run(pattern, workdir, chosen(pattern, subscribers))
    log.flush()
    log_start = os.path.getsize(log.name)
    with run.running():
        stack = run.stack
        partners, failing, modes = _partners(pattern, stack)
        flaky = [op for op, mode in modes.items() if mode == "flaky"]
        result = Measured(pattern, partners, failing, flaky=flaky, modes=Counter(modes.values()))
        if pattern.kind == CARDS:
            result.groups = Counter(o.group for o in registry.operators())
        before = _warm_up(run) if pattern.warm_up else Counter()
        run.meter.clear()  # the pattern only: not the stack's start (nor the first deadline starter run)
        since = dt.datetime.now(dt.UTC)
        started = time.perf_counter()
        if pattern.probe_minutes:
            _run_with_probes(run, result)
        else:
            _run_in_flight(run, result)
        result.meter = run.meter.snapshot()
        result.window_seconds = time.perf_counter() - started
        result.deadline_transitions, result.deadline_executions = run.deadline_activity(since, dt.datetime.now(dt.UTC))
        result.deadline_execution_transitions, result.deadline_execution_steps = run.deadline_histories()
        result.deadline_starts = result.meter.requests.get(("StartDeadlines", "states:StartExecution"), 0)
        simulators = [*stack.partners.values(), stack.operators]
        result.failing_requests = len(stack.partners[failing].requests) if failing else 0
        refused = Counter(status for s in simulators for calls in _callbacks(s) for status in calls if status != 200)
        if refused:
            result.notes.append(f"callbacks the API did not answer 200: {dict(refused)}")
        replies = [m["message"] for m in stack.read_outbox() if "验证码" not in m["message"]][before["replies"]:]
        result.replies = len(replies)
        if failing:  # silent, down: 暂未返回 in every reply; flaky, late: answered in every reply
            name = next(c.name for c in registry.companies() if c.id == failing)
            result.unanswered_reported = sum(f"{name}暂未返回" in m for m in replies)
        elif pattern.kind in (CARDS, RELEASES):
            result.unanswered_reported = sum("暂未返回" in m for m in replies)
        if pattern.kind == RELEASES and not all("二次号码解绑结果" in m for m in replies):
            result.notes.append("replies that are not a release result: "
                                f"{sum('二次号码解绑结果' not in m for m in replies)}")
        if pattern.kind == CARDS:
            result.failing_requests = sum(len(stack.operators.requests_to(op)) for op in flaky) - before["flaky"]
        if pattern.kind in (CARDS, RELEASES):
            states = stack.app_module.lookups().circuits.states(partners)
            result.circuits_opened = [op for op in partners if states[op].is_open]
    log.flush()
    result.log_bytes = os.path.getsize(log.name) - log_start
    return result


def _warm_up(run: Run) -> Counter[str]:
    """The first subscriber's query, then the meter cleared: what was sent and replied until then."""
    query_id = run.submit(run.subscribers.pop(0), {"code": [], "submit": [], "status": []})
    run.wait_closed(query_id)
    wait_for(run.retry_queue_idle, 30, "the retry queue to drain")
    run.meter.clear()
    stack = run.stack
    flaky = [op for op in stack.operators.modes if stack.operators.mode_of(op)[0] == "flaky"]
    return Counter(replies=sum("验证码" not in m["message"] for m in stack.read_outbox()),
                   flaky=sum(len(stack.operators.requests_to(op)) for op in flaky))


def _callbacks(simulator: Any) -> list[list[int]]:
    """The HTTP status of every callback a simulator made: a list per partner (the operator simulator's
    are by operator)."""
    callbacks = simulator.callbacks
    return list(callbacks.values()) if isinstance(callbacks, dict) else [callbacks]


def _collect(run: Run, result: Measured, query_ids: list[str]) -> None:
    for query_id in query_ids:
        run.wait_closed(query_id)
        described = run.wait_finished(query_id, timeout=60)
        result.execution_seconds.append((described["stopDate"] - described["startDate"]).total_seconds())
        if query_id in run.replied:
            result.reply_seconds.append(run.replied[query_id] - run.submitted[query_id])
        events = run.sfn.get_execution_history(executionArn=run.execution_arn(query_id), maxResults=1000)["events"]
        result.transitions.append(sum(1 for e in events if e["type"].endswith("StateEntered")))
    result.queries = len(query_ids)


def _quiet_delivery_runs(run: Run, result: Measured, runs: int = 3) -> None:
    """The per-minute job with nothing to deliver: the fixed cost every minute has."""
    for _ in range(runs):
        run.stack.deliver_once()
        result.delivery_runs += 1


def _run_in_flight(run: Run, result: Measured) -> None:
    """Queries submitted one after another, at most `in_flight` of them waiting at once."""
    waiting: list[str] = []
    query_ids: list[str] = []
    for subscriber in run.subscribers:
        while run.pattern.in_flight and len(waiting) >= run.pattern.in_flight:
            run.wait_closed(waiting[0])
            run.status(waiting.pop(0), result.timings)
        query_id = run.submit(subscriber, result.timings)
        waiting.append(query_id)
        query_ids.append(query_id)
    for query_id in waiting:
        run.wait_closed(query_id)
        run.status(query_id, result.timings)
    _collect(run, result, query_ids)
    wait_for(run.retry_queue_idle, 30, "the retry queue to drain")
    if result.failing:
        result.circuit_open = _circuit_is_open(run.stack, result.failing)
    _quiet_delivery_runs(run, result)


def _run_with_probes(run: Run, result: Measured) -> None:
    """Every query in flight against a partner that is down; then the delivery job, minute after minute."""
    assert result.failing is not None
    stack = run.stack
    partner = stack.partners[result.failing]
    # The first query's deadline as the deadline execution sees it: rounded down to its slot.
    now = time.time()
    slot = math.floor((now + run.pattern.deadline_seconds) / run.pattern.slot_seconds) * run.pattern.slot_seconds
    first_deadline = time.monotonic() + (slot - now)
    query_ids = [run.submit(subscriber, result.timings) for subscriber in run.subscribers]
    # Every company asked, the first failures' retries back while the circuit opened: then a quiet second.
    wait_for(lambda: run.meter.invocations("AskCompanies") >= len(query_ids), 30, "every fan-out")
    last = {"count": -1, "changed": time.monotonic()}

    def quiet() -> bool:
        if len(partner.requests) != last["count"]:
            last.update(count=len(partner.requests), changed=time.monotonic())
        return time.monotonic() - last["changed"] >= 1 and run.retry_queue_idle()

    # The circuit opens once the partner answered nothing for 30 s while 5 transient failures came in.
    opened_by = time.monotonic() + 60
    while time.monotonic() < opened_by and not _circuit_is_open(stack, result.failing):
        time.sleep(0.5)
    wait_for(quiet, 30, "the failing partner's traffic to settle")
    result.initial_requests = len(partner.requests)
    result.circuit_open = _circuit_is_open(stack, result.failing)
    # The deadline's minutes, compressed: one delivery run per simulated minute, while lookups wait.
    t0 = time.time()
    for minute in range(1, run.pattern.probe_minutes + 1):
        if time.monotonic() > first_deadline - 2:  # a probe needs a lookup whose deadline has not passed
            result.notes.append(f"only {minute - 1} simulated minutes: the first query's deadline came (slow machine)")
            break
        stack.deliver_once(now=t0 + 60 * minute)
        result.delivery_runs += 1
    result.probes = len(partner.requests) - result.initial_requests
    if result.probes < result.delivery_runs:
        result.notes.append(f"{result.delivery_runs - result.probes} runs sent no probe")
    _collect(run, result, query_ids)


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (0 < share <= 1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(len(ordered) * share) - 1))] if ordered else 0.0


def summarise_latency(timings: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) * 1000 for name, values in timings.items() if values}

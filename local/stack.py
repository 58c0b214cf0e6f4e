"""Assemble the whole service on one machine (SPEC §7).

Used by `make run` (moto in server mode on :5000, API on :8000) and by the tests
(moto in-process under mock_aws, everything on free ports). Order matters:
the environment is set before chalicelib is imported, because table names and
settings are read once.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from local import aws

ROOT = aws.ROOT
# How long a pump long-polls its queue, as Lambda's poller does (up to 20 s there): a message ends the poll at
# once (moto wakes the poll, and re-checks delayed messages every second inside it), so this sets only how often
# an idle pump calls SQS. An idle test stack spent 0.047 CPU-s a second with a one-second poll, 0.034 with this
# (medians of three alternating samples). Shorter than stop()'s join budget, so a pump the wake-up message misses
# still ends in time.
PUMP_POLL_SECONDS = 4
STOP_BUDGET_SECONDS = 5


@dataclass
class StackOptions:
    workdir: str = os.path.join(ROOT, ".local")
    api_port: int = 8000
    deadline_seconds: int = 60
    dispute_deadline_seconds: int = 120  # DISPUTE_DEADLINE_SECONDS (deployed: 15 days)
    release_deadline_seconds: int = 120  # RELEASE_DEADLINE_SECONDS (deployed: 15 days)
    partner_modes: str = ""  # PARTNER_MODES override
    # The fixtures' callback delays (partners.csv, operators.csv, and an unlisted operator's 1 s) times this:
    # `make run` keeps them as a partner's seconds; the tests' stack answers sooner, in the same order.
    callback_delay_scale: float = 1.0
    # The state machines' Retry intervals times this (moto sleeps them for real; local/aws.py RETRY_CLOCK):
    # `make run` keeps the ASL's seconds; the tests' stack retries sooner, as often and in the same order.
    retry_interval_scale: float = 1.0
    carrier_port: int = 0
    partner_ports: dict[str, int] = field(default_factory=dict)
    pump: bool = True  # poll the start queue, as Lambda's SQS event source does
    retries: bool = True  # poll the lookup retry queue, likewise
    schedule_seconds: int = 60  # run the partner delivery job this often, as its EventBridge rule; 0: never
    replies: bool = True  # poll the reply queue and its dead-letter queue, as their Lambda event sources do
    # The deadline granularity (DEADLINE_SLOT_SECONDS: 60 deployed) and the deadline executions' starter,
    # run every slot on a timer (moto fires no EventBridge schedule); False: tests start them themselves.
    deadline_slot_seconds: int = 1
    deadline_lead_slots: int = 3
    # Deadline index shards (DEADLINE_SHARDS: 16 deployed): each slot sweeps every shard of every kind, and
    # on moto each range query reads the whole table, so a few keep an idle stack idle.
    deadline_shards: int = 2
    deadlines: bool = True
    # A partner task's first backoff (TASK_FIRST_BACKOFF_SECONDS: 2 deployed, doubling per failure).
    first_backoff_seconds: int = 2
    # A claimed reply not committed within this long is claimed again (REPLY_RECLAIM_SECONDS: 300 deployed);
    # None: six slots, room for a reply in flight on a loaded machine.
    reply_reclaim_seconds: int | None = None
    print_sms: bool = False
    aws_endpoint: str | None = None  # None: moto in-process (mock_aws is active)
    provision: str = "direct"  # or "cloudformation": deploy infra/'s template into moto
    # Registry data as a deployment would change it: fields per company id, and companies that join.
    company_changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_companies: list[dict[str, Any]] = field(default_factory=list)
    # SPEC §9: one operator simulator serves every operator under /{operator} (make run: 8200).
    operator_port: int = 0
    operator_modes: str = ""  # OPERATOR_MODES override, e.g. "cmcc-gd=down,mvno-jd=silent"
    operator_changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The bundled registry's operators this stack registers, in the registry's order (empty: all 132). Their AWS
    # resources are those of the whole registry, so stacks that differ only in this share a moto world.
    operators: tuple[str, ...] = ()
    extra_operators: list[dict[str, Any]] = field(default_factory=list)  # joining by data alone
    # SPEC §3 proof-of-work thresholds (CODE_FREE_PER_NUMBER, CODE_FREE_PER_CLIENT); None: the deployed 2 and 20.
    code_free_per_number: int | None = None
    code_free_per_client: int | None = None


def configure_environment(options: StackOptions) -> dict[str, str]:
    env = aws.base_environment()
    env.update({
        "QUERY_DEADLINE_SECONDS": str(options.deadline_seconds),
        "DISPUTE_DEADLINE_SECONDS": str(options.dispute_deadline_seconds),
        "RELEASE_DEADLINE_SECONDS": str(options.release_deadline_seconds),
        "DEADLINE_SLOT_SECONDS": str(options.deadline_slot_seconds),
        "DEADLINE_LEAD_SLOTS": str(options.deadline_lead_slots),
        "DEADLINE_SHARDS": str(options.deadline_shards),
        "TASK_FIRST_BACKOFF_SECONDS": str(options.first_backoff_seconds),
        "REPLY_RECLAIM_SECONDS": str(options.reply_reclaim_seconds or max(5, 6 * options.deadline_slot_seconds)),
        "PUBLIC_API_URL": f"http://127.0.0.1:{options.api_port}",
        "COMPANY_REGISTRY_FILE": os.path.join(options.workdir, "companies.json"),
        "CARRIER_REGISTRY_FILE": os.path.join(options.workdir, "carriers.json"),
        "OPERATOR_REGISTRY_FILE": os.path.join(options.workdir, "operators.json"),
        "POWERTOOLS_METRICS_NAMESPACE": "YiZhengTongCha",
    })
    for name, value in (("CODE_FREE_PER_NUMBER", options.code_free_per_number),
                        ("CODE_FREE_PER_CLIENT", options.code_free_per_client)):
        if value is not None:
            env[name] = str(value)
    if options.aws_endpoint:
        env["AWS_ENDPOINT_URL"] = options.aws_endpoint
    os.makedirs(options.workdir, exist_ok=True)
    os.environ.update(env)
    return env


_OUTBOX: dict[str, Any] = {}


def install_sms_outbox(path: str, echo: bool) -> None:
    """Every SMS moto's SNS 'sends' is appended to the outbox as one JSON line."""
    from moto.sns.models import SNSBackend

    first = not _OUTBOX
    _OUTBOX.update(path=path, echo=echo)
    if not first:
        return
    original = SNSBackend.publish
    lock = threading.Lock()

    def publish(self: SNSBackend, message: str, arn: str | None, phone_number: str | None = None,
                *args: Any, **kwargs: Any) -> str:
        message_id = original(self, message, arn, phone_number, *args, **kwargs)
        if phone_number:
            line = {"phone": phone_number.removeprefix("+86"), "message": message,
                    "sent_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            with lock, open(_OUTBOX["path"], "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            if _OUTBOX["echo"]:
                print(f"[SMS] to {line['phone']}: {message}", flush=True)
        return message_id

    SNSBackend.publish = publish  # type: ignore[method-assign]


class LocalStack:
    def __init__(self, options: StackOptions, provisioned: aws.Resources | None = None) -> None:
        """`provisioned`: the AWS resources a previous stack with the same registries created in this moto
        (the tests reuse them, emptied); None creates them."""
        self.options = options
        self.provisioned = provisioned
        self.env = configure_environment(options)
        self.outbox = os.path.join(options.workdir, "sms-outbox.jsonl")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.partners: dict[str, Any] = {}
        self.carrier: Any = None
        self.operators: Any = None  # the OperatorSimulator: set_mode(), requests_to(), callbacks
        self.api_server: Any = None

    def start(self) -> LocalStack:
        from chalicelib import registry
        from chalicelib.config import settings
        from local import lambdas, simulators

        opts = self.options
        open(self.outbox, "a").close()
        install_sms_outbox(self.outbox, opts.print_sms)
        aws.tune_moto()
        aws.RETRY_CLOCK.scale = opts.retry_interval_scale
        import app as app_module

        self.app_module = app_module
        self.dispatcher = lambdas.install(app_module)
        bundled_companies = os.path.join(ROOT, "chalicelib", "data", "companies.json")
        bundled_carriers = os.path.join(ROOT, "chalicelib", "data", "carriers.json")
        with open(bundled_companies, encoding="utf-8") as fh:
            companies = [{**entry, **opts.company_changes.get(entry["id"], {})}
                         for entry in json.load(fh)["companies"]] + [dict(e) for e in opts.extra_companies]
        bundled_operators = os.path.join(ROOT, "chalicelib", "data", "operators.json")
        with open(bundled_operators, encoding="utf-8") as fh:
            operators = [{**entry, **opts.operator_changes.get(entry["id"], {})}
                         for entry in json.load(fh)["operators"]] + [dict(e) for e in opts.extra_operators]
        provision = aws.deploy_with_cloudformation if opts.provision == "cloudformation" else aws.create
        created = self.provisioned or provision(self.env, [*aws.registry_secret_names(bundled_carriers),
                                       *(entry["secret_name"] for entry in companies),
                                       *(entry["secret_name"] for entry in operators)])
        if opts.operators:
            kept = {*opts.operators, *(entry["id"] for entry in opts.extra_operators)}
            unknown = kept - {entry["id"] for entry in operators}
            if unknown:
                raise ValueError(f"not in the operator registry: {sorted(unknown)}")
            operators = [entry for entry in operators if entry["id"] in kept]
        os.environ.update(created.env)
        self.env.update(created.env)
        self.provisioned = created
        self.secrets = created.secrets
        # Clients stay: nothing set here changes them (the tests reset them between stacks).
        for cache in (settings.cache_clear, registry.companies.cache_clear, registry.carriers.cache_clear,
                      registry.operators.cache_clear):
            cache()

        with open(bundled_carriers, encoding="utf-8") as fh:
            carriers = json.load(fh)["carriers"]
        self.carrier = simulators.CarrierSimulator(
            secrets={c["id"]: created.secrets[c["secret_name"]] for c in carriers},
            subscribers=simulators.load_subscribers())
        carrier_url = self.carrier.start(opts.carrier_port)
        for entry in carriers:
            entry["base_url"] = f"{carrier_url}/{entry['id']}"
        self._write(self.env["CARRIER_REGISTRY_FILE"], {"carriers": carriers})

        scale = opts.callback_delay_scale
        modes = simulators.load_partner_modes(override=opts.partner_modes or os.environ.get("PARTNER_MODES"))
        accounts = simulators.load_accounts()
        for entry in companies:
            mode, delay = modes.get(entry["id"], ("callback", 1.0))
            partner = simulators.PartnerSimulator(entry["id"], created.secrets[entry["secret_name"]],
                                                  accounts, mode, delay * scale)
            entry["base_url"] = partner.start(opts.partner_ports.get(entry["id"], 0))
            self.partners[entry["id"]] = partner
        self._write(self.env["COMPANY_REGISTRY_FILE"], {"companies": companies})

        self.operators = simulators.OperatorSimulator(
            secrets={entry["id"]: created.secrets[entry["secret_name"]] for entry in operators},
            cards=simulators.load_cards(),
            modes={operator: (mode, delay * scale) for operator, (mode, delay) in simulators.load_operator_modes(
                override=opts.operator_modes or os.environ.get("OPERATOR_MODES")).items()},
            default=(simulators.DEFAULT_OPERATOR_MODE[0], simulators.DEFAULT_OPERATOR_MODE[1] * scale))
        operator_url = self.operators.start(opts.operator_port)
        for entry in operators:
            entry["base_url"] = f"{operator_url}/{entry['id']}"
        self._write(self.env["OPERATOR_REGISTRY_FILE"], {"operators": operators})
        registry.companies.cache_clear()
        registry.carriers.cache_clear()
        registry.operators.cache_clear()

        self._start_api()
        if opts.pump:
            self._spawn(lambda: self._pump_forever(self.pump_once, "start_queries"))
        if opts.retries:
            self._spawn(lambda: self._pump_forever(self.pump_retries, "retry_lookups"))
        if opts.replies:
            self._spawn(lambda: self._pump_forever(self.pump_replies, "send_replies"))
            self._spawn(lambda: self._pump_forever(self.pump_dead_replies, "replies_failed"))
        if opts.schedule_seconds:
            self._spawn(self._schedule_forever)
        if opts.deadlines:
            self._spawn(self._deadlines_forever)
        return self

    @staticmethod
    def _write(path: str, data: dict[str, Any]) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=1)

    def _start_api(self) -> None:
        from chalice.config import Config
        from chalice.local import LocalDevServer, ThreadedHTTPServer

        # http.server listens with a backlog of 5: 132 operators calling back at once would find
        # connections refused, which API Gateway never does.
        ThreadedHTTPServer.request_queue_size = 256

        from local.http import LocalRequestHandler, serve_requests_concurrently

        serve_requests_concurrently(self.app_module.app)
        config = Config.create(chalice_stage="local", app_name="yizhengtongcha")
        LocalRequestHandler.outbox = self.outbox
        self.api_server = LocalDevServer(self.app_module.app, config, "127.0.0.1", self.options.api_port,
                                         handler_cls=LocalRequestHandler)
        self._spawn(lambda: self.api_server.server.serve_forever(poll_interval=0.05))

    def _spawn(self, target: Any) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append(thread)

    def pump_once(self, visibility_on_failure: int | None = None, wait_seconds: int = 0,
                  stopped: threading.Event | None = None) -> int:
        from chalicelib import clients
        from local.lambdas import pump_queue

        return pump_queue(self.app_module, clients.client("sqs"), self.env["START_QUEUE_URL"],
                          wait_seconds=wait_seconds, visibility_on_failure=visibility_on_failure, stopped=stopped)

    def pump_retries(self, wait_seconds: int = 0, stopped: threading.Event | None = None) -> int:
        from chalicelib import clients
        from local.lambdas import pump_queue

        return pump_queue(self.app_module, clients.client("sqs"), self.env["RETRY_QUEUE_URL"],
                          function="retry_lookups", wait_seconds=wait_seconds, stopped=stopped)

    def pump_replies(self, wait_seconds: int = 0, stopped: threading.Event | None = None) -> int:
        from chalicelib import clients
        from local.lambdas import pump_queue

        return pump_queue(self.app_module, clients.client("sqs"), self.env["REPLY_QUEUE_URL"],
                          function="send_replies", wait_seconds=wait_seconds, stopped=stopped)

    def pump_dead_replies(self, wait_seconds: int = 0, stopped: threading.Event | None = None) -> int:
        from chalicelib import clients
        from local.lambdas import pump_queue

        return pump_queue(self.app_module, clients.client("sqs"), self.env["REPLY_DLQ_URL"],
                          function="replies_failed", wait_seconds=wait_seconds, stopped=stopped)

    def start_deadlines_once(self) -> list[str]:
        """One run of the deadline starter (its EventBridge schedule deployed)."""
        from local.lambdas import acting_as

        with acting_as("StartDeadlines"):
            return list(self.app_module.deadlines().start_ahead())

    def _deadlines_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.start_deadlines_once()
            except Exception as exc:  # the next run tries again, as the real schedule would
                print(f"[local] start_deadlines failed: {type(exc).__name__}", flush=True)
            self._stop.wait(self.options.deadline_slot_seconds)

    def deliver_once(self, now: float | None = None) -> dict[str, int]:
        """One run of the per-minute delivery job; `now` lets a test stand a few minutes later."""
        from local.lambdas import acting_as

        with acting_as("DeliverBacklog"):
            return dict(self.app_module.delivery().deliver(now))

    def _pump_forever(self, pump: Any, name: str) -> None:
        while not self._stop.is_set():
            try:
                if not pump(wait_seconds=PUMP_POLL_SECONDS, stopped=self._stop):
                    self._stop.wait(0.2)
            except Exception as exc:  # the messages come back after their visibility timeout
                print(f"[local] {name} failed, will retry: {type(exc).__name__}", flush=True)
                self._stop.wait(1)

    def _schedule_forever(self) -> None:
        from local.lambdas import FakeContext, acting_as, scheduled_event

        while not self._stop.wait(self.options.schedule_seconds):
            try:
                with acting_as("DeliverBacklog"):
                    self.app_module.deliver_backlog(scheduled_event(), FakeContext("deliver_backlog"))
            except Exception as exc:  # the next run tries again, as the real schedule would
                print(f"[local] deliver_backlog failed: {type(exc).__name__}", flush=True)

    def _wake_pumps(self) -> None:
        """A pump long-polls its queue for up to PUMP_POLL_SECONDS; a message ends the poll at once, and the pump,
        seeing the stack stopped, leaves it unhandled (it comes back after its visibility timeout, and a
        test's queues are emptied before the next one)."""
        from chalicelib import clients

        pumped = [("START_QUEUE_URL", self.options.pump), ("RETRY_QUEUE_URL", self.options.retries),
                  ("REPLY_QUEUE_URL", self.options.replies), ("REPLY_DLQ_URL", self.options.replies)]
        for variable, on in pumped:
            if on and variable in self.env:
                try:
                    clients.client("sqs").send_message(QueueUrl=self.env[variable], MessageBody='{"type": "stop"}')
                except Exception as exc:  # moto gone already: the pump's poll ends within stop()'s join budget anyway
                    print(f"[local] could not wake a pump: {type(exc).__name__}", flush=True)

    def read_outbox(self) -> list[dict[str, Any]]:
        with open(self.outbox, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def _stop_api_server(self) -> None:
        self.api_server.server.shutdown()
        self.api_server.server.server_close()

    def stop(self) -> None:
        from local.simulators import cancel_pending_callbacks

        self._stop.set()
        cancel_pending_callbacks()
        self._wake_pumps()
        # Side by side, the API's server too: each shutdown waits for its server's poll (50 ms), and in a row
        # they added up to a tenth of a second per stack test.
        stoppers = [threading.Thread(target=sim.stop) for sim in [self.carrier, self.operators,
                                                                  *self.partners.values()] if sim is not None]
        if self.api_server is not None:
            stoppers.append(threading.Thread(target=self._stop_api_server))
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        # One budget for all of them, not 5 s each: a pump caught mid-Lambda finishes its batch first.
        deadline = time.monotonic() + STOP_BUDGET_SECONDS
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

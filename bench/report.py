"""The printed economics and the issue 8 targets, PASS or FAIL."""
from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from bench.economics import PER_MINUTE, Economics, billed_ms, median_ms
from bench.patterns import CALLBACK_DELAY_SECONDS, summarise_latency
from bench.prices import ASSUMPTIONS, PRICES, QUOTAS, lambda_memory_mb, production_deadline_seconds

# Issue 8, "Targets".
TRANSITIONS_TARGET = 5
KMS_TARGET = 4
HAPPY_COST_TARGET = 200.0
DEGRADED_COST_FACTOR = 1.2
FUNCTIONS = ("APIHandler", "StartQueries", "VerifyCarrier", "AskCompanies", "SendReply", "RetryLookups")
WHAT = {"APIHandler": "code + submit + callbacks", "StartQueries": "SQS batches", "RetryLookups": "SQS batches"}


def num(value: float, digits: int = 2) -> str:
    if value == 0:
        return "0"
    if abs(value - round(value)) < 1e-9 and abs(value) >= 1:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


class Report:
    def __init__(self, out: TextIO, results: list[Economics]) -> None:
        self.out = out
        self.results = results
        self.happy, self.flaky, self.down = results

    def line(self, text: str = "") -> None:
        print(text, file=self.out)

    def row(self, label: str, value: Callable[[Economics], str]) -> None:
        self.line(f"  {label:<46}" + "".join(f"{value(r):>19}" for r in self.results))

    def keyed(self, label: str, value: Callable[[Economics, str], str], key: str) -> None:
        self.row(label, lambda r: value(r, key))

    def header(self, title: str) -> None:
        self.line()
        self.row(title, lambda r: r.measured.pattern.title)

    # -- sections ------------------------------------------------------------------------------
    def print(self, log_path: str) -> bool:
        self.intro()
        self.per_query()
        self.costs()
        self.delivery_job()
        self.capacity()
        self.down_partner()
        self.latency()
        self.line()
        self.line("prices (bench/prices.py): " + "; ".join(f"{k} {v}" for k, v in PRICES.items()))
        checks = targets(self.results)
        self.line()
        self.line("targets (issue 8)")
        for passed, text in checks:
            self.line(f"  {'PASS' if passed else 'FAIL'}  {text}")
        self.line()
        self.line(f"(the app's log lines of this run: {log_path})")
        return all(passed for passed, _ in checks)

    def intro(self) -> None:
        m = self.happy.measured
        self.line()
        self.line("一证通查 — the economics of a query (issue 8), measured on the local stack")
        self.line(f"  {len(m.companies)} companies from the registry ({', '.join(m.companies)}); "
                  f"{m.queries} queries per pattern (the active fixture subscribers)")
        self.line(f"  partners answer as local/fixtures/partners.csv says, at once or by callback after "
                  f"{CALLBACK_DELAY_SECONDS:g} s; the misbehaving one is the registry's last, "
                  f"{self.flaky.measured.failing}")
        self.line(f"  one flaky: 503 twice per lookup, at most {self.flaky.measured.pattern.in_flight} queries in "
                  f"flight; one down: 503 to everything, deadline {self.down.measured.pattern.deadline_seconds} s "
                  f"here ({production_deadline_seconds() // 3600} h deployed)")

    def per_query(self) -> None:
        self.header("per query")
        self.row("state transitions (StateEntered events)", lambda r: _span(r.measured.transitions))
        self.row("execution duration, mean (s, on moto)",
                 lambda r: num(sum(r.measured.execution_seconds) / len(r.measured.execution_seconds), 1))
        self.row("Lambda invocations × ms billed (moto median)", lambda r: num(sum(r.per_query.invocations.values())))
        for function in FUNCTIONS:
            label = f"  {function}" + (f" ({WHAT[function]})" if function in WHAT else "")
            self.keyed(label, _invocations, function)
        self.row("API Gateway requests", lambda r: num(r.per_query.api_requests))
        self.row("AWS requests", lambda r: num(sum(r.per_query.by_service().values())))
        services = sorted({s for r in self.results for s in r.per_query.by_service()})
        for service in services:
            label = f"  {service}" + (" (with 2 per batch to a function)" if service == "sqs" else "")
            self.keyed(label, lambda r, k: num(r.per_query.by_service()[k]), service)
            if service == "kms":
                for op in sorted({op for r in self.results for op in r.per_query.requests if op.startswith("kms:")}):
                    self.keyed(f"    {op}", lambda r, k: num(r.per_query.requests.get(k, 0.0)), op)
        self.row("DynamoDB reads: requests / RRU",
                 lambda r: f"{num(r.per_query.reads)} / {num(r.per_query.rru)}")
        self.row("DynamoDB writes: requests / WRU",
                 lambda r: f"{num(r.per_query.writes)} / {num(r.per_query.wru)}")
        self.row("failing partner: requests, whole run",
                 lambda r: num(r.measured.failing_requests) if r.measured.failing else "-")
        self.row("reply SMS / with it as 暂未返回",
                 lambda r: f"{r.measured.replies} / {r.measured.unanswered_reported}")

    def costs(self) -> None:
        self.header("cost per million queries, USD, excluding SMS")
        components = list(self.happy.cost_per_million)
        for component in components:
            self.keyed(f"  {component}", lambda r, k: f"{r.cost_per_million[k]:,.2f}", component)
        self.row("  total", lambda r: f"{r.total_per_million:,.2f}")
        self.line(f"  Lambda GB-s: the billed durations assumed above (bench/prices.py) at "
                  f"{lambda_memory_mb('ask_companies')} MB (prod, .chalice/config.json); the delivery job's per-minute "
                  f"cost spread over {ASSUMPTIONS['reference_queries_per_second']:g} query/s")
        worst = [r.per_query.wru_worst_token - r.per_query.wru for r in self.results]
        self.line(f"  sensitivity: {ASSUMPTIONS['worst_case_task_token_chars']:,}-character task tokens (AWS's "
                  f"maximum; moto's have 36) make the query record's writes cost " + ", ".join(
                      f"+{w:.1f} WRU (+${w * PRICES['DynamoDB writes'].each * 1e6:.2f})" for w in worst))
        extra_ms = 100
        gb = lambda_memory_mb("ask_companies") / 1024
        self.line(f"  sensitivity: every invocation {extra_ms} ms longer on AWS: " + ", ".join(
            f"+${sum(r.per_query.invocations.values()) * extra_ms / 1000 * gb * PRICES['Lambda GB-s'].each * 1e6:.2f}"
            for r in self.results))
        reads = [r.per_query.requests.get("secretsmanager:GetSecretValue", 0.0) * r.measured.queries
                 for r in self.results]
        self.line(f"  Secrets Manager: {', '.join(num(f) for f in reads)} reads per run, cold caches (one container "
                  f"per function); a warm container re-reads a secret every 300 s")
        self.line("  not in the totals: app logs and EMF metrics, " + ", ".join(
            f"{r.measured.log_bytes / max(1, r.measured.queries) / 1024:.1f} KB" for r in self.results)
            + f" per query ({PRICES['CloudWatch Logs']}); X-Ray; data transfer; monthly per-secret fees")

    def delivery_job(self) -> None:
        self.line()
        self.line(f"the delivery job ({PER_MINUTE}), once a minute whatever the traffic, per run:")
        for r in self.results:
            u = r.per_minute
            services = ", ".join(f"{s} {num(n)}" for s, n in sorted(u.by_service().items()) if n)
            self.line(f"  {r.measured.pattern.title:<14} ({r.measured.delivery_runs} runs) "
                      f"{num(sum(u.by_service().values()))} AWS requests ({services}), {num(u.rru)} RRU, "
                      f"{num(u.wru)} WRU: ${sum(u.cost().values()) * 60 * 24 * 30:,.2f} a month")

    def capacity(self) -> None:
        deadline = production_deadline_seconds()
        self.header("sustainable queries/s per account-region")
        self.row(f"StartExecution ({QUOTAS['start_execution_refill_per_second']:,.0f}/s refill)",
                 lambda r: num(r.capacity["StartExecution"], 0))
        self.row(f"transitions ({QUOTAS['state_transitions_refill_per_second']:,.0f}/s ÷ per query)",
                 lambda r: num(r.capacity["state transitions"], 0))
        self.row(f"open executions ({QUOTAS['open_executions']:,.0f} ÷ duration)",
                 lambda r: num(r.capacity["open executions"], 1))
        self.row("  execution duration used (s)", lambda r: num(r.mean_execution_seconds, 1))
        self.row("sustainable (the smallest)", lambda r: num(r.sustainable_qps, 1))
        self.line(f"  Little's law: open executions = arrival rate × duration. With one partner down or silent every "
                  f"execution waits the full {deadline:,} s,")
        self.line(f"  so {QUOTAS['open_executions']:,.0f} open executions carry "
                  f"{QUOTAS['open_executions'] / deadline:.2f} queries/s, whatever a query costs in transitions; "
                  f"past that StartExecution")
        self.line("  answers ExecutionLimitExceeded and starts wait in the queue. The other columns use the durations "
                  "measured here.")

    def down_partner(self) -> None:
        m = self.down.measured
        deadline = production_deadline_seconds()
        self.line()
        self.line(f"down partner ({m.failing}): {m.initial_requests} requests until its circuit opened "
                  f"(open: {'yes' if m.circuit_open else 'NO'}), then {m.probes} in {m.delivery_runs} delivery runs "
                  f"one simulated minute apart; {m.failing_requests} in all")
        self.line(f"  extrapolated linearly to the {deadline // 3600} h deadline: {m.initial_requests} + "
                  f"{deadline // 60:,} probes = {m.initial_requests + deadline // 60:,} requests at most, whatever "
                  f"the number of queries")
        for note in m.notes:
            self.line(f"  note: {note}")

    def latency(self) -> None:
        latency = summarise_latency(self.happy.measured.timings)
        if {"code", "submit", "status"} <= latency.keys():
            self.line()
            self.line("median in-process latency on moto, all answering (ms): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in latency.items())
                      + f"; ratios submit/code {latency['submit'] / latency['code']:.2f}, "
                        f"status/code {latency['status'] / latency['code']:.2f}")


def _span(values: list[int]) -> str:
    return str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _invocations(r: Economics, function: str) -> str:
    count = r.per_query.invocations.get(function, 0.0)
    measured = median_ms(r.measured.meter.durations.get(function, []))
    return f"{num(count)} × {billed_ms(function)} ({measured})" if count else "0"


def targets(results: list[Economics]) -> list[tuple[bool, str]]:
    happy, flaky, down = results
    checks: list[tuple[bool, str]] = []
    every = [t for r in results for t in r.measured.transitions]
    checks.append((max(every) <= TRANSITIONS_TARGET and min(every) == max(every),
                   f"state transitions per query ≤ {TRANSITIONS_TARGET}, the same in every pattern: "
                   + ", ".join(f"{r.measured.pattern.title} {_span(r.measured.transitions)}" for r in results)))
    for r in results:
        kms = r.per_query.by_service()["kms"]
        checks.append((kms <= KMS_TARGET, f"KMS requests per query ≤ {KMS_TARGET}, {r.measured.pattern.title}: "
                                          f"{num(kms)}"))
    m = down.measured
    bounded = m.circuit_open and 0 < m.delivery_runs and m.probes <= m.delivery_runs
    checks.append((bounded, f"down partner ≤ its requests until the circuit opened ({m.initial_requests}) + one probe "
                            f"a minute ({m.delivery_runs}): {m.failing_requests}"))
    happy_cost = happy.total_per_million
    checks.append((happy_cost <= HAPPY_COST_TARGET,
                   f"cost per million ≤ ${HAPPY_COST_TARGET:.0f}, all answering: ${happy_cost:,.2f}"))
    ceiling = DEGRADED_COST_FACTOR * happy_cost
    for r in (flaky, down):
        cost = r.total_per_million
        checks.append((cost <= ceiling, f"cost per million ≤ {DEGRADED_COST_FACTOR:g}× all answering "
                                        f"(${ceiling:,.2f}), {r.measured.pattern.title}: ${cost:,.2f}"))
    replied = all(r.measured.replies == r.measured.queries for r in results)
    reported = down.measured.unanswered_reported == down.measured.queries and flaky.measured.unanswered_reported == 0
    checks.append((replied and reported, "one reply per query; the down partner 暂未返回 in each, the flaky one "
                                         "answered in each"))
    return checks

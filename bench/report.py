"""The printed economics and capacity, and the targets of issues 8, 11, 14 and 15, PASS or FAIL."""
from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import TextIO

from bench.economics import (
    CONFIG_NAMES,
    DEADLINE_KINDS,
    NOT_PRICED,
    PER_MILLION,
    PER_MINUTE,
    QUOTA_VALUES,
    STEP_FUNCTIONS_QUOTAS,
    TABLE_PREFIX,
    AslEstimate,
    Economics,
    billed_ms,
    dispute_estimate,
    median_ms,
    production_lead_slots,
    quota_value,
)
from bench.meter import API_HANDLER, Capacity
from bench.patterns import (
    ACCOUNTS,
    CALLBACK_DELAY_SECONDS,
    CARDS,
    DEADLINE_LEAD_SLOTS,
    DEADLINE_MIN_SLOTS,
    DEADLINE_SLOT_SECONDS,
    RELEASES,
    percentile,
    summarise_latency,
)
from bench.prices import (
    ASSUMPTIONS,
    KMS_QUOTAS_URL,
    PRICES,
    QUOTAS,
    STEP_FUNCTIONS_QUOTAS_URL,
    WRITE_UNIT_BYTES,
    lambda_memory_mb,
    production_deadline_seconds,
)

# Issue 8, "Targets" (still checked).
KMS_TARGET = 4
# Issue 14, "Targets".
TRANSITIONS_TARGET = 4  # per query, its share of the deadline executions included
LIFETIME_TARGET_SECONDS = 30.0  # every query execution, every pattern
# Account queries/s under the Step Functions quotas alone: 300 in the issue, but the 300/s StartExecution refill
# is shared with the deadline starter's 2 starts a minute, so StartExecution-bound at 300 within rounding.
STEP_FUNCTIONS_QPS_TARGET = 299.9
HAPPY_COST_TARGET = 195.0
DEGRADED_COST_FACTOR = 1.2
REPLY_P50_TARGET_SECONDS = 0.5  # every partner answering at once
FAULTS = ("flaky", "down", "silent", "late")  # single-partner faults: cost ≤ 1.2× all answering
ACCOUNT_QPS_GOAL, CARD_QPS_GOAL = 1_000, 100  # issue 14: the quota raises these need
FUNCTIONS = ("APIHandler", "StartQueries", "VerifyCarrier", "AskCompanies", "RetryLookups", "SendReplies",
             "RepliesFailed", "DeadlineStep", "StartDeadlines")
WHAT = {"APIHandler": "code + submit + callbacks", "StartQueries": "SQS batches", "RetryLookups": "SQS batches",
        "SendReplies": "SQS batches", "DeadlineStep": "share", "StartDeadlines": "share"}
QUOTA_LABELS = {
    "StartExecution": f"StartExecution ({QUOTAS['start_execution_refill_per_second']:,.0f}/s refill)",
    "state transitions": f"state transitions ({QUOTAS['state_transitions_refill_per_second']:,.0f}/s refill)",
    "open executions": f"open executions ({QUOTAS['open_executions']:,.0f} ÷ lifetime)",
    "API Gateway requests": f"API Gateway ({QUOTAS['api_gateway_requests_per_second']:,.0f} req/s)",
    "Lambda concurrency": f"Lambda concurrency ({QUOTAS['lambda_concurrent_executions']:,.0f})",
    "KMS requests": f"KMS symmetric requests ({QUOTAS['kms_symmetric_requests_per_second']:,.0f}/s)",
    "SNS SMS": f"SNS SMS ({QUOTAS['sns_sms_per_second']:,.0f}/s ÷ Publish measured)",
}
HARD = {"open executions": "adjustable (to millions)", "SNS SMS": "adjustable by support case"}
# Issue 14, "Targets": disputes/s under the Step Functions quotas alone, whatever the company does (the same
# StartExecution refill, shared with the deadline starter's 2 starts a minute), and their executions' lifetime.
DISPUTE_QPS_TARGET = STEP_FUNCTIONS_QPS_TARGET


def quota_label(quota: str) -> str:
    """The capacity row's label: the fixed quotas' from QUOTA_LABELS, a table's with its default."""
    return QUOTA_LABELS.get(quota) or f"{quota} ({quota_value(quota):,.0f}/s)"


def quota_keys(results: list[Economics]) -> list[str]:
    """Every quota some result was measured against: the fixed ones, then each table's (WRU, then RRU)."""
    tables = sorted({k for r in results for k in r.capacity if k not in QUOTA_VALUES},
                    key=lambda k: (k.split(" ")[2], k.split(" ")[1] != "WRU"))
    return [*QUOTA_VALUES, *tables]


def num(value: float, digits: int = 2) -> str:
    if value == 0:
        return "0"
    if abs(value - round(value)) < 1e-9 and abs(value) >= 1:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


class Report:
    def __init__(self, out: TextIO, results: list[Economics], disputes: list[Economics] | None = None) -> None:
        self.out = out
        self.results = results
        self.disputes = disputes or []  # measured disputes (bench/disputes.py): tables of their own
        self.accounts = [r for r in results if r.measured.pattern.kind == ACCOUNTS]
        self.cards = [r for r in results if r.measured.pattern.kind == CARDS]
        self.releases = [r for r in results if r.measured.pattern.kind == RELEASES]
        self.by_key = {r.measured.pattern.key: r for r in results}
        self.happy, self.flaky, self.down = self.by_key["answering"], self.by_key["flaky"], self.by_key["down"]
        self.dispute = dispute_estimate(self.happy.deadline)  # disputes and card disputes: not measured

    def line(self, text: str = "") -> None:
        print(text, file=self.out)

    def row(self, label: str, value: Callable[[Economics], str], results: list[Economics] | None = None) -> None:
        columns = self.results if results is None else results
        width = max(18, *(len(r.measured.pattern.title) + 2 for r in self.results))  # the column titles fit
        self.line(f"  {label:<46}" + "".join(f"{value(r):>{width}}" for r in columns))

    def keyed(self, label: str, value: Callable[[Economics, str], str], key: str,
              results: list[Economics] | None = None) -> None:
        self.row(label, lambda r: value(r, key), results)

    def header(self, title: str, results: list[Economics] | None = None) -> None:
        self.line()
        self.row(title, lambda r: r.measured.pattern.title, results)

    # -- sections ------------------------------------------------------------------------------
    def print(self, log_path: str) -> bool:
        self.intro()
        self.per_query()
        self.costs()
        self.delivery_job()
        self.capacity()
        self.dispute_section()
        self.down_partner()
        for card in self.cards:
            self.card_cost(card)
        self.latency()
        self.line()
        self.line("prices (bench/prices.py): " + "; ".join(f"{k} {v}" for k, v in PRICES.items()))
        blocks = [("issue 8", issue8_targets(self.by_key)), ("issue 11", [
            check for card in self.cards for check in card_targets(self.accounts, card)]),
            ("issue 14", issue14_targets(self.results, self.by_key) + dispute_targets(self.disputes)),
            ("issue 15", issue15_targets(self.happy, self.releases, self.dispute))]
        for title, checks in blocks:
            if checks:
                self.line()
                self.line(f"targets ({title})")
                for passed, text in checks:
                    self.line(f"  {'PASS' if passed else 'FAIL'}  {text}")
        self.line()
        self.line(f"(the app's log lines of this run: {log_path})")
        return all(passed for _, checks in blocks for passed, _ in checks)

    def intro(self) -> None:
        m = self.happy.measured
        self.line()
        self.line("一证通查 — the economics and capacity of a query (issues 8, 11, 14 and 15), measured on the local "
                  "stack")
        self.line(f"  {len(m.partners)} companies from the registry ({', '.join(m.partners)}); "
                  f"{m.queries} queries per pattern (the active fixture subscribers)")
        self.line(f"  partners answer as local/fixtures/partners.csv says, at once or by callback after "
                  f"{CALLBACK_DELAY_SECONDS:g} s ('all at once': every one in its 200); the misbehaving one is the "
                  f"registry's last, {self.flaky.measured.failing}")
        self.line(f"  one flaky: 503 twice per lookup, at most {self.flaky.measured.pattern.in_flight} queries in "
                  f"flight; one down: 503 to everything; one silent: 202 and never calls back; one late: calls "
                  f"back after LATE_SECONDS")
        deadlines = ", ".join(f"{r.measured.pattern.title} {r.measured.pattern.deadline_seconds} s"
                              + (f" ({r.measured.pattern.slot_seconds} s slots)"
                                 if r.measured.pattern.slot_seconds != DEADLINE_SLOT_SECONDS else "")
                              for r in self.results)
        self.line(f"  deadlines here: {deadlines} ({production_deadline_seconds() // 3600} h deployed)")
        self.line(f"  deadline slots of {DEADLINE_SLOT_SECONDS} s as deployed (down and silent, which wait for their "
                  f"deadlines: shorter, to keep the run short), the starter run every slot, {DEADLINE_LEAD_SLOTS} "
                  f"slot(s) ahead ({production_lead_slots()} deployed);")
        self.line(f"  a deadline is rounded down to its slot, so each is ≥ {DEADLINE_MIN_SLOTS} slots: the rounding "
                  f"cannot reply before the partners answered")
        self.line("  a query is counted once its reply is committed (status replied/failed, out of the deadline "
                  "index), not when its execution ends")
        for card in self.cards:
            m = card.measured
            resellers = m.groups["转售企业"]
            modes = ", ".join(f"{n} {mode}" for mode, n in sorted(m.modes.items()))
            self.line(f"  cards (SPEC §9): {m.queries} card queries, one per ID number, after one warm-up card query "
                      f"not measured (the {len(m.partners)} operators' secrets cached, as in a warm container); "
                      f"at most {m.pattern.in_flight} in flight")
            self.line(f"    each asks all {len(m.partners)} operators of the operator registry "
                      f"({len(m.partners) - resellers} provincial + {resellers} resellers) through one operator "
                      f"simulator, answering as local/fixtures/operators.csv says: {modes}")
            self.line(f"    the {len(m.flaky)} flaky ones ({', '.join(m.flaky)}) answer 503 twice per lookup, then "
                      f"by callback: every operator answers, the flaky ones after two retries each")
        for release in self.releases:
            m = release.measured
            self.line(f"  releases (SPEC §10.2): {m.queries} recycled-number releases (POST /v1/number-releases, "
                      f"subscribers whose carrier states a `since`), at most {m.pattern.in_flight} in flight, on the "
                      f"query state machine;")
            self.line(f"    each asks all {len(m.partners)} companies to unbind the accounts bound before `since`, "
                      f"the companies answering as in 'all answering'; a column of its own, priced per release, "
                      f"not in the account query goals")

    def per_query(self) -> None:
        self.header("per query")
        self.row("state transitions: own execution", lambda r: _span(r.measured.transitions))
        self.row("  deadline execution, measured (whole run) (a)",
                 lambda r: f"{num(r.deadline.transitions_per_execution)} each")
        self.row("  + their share at 1 query/s (a)", lambda r: num(r.deadline_share))
        self.row("  = per query", lambda r: num(r.transitions))
        self.row("  (local raw share, not used) (b)", lambda r: num(r.local_deadline_share))
        self.row("execution lifetime mean / max (s, on moto)",
                 lambda r: f"{num(r.mean_execution_seconds, 1)} / {num(max(r.measured.execution_seconds), 1)}")
        self.row("reply latency p50 / p95 (s, submit -> commit)",
                 lambda r: f"{num(percentile(r.measured.reply_seconds, 0.5), 1)} / "
                           f"{num(percentile(r.measured.reply_seconds, 0.95), 1)}")
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
        self.table_rows(self.results)
        self.row("failing partner (cards: flaky): requests, run",
                 lambda r: num(r.measured.failing_requests) if r.measured.failing or r.measured.flaky else "-")
        self.row("reply SMS / with it as 暂未返回",
                 lambda r: f"{r.measured.replies} / {r.measured.unanswered_reported}")
        d = self.happy.deadline
        rate = float(ASSUMPTIONS["reference_queries_per_second"])
        self.line("  (a) The deadline executions (deadline.asl.json) are a fixed cost per kind and minute, like the "
                  "delivery job, whatever the traffic: spread over")
        self.line(f"      {rate:g} query/s as the delivery job is. Measured: {num(d.transitions_per_execution)} "
                  f"StateEntered events per deadline execution (mean of the {d.executions} that ran to their end "
                  f"in the whole run,")
        self.line(f"      from their histories; {num(d.steps_per_execution)} DeadlineStep invocations each); deployed "
                  f"{DEADLINE_KINDS} kinds × one a minute = {num(d.transitions_per_minute)} transitions a minute ÷ "
                  f"{60 * rate:g} queries = {num(d.share_per_query, 3)} per query.")
        self.line("  (b) For transparency only: their StateEntered events between the pattern's first submission and "
                  "its last reply ÷ the pattern's few queries:")
        self.line("      " + ", ".join(
            f"{r.measured.pattern.title} {r.measured.deadline_transitions} events of "
            f"{r.measured.deadline_executions} executions in {r.measured.window_seconds:.0f} s ÷ {r.measured.queries}"
            for r in self.results))
        self.line("      The deadline functions (DeadlineStep, StartDeadlines: 'share' above) are still the pattern's "
                  "measured work ÷ its queries (it includes the claims of the queries due).")

    def costs(self) -> None:
        self.header("cost per million queries, USD, excluding SMS")
        components = list(self.happy.cost_per_million)
        for component in components:
            self.keyed(f"  {component}", lambda r, k: f"{r.cost_per_million[k]:,.2f}", component)
        self.row("  total", lambda r: f"{r.total_per_million:,.2f}")
        self.per_kind()
        self.line(f"  Lambda GB-s: the billed durations assumed above (bench/prices.py) at "
                  f"{lambda_memory_mb('ask_companies')} MB (prod, .chalice/config.json); the delivery job's per-minute "
                  f"cost and the deadline executions' transitions (a) spread over "
                  f"{ASSUMPTIONS['reference_queries_per_second']:g} query/s; the deadline functions' as measured (b)")
        extra_ms = 100
        gb = lambda_memory_mb("ask_companies") / 1024
        self.line(f"  sensitivity: every invocation {extra_ms} ms longer on AWS: " + ", ".join(
            f"+${sum(r.per_query.invocations.values()) * extra_ms / 1000 * gb * PRICES['Lambda GB-s'].each * 1e6:.2f}"
            for r in self.results))
        reads = [r.per_query.requests.get("secretsmanager:GetSecretValue", 0.0) * r.measured.queries
                 for r in self.results]
        self.line(f"  Secrets Manager: {', '.join(num(f) for f in reads)} reads per run, cold caches (one container "
                  f"per function; cards: warm, after the warm-up query); a warm container re-reads a secret every "
                  f"300 s")
        self.line("  not in the totals: app logs and EMF metrics, " + ", ".join(
            f"{r.measured.log_bytes / max(1, r.measured.queries) / 1024:.1f} KB" for r in self.results)
            + f" per query ({PRICES['CloudWatch Logs']}); X-Ray; data transfer; monthly per-secret fees")

    def per_kind(self) -> None:
        """Issue 15: a release's and a card dispute's state transitions and cost per million, next to a query's
        and a dispute's."""
        d = self.dispute
        self.line("  per kind (issue 15): state transitions each (own execution + deadline share (a)), USD per million "
                  "excluding SMS")
        rows = [(f"account query ({r.measured.pattern.title}, measured)", r.own_transitions, r.deadline_share,
                 f"${r.total_per_million:,.2f} per million queries") for r in self.accounts if r is self.happy]
        rows += [(f"release ({r.measured.pattern.title}, measured)", r.own_transitions, r.deadline_share,
                  f"${r.total_per_million:,.2f} per million releases") for r in self.releases]
        rows += [(f"dispute (§8, {r.measured.pattern.title}, measured)", r.own_transitions, r.deadline_share,
                  f"${r.total_per_million:,.2f} per million disputes") for r in self.disputes]
        for what, unit in (("dispute (§8", "disputes"), ("card dispute (§10.1", "card disputes")):
            rows.append((f"{what}, from {d.path}, not measured)", d.own_transitions, d.deadline_share,
                         f"${d.step_functions_per_million:,.2f} per million {unit} (Step Functions only)"))
        width = max(len(label) for label, *_ in rows) + 2
        for label, own, share, cost in rows:
            self.line(f"    {label:<{width}}{num(own + share):>5} transitions ({num(own)} + {num(share, 3)})   {cost}")
        self.line(f"    disputes and card disputes: one execution of the dispute state machine each, entering "
                  f"{' -> '.join(d.states)} ({len(d.states)} Task state) when it succeeds; the rest of their cost "
                  f"(API, Lambda, DynamoDB, KMS) is not measured here")

    def delivery_job(self) -> None:
        self.line()
        self.line(f"the delivery job ({PER_MINUTE}), once a minute whatever the traffic, per run:")
        for r in self.results:
            u = r.per_minute
            services = ", ".join(f"{s} {num(n)}" for s, n in sorted(u.by_service().items()) if n)
            self.line(f"  {r.measured.pattern.title:<18} ({r.measured.delivery_runs} runs) "
                      f"{num(sum(u.by_service().values()))} AWS requests ({services}), {num(u.rru)} RRU, "
                      f"{num(u.wru)} WRU: ${sum(u.cost().values()) * 60 * 24 * 30:,.2f} a month")

    def table_rows(self, results: list[Economics]) -> None:
        """Each table's units per item (priced functions; a transaction's units on the table each item is in)."""
        self.row("DynamoDB per table: RRU / WRU", lambda r: "", results)
        for table in sorted({t for r in results for t in r.tables}):
            self.keyed(f"  {table.removeprefix(TABLE_PREFIX)}",
                       lambda r, t: (f"{num(r.tables[t].rru)} / {num(r.tables[t].wru)}" if t in r.tables else "-"),
                       table, results)

    def capacity_rows(self, results: list[Economics]) -> None:
        for quota in quota_keys(results):
            self.keyed(quota_label(quota), _capacity(2 if quota == "StartExecution" else 1), quota, results)

    def capacity(self) -> None:
        self.header("sustainable queries/s per account-region")
        self.capacity_rows(self.results)
        self.row("  execution lifetime used (s, measured mean)", lambda r: num(r.mean_execution_seconds, 2))
        self.row("under the Step Functions quotas alone", lambda r: num(r.step_functions_qps, 2))
        self.row("sustainable (the smallest)", lambda r: num(r.sustainable_qps, 1))
        self.row("binding quota", lambda r: r.binding.split(",")[0].replace("DynamoDB ", "DDB "))
        fixed = self.happy.fixed
        d = self.happy.deadline
        self.line(f"  Step Functions quotas: us-east-1 defaults ({STEP_FUNCTIONS_QUOTAS_URL}).")
        self.line(f"  The deadline machinery's deployed use is taken off each Step Functions quota once, whatever the "
                  f"traffic: {fixed['StartExecution']:.3f} StartExecution/s")
        self.line(f"  (the starter lists the running executions, then starts the slots not running: 1 per kind a "
                  f"minute, 2 a minute; measured here {num(d.starts_per_run)} per starter run),")
        self.line(f"  {fixed['state transitions']:.2f} transitions/s ({num(d.transitions_per_execution)} per deadline "
                  f"execution as measured (a), 2 a minute), {fixed['open executions']:.0f} open executions "
                  f"({production_lead_slots()} slots ahead + the current, 2 kinds).")
        self.line(f"  So the {QUOTAS['start_execution_refill_per_second']:,.0f}/s StartExecution refill is shared with "
                  f"those 2 starts a minute: StartExecution-bound at 300 queries/s within rounding "
                  f"(target ≥ {STEP_FUNCTIONS_QPS_TARGET:g}). Lambda concurrency: Σ invocations × billed")
        self.line("  durations assumed (bench/prices.py) per query, the deadline functions left out; DynamoDB: each "
                  "table its own quota (on-demand, per table), '-' where a pattern")
        self.line("  uses no unit of that kind on that table; SMS: SNS Publish requests measured per query (a code and "
                  "a reply); KMS: every Decrypt and GenerateDataKey")
        self.line(f"  share one symmetric request quota ({KMS_QUOTAS_URL}: "
                  f"{QUOTAS['kms_symmetric_requests_per_second']:,.0f}/s in us-east-1, us-west-2, eu-west-1; 20,000 or "
                  f"10,000 elsewhere; adjustable).")
        self.line("  Little's law: open executions = start rate × lifetime; lifetimes are measured on moto "
                  "(in-process, two shared cores), seconds whatever the partners do.")
        self.raises()

    def dispute_section(self) -> None:
        """Disputes (SPEC §8) measured as the queries are: per dispute, then disputes/s under every quota."""
        ds = self.disputes
        if not ds:
            return
        self.header("per dispute (SPEC §8), measured (bench/disputes.py)", ds)
        self.row("state transitions: own execution", lambda r: _span(r.measured.transitions), ds)
        self.row("  + the deadline executions' share (a)", lambda r: num(r.deadline_share), ds)
        self.row("  = per dispute", lambda r: num(r.transitions), ds)
        self.row("execution lifetime mean / max (s, on moto)",
                 lambda r: f"{num(r.mean_execution_seconds, 1)} / {num(max(r.measured.execution_seconds), 1)}", ds)
        self.row("outcome SMS latency p50 / p95 (s, submit -> commit)",
                 lambda r: f"{num(percentile(r.measured.reply_seconds, 0.5), 1)} / "
                           f"{num(percentile(r.measured.reply_seconds, 0.95), 1)}", ds)
        self.row("Lambda invocations × ms billed (moto median)", lambda r: num(sum(r.per_query.invocations.values())),
                 ds)
        for function in ("APIHandler", "ForwardDispute", "RetryLookups", "SendReplies", "DeadlineStep",
                         "StartDeadlines"):
            label = f"  {function}" + (" (code + dispute + callbacks)" if function == API_HANDLER else "")
            self.keyed(label, _invocations, function, ds)
        self.row("API Gateway requests", lambda r: num(r.per_query.api_requests), ds)
        self.row("KMS requests", lambda r: num(r.kms_per_query), ds)
        self.row("SMS sent (SNS Publish): code, submitted, outcome", lambda r: num(r.sms_per_query), ds)
        self.row("DynamoDB reads: requests / RRU", lambda r: f"{num(r.per_query.reads)} / {num(r.per_query.rru)}", ds)
        self.row("DynamoDB writes: requests / WRU", lambda r: f"{num(r.per_query.writes)} / {num(r.per_query.wru)}",
                 ds)
        self.table_rows(ds)
        self.row("outcome SMS / of them expired", lambda r: f"{r.measured.replies} / {r.measured.unanswered_reported}",
                 ds)
        self.row("cost per million disputes, USD, excl. SMS", lambda r: f"{r.total_per_million:,.2f}", ds)
        self.header("sustainable disputes/s per account-region", ds)
        self.capacity_rows(ds)
        self.row("  execution lifetime used (s, measured mean)", lambda r: num(r.mean_execution_seconds, 2), ds)
        self.row("under the Step Functions quotas alone", lambda r: num(r.step_functions_qps, 2), ds)
        self.row("sustainable (the smallest)", lambda r: num(r.sustainable_qps, 1), ds)
        self.row("binding quota", lambda r: r.binding.replace("DynamoDB ", "DDB "), ds)
        titles = ", ".join(f"{r.measured.pattern.title} {r.measured.queries}" for r in ds)
        self.line(f"  Disputes measured ({titles}): each after an account query that listed the company's accounts "
                  "(not measured); the company answers the dispute at once (its 200),")
        self.line(f"  or never (202, silent: the expired SMS from the deadline executions at its "
                  f"{ds[-1].measured.pattern.deadline_seconds} s deadline here, 15 days deployed). The execution "
                  f"enters Forward and ends once the company is asked, whatever the company does.")
        self.line("  Each column is disputes alone under each quota: queries and disputes share every quota, so "
                  "their rates add up (StartExecution: queries/s + disputes/s ≤ 300).")

    def raises(self) -> None:
        goals = [(ACCOUNT_QPS_GOAL, "account", self.accounts), (CARD_QPS_GOAL, "card", self.cards)]
        self.line()
        self.line("quota raises needed (the worst pattern of each kind; defaults in bench/prices.py):")
        for goal, kind, results in goals:
            if not results:
                continue
            needs = []
            for quota in quota_keys(results):
                worst = max(results, key=_raise_key(quota, goal))
                needed = worst.raise_for(quota, goal)
                if needed > quota_value(quota):
                    needs.append(f"{quota} {num(quota_value(quota))} -> {num(needed, 0)} "
                                 f"({worst.measured.pattern.title}; {HARD.get(quota, 'adjustable')})")
            self.line(f"  {goal:,} {kind} queries/s: " + ("; ".join(needs) if needs else "none"))

    def latency(self) -> None:
        latency = summarise_latency(self.happy.measured.timings)
        if {"code", "submit", "status"} <= latency.keys():
            self.line()
            self.line("median in-process latency on moto, all answering (ms): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in latency.items())
                      + f"; ratios submit/code {latency['submit'] / latency['code']:.2f}, "
                        f"status/code {latency['status'] / latency['code']:.2f}")
        at_once = self.by_key.get("immediate")
        if at_once is not None:
            cards = "; ".join(f"{c.measured.pattern.title} {statistics.median(c.measured.reply_seconds):.2f} s"
                              for c in self.cards + self.releases if c.measured.reply_seconds)
            self.line(f"reply latency p50 (submission answered -> reply committed): every partner at once "
                      f"{statistics.median(at_once.measured.reply_seconds):.2f} s; {cards}")

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

    def card_cost(self, card: Economics) -> None:
        """Where a card query's money goes: per-operator work that costs no state transition."""
        from chalicelib.storage.models import Lookup, QueryRecord

        happy = self.happy
        m = card.measured
        ratio = card.total_per_million / happy.total_per_million
        self.line()
        self.line(f"the card query's cost (issue 11): ${card.total_per_million:,.2f} per million against "
                  f"${happy.total_per_million:,.2f} for an account query ({ratio:.1f}×), with "
                  f"{_span(m.transitions)} state transitions against {_span(happy.measured.transitions)}.")
        self.line(f"  Step Functions is ${card.cost_per_million['Step Functions']:,.2f} of it. The rest grows with "
                  f"the number of operators, through per-operator work that is no transition:")
        wru = PRICES["DynamoDB writes"].each * PER_MILLION
        rru = PRICES["DynamoDB reads"].each * PER_MILLION
        per_callback = (PRICES["API Gateway"].each + PRICES["Lambda requests"].each
                        + billed_ms(API_HANDLER) / 1000 * lambda_memory_mb(CONFIG_NAMES[API_HANDLER]) / 1024
                        * PRICES["Lambda GB-s"].each) * PER_MILLION
        for r, route in ((card, "operator callback"), (happy, "callback")):
            callbacks = sum(n for (f, name), n in r.measured.meter.api.items()
                            if name == route and f not in NOT_PRICED) / max(1, r.measured.queries)
            self.line(f"  {r.measured.pattern.title + ':':<19}callbacks: {num(callbacks)} per query, each one API "
                      f"Gateway request and one {billed_ms(API_HANDLER)} ms invocation: "
                      f"${callbacks * per_callback:,.2f} per million")
        for r in (card, happy):
            record = _table(r, QueryRecord.Meta.table_name)
            largest = _largest(r, QueryRecord.Meta.table_name)
            self.line(f"  {r.measured.pattern.title + ':':<19}the query record: {num(record.writes)} writes per query, "
                      f"{num(record.wru)} WRU ({num(record.wru / max(1.0, record.writes), 1)} per write; the record "
                      f"grows to {largest:,} bytes): ${record.wru * wru:,.2f} per million")
        for r in (card, happy):
            lookup = _table(r, Lookup.Meta.table_name)
            self.line(f"  {r.measured.pattern.title + ':':<19}Lookup items: {num(lookup.writes)} writes / "
                      f"{num(lookup.wru)} WRU, {num(lookup.reads)} reads / {num(lookup.rru)} RRU per query: "
                      f"${lookup.wru * wru + lookup.rru * rru:,.2f} per million")
        record = _table(card, QueryRecord.Meta.table_name)
        largest = _largest(card, QueryRecord.Meta.table_name)
        share = record.wru * wru / card.total_per_million
        saved = (record.wru - record.writes) * wru
        self.line("  Structural: every operator's result is written into the one query record (results map), and "
                  "DynamoDB bills a write by the larger of the old and new item,")
        self.line(f"  so each callback pays again for every result stored before it ({largest:,} bytes once all "
                  f"{len(m.partners)} are in: {_write_units(largest)} WRU a write):")
        self.line(f"  {num(record.wru)} WRU per query where {num(record.writes)} one-unit writes would do, "
                  f"{share:.0%} of the card query's cost.")
        self.line(f"  Results kept on their Lookup items with only a count on the record would save up to "
                  f"{num(record.wru - record.writes)} WRU, ${saved:,.2f} per million (less the reads the reply step "
                  f"would then make);")
        self.line("  the callbacks themselves (one API Gateway request and one invocation per operator) are the "
                  "protocol's (SPEC §9): only an operator that answers at once (200) avoids them.")


def _capacity(digits: int) -> Callable[[Economics, str], str]:
    return lambda r, k: num(r.capacity[k], digits) if k in r.capacity else "-"


def _raise_key(quota: str, goal: float) -> Callable[[Economics], float]:
    return lambda r: r.raise_for(quota, goal)


def _sf_binding(r: Economics) -> str:
    return min(STEP_FUNCTIONS_QUOTAS, key=lambda k: r.capacity[k])


def _span(values: list[int]) -> str:
    return str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _invocations(r: Economics, function: str) -> str:
    count = r.per_query.invocations.get(function, 0.0)
    measured = median_ms(r.measured.meter.durations.get(function, []))
    return f"{num(count)} × {billed_ms(function, r.measured.pattern.kind)} ({measured})" if count else "0"


def _table(r: Economics, table: str) -> Capacity:
    """One table's priced requests and units, per query."""
    total = Capacity()
    for (function, name, _), units in r.measured.meter.tables.items():
        if name == table and function not in NOT_PRICED:
            total.add(units)
    n = max(1, r.measured.queries)
    return Capacity(total.rru / n, total.wru / n, total.reads / n, total.writes / n)


def _largest(r: Economics, table: str) -> int:
    """The largest item of this table a priced write left or replaced (bytes)."""
    return max((size for (function, name, _), size in r.measured.meter.largest.items()
                if name == table and function not in NOT_PRICED), default=0)


def _write_units(size: int) -> int:
    return -(-size // WRITE_UNIT_BYTES)


def card_targets(accounts: list[Economics], card: Economics) -> list[tuple[bool, str]]:
    m = card.measured
    fewest = min(t for r in accounts for t in r.measured.transitions)
    companies = len(accounts[0].measured.partners)
    checks = [(max(m.transitions) <= fewest,
               f"{len(m.partners)} operators cost no more state transitions than {companies} companies: "
               f"{_span(m.transitions)} per card query, {fewest} per account query")]
    answered = m.replies == m.queries and m.unanswered_reported == 0 and not m.circuits_opened
    checks.append((answered, f"one reply per card query ({m.replies} of {m.queries}), every operator answered "
                             f"(the flaky ones after their retries: {m.unanswered_reported} with 暂未返回, circuits "
                             f"opened: {', '.join(m.circuits_opened) or 'none'})"))
    return checks


def issue8_targets(by_key: dict[str, Economics]) -> list[tuple[bool, str]]:
    checks: list[tuple[bool, str]] = []
    for key in ("answering", "flaky", "down"):
        r = by_key[key]
        kms = r.per_query.by_service()["kms"]
        checks.append((kms <= KMS_TARGET, f"KMS requests per query ≤ {KMS_TARGET}, {r.measured.pattern.title}: "
                                          f"{num(kms)}"))
    m = by_key["down"].measured
    bounded = m.circuit_open and 0 < m.delivery_runs and m.probes <= m.delivery_runs
    checks.append((bounded, f"down partner ≤ its requests until the circuit opened ({m.initial_requests}) + one probe "
                            f"a minute ({m.delivery_runs}): {m.failing_requests}"))
    return checks


def issue14_targets(results: list[Economics], by_key: dict[str, Economics]) -> list[tuple[bool, str]]:
    checks: list[tuple[bool, str]] = []
    checks.append((all(r.transitions <= TRANSITIONS_TARGET for r in results),
                   f"state transitions per query ≤ {TRANSITIONS_TARGET}, the deadline executions' share (a, at "
                   f"{ASSUMPTIONS['reference_queries_per_second']:g} query/s) included: "
                   + ", ".join(f"{r.measured.pattern.title} {num(r.transitions)}" for r in results)))
    checks.append((all(max(r.measured.execution_seconds) <= LIFETIME_TARGET_SECONDS for r in results),
                   f"execution lifetime ≤ {LIFETIME_TARGET_SECONDS:g} s in every pattern (longest): "
                   + ", ".join(f"{r.measured.pattern.title} {max(r.measured.execution_seconds):.1f} s"
                               for r in results)))
    accounts = [r for r in results if r.measured.pattern.kind == ACCOUNTS]
    checks.append((all(r.step_functions_qps >= STEP_FUNCTIONS_QPS_TARGET for r in accounts),
                   f"account queries/s under the Step Functions quotas ≥ {STEP_FUNCTIONS_QPS_TARGET:g} (300, the "
                   f"{QUOTAS['start_execution_refill_per_second']:,.0f}/s StartExecution refill shared with the "
                   f"deadline starter's 2 starts a minute) in every pattern: " + ", ".join(
                       f"{r.measured.pattern.title} {r.step_functions_qps:.2f} "
                       f"({_sf_binding(r)})" for r in accounts)))
    happy_cost = by_key["answering"].total_per_million
    checks.append((happy_cost <= HAPPY_COST_TARGET,
                   f"cost per million ≤ ${HAPPY_COST_TARGET:.0f}, all answering: ${happy_cost:,.2f}"))
    ceiling = DEGRADED_COST_FACTOR * happy_cost
    for key in FAULTS:
        r = by_key[key]
        cost = r.total_per_million
        checks.append((cost <= ceiling, f"cost per million ≤ {DEGRADED_COST_FACTOR:g}× all answering "
                                        f"(${ceiling:,.2f}), {r.measured.pattern.title}: ${cost:,.2f}"))
    at_once = by_key["immediate"].measured.reply_seconds
    p50 = statistics.median(at_once) if at_once else float("inf")
    checks.append((p50 <= REPLY_P50_TARGET_SECONDS, f"reply latency p50 ≤ {REPLY_P50_TARGET_SECONDS:g} s, every "
                                                    f"partner answering at once: {p50:.2f} s"))
    replied = all(r.measured.replies == r.measured.queries for r in accounts)
    unanswered = {key: by_key[key].measured.unanswered_reported for key in FAULTS}
    reported = (unanswered["down"] == by_key["down"].measured.queries
                and unanswered["silent"] == by_key["silent"].measured.queries
                and unanswered["flaky"] == 0 and unanswered["late"] == 0)
    checks.append((replied and reported,
                   "one reply per query in every pattern (" + ", ".join(
                       f"{r.measured.replies}/{r.measured.queries}" for r in accounts)
                   + "); the down and silent partners 暂未返回 in each, the flaky and late ones answered in each "
                   + f"(暂未返回: {', '.join(f'{k} {v}' for k, v in unanswered.items())})"))
    return checks


def dispute_targets(disputes: list[Economics]) -> list[tuple[bool, str]]:
    """Issue 14: disputes ≥ 300/s under the Step Functions quotas whatever the company does, their executions
    ending in seconds, one outcome SMS each (the silent company's: the expired SMS)."""
    if not disputes:
        return []
    checks = [(all(r.step_functions_qps >= DISPUTE_QPS_TARGET for r in disputes),
               f"disputes/s under the Step Functions quotas ≥ {DISPUTE_QPS_TARGET:g} (300, the StartExecution "
               f"refill shared with the deadline starter), whatever the company does: " + ", ".join(
                   f"{r.measured.pattern.title} {r.step_functions_qps:.2f} ({_sf_binding(r)})" for r in disputes)),
              (all(max(r.measured.execution_seconds) <= LIFETIME_TARGET_SECONDS for r in disputes),
               f"dispute execution lifetime ≤ {LIFETIME_TARGET_SECONDS:g} s (longest): " + ", ".join(
                   f"{r.measured.pattern.title} {max(r.measured.execution_seconds):.1f} s" for r in disputes))]
    silent = [r for r in disputes if r.measured.pattern.company_mode == "silent"]
    answered = [r for r in disputes if r.measured.pattern.company_mode != "silent"]
    one_each = all(r.measured.replies == r.measured.queries and not r.measured.notes for r in disputes)
    expired = (all(r.measured.unanswered_reported == r.measured.queries for r in silent)
               and all(r.measured.unanswered_reported == 0 for r in answered))
    checks.append((one_each and expired, "one outcome SMS per dispute (" + ", ".join(
        f"{r.measured.replies}/{r.measured.queries}" for r in disputes)
        + "); the silent company's all expired, the other's none (" + ", ".join(
            f"{r.measured.pattern.title} {r.measured.unanswered_reported} expired" for r in disputes)
        + ")" + "".join(f"; {note}" for r in disputes for note in r.measured.notes)))
    return checks


def issue15_targets(query: Economics, releases: list[Economics], dispute: AslEstimate) -> list[tuple[bool, str]]:
    """A release costs no more state transitions than a query (≤ 4, its deadline share included); a card dispute
    no more than a dispute (the same dispute state machine: read from its definition, not measured)."""
    checks: list[tuple[bool, str]] = []
    for r in releases:
        m = r.measured
        checks.append((r.transitions <= min(TRANSITIONS_TARGET, query.transitions),
                       f"state transitions per release ≤ {TRANSITIONS_TARGET} and ≤ a query's "
                       f"({query.measured.pattern.title} {num(query.transitions)}), the deadline executions' share "
                       f"(a) included: {num(r.transitions)} ({_span(m.transitions)} own + "
                       f"{num(r.deadline_share, 3)}); ${r.total_per_million:,.2f} per million releases"))
        answered = m.replies == m.queries and m.unanswered_reported == 0 and not m.circuits_opened and not m.notes
        checks.append((answered, f"one result SMS per release ({m.replies} of {m.queries}), every company answered "
                                 f"({m.unanswered_reported} with 暂未返回, circuits opened: "
                                 f"{', '.join(m.circuits_opened) or 'none'}"
                                 + "".join(f"; {note}" for note in m.notes) + ")"))
    card_dispute = dispute  # the one dispute state machine runs both kinds (chalicelib/disputes/intake.py)
    checks.append((card_dispute.transitions <= dispute.transitions,
                   f"state transitions per card dispute ≤ a dispute's, from {dispute.path} (not measured: "
                   f"{' -> '.join(dispute.states)}), the deadline share (a) included: {num(card_dispute.transitions)} "
                   f"≤ {num(dispute.transitions)}; ${card_dispute.step_functions_per_million:,.2f} per million in "
                   f"Step Functions"))
    return checks

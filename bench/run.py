"""`make bench`: the economics and capacity of a query (issues 8, 11, 14, 15), measured on the local stack.

Six partner patterns for internet-account queries, each on a fresh stack (moto in-process executing
stepfunctions/query.asl.json and deadline.asl.json, the app's functions in-process, the carrier and
partner simulators over HTTP), each with every active fixture subscriber querying once: all partners
answering as the fixture says; every partner answering at once (the latency reference); the registry's
last partner flaky (503 twice per lookup); the same partner down (503 to everything) for the whole
deadline; silent (202, never calls back: the deadline replies); late (calls back after LATE_SECONDS,
long after the query's execution ended). Then phone-card queries (SPEC §9) on a fresh stack:
CARD_QUERIES subscribers with distinct ID numbers ask the 132 operators of the operator registry,
each answering as local/fixtures/operators.csv says (two of them flaky), after one warm-up card query
that is not measured. Then recycled-number releases (SPEC §10.2) on a fresh stack: RELEASE_COUNT
subscribers (their carrier states a `since`) each ask every company to unbind the accounts bound before
it, on the query state machine, the companies answering as in 'all answering'. Then disputes (SPEC §8,
bench/disputes.py), two fresh stacks: DISPUTE_COUNT subscribers each dispute a company their reply listed,
the company answering at once, or silent (the deadline executions send the expired SMS). For each: state
transitions, Lambda invocations, AWS requests by service, DynamoDB request units, what the failing
partner received, the cost per million queries excluding SMS (prices: bench/prices.py), reply
latencies, execution lifetimes, and the queries/s one account-region sustains under each quota on the
path (the binding one named), disputes/s likewise; then the targets of issues 8, 11, 14 and 15, PASS or
FAIL. Then the SMS-channel counter (issue 17 item 4, bench/sms_channel.py) on a fresh moto of its own:
code requests at 50 %, 90 % and 110 % of its configured rate, the share refused at each, and its targets;
last, the cold start
(`import app` against `import boto3`, bench/cold_start.py) (exit status 1 if any target fails). The
app's own log lines go to a file, not to the report.
"""
from __future__ import annotations

import csv
import os
import sys
import tempfile
import time

from bench.prices import ROOT

WORKDIR = tempfile.mkdtemp(prefix="yztc-bench-")
PROBE_MINUTES = 30  # simulated minutes of the delivery job while the down partner's lookups wait
# Every deadline is at least 3 slots (bench.patterns.DEADLINE_MIN_SLOTS): rounded down to its slot, it cannot
# come before the partners answered. The patterns that wait for their deadlines run on shorter slots.
SHORT_SLOT_SECONDS = 30  # down and silent only (60 s deployed)
# The circuit opens after 30 s without an answer (+ the traffic settling), then the minutes above (~1.8 s each
# on moto): ≥ 120 s even rounded down to its slot.
DOWN_DEADLINE_SECONDS = 150
SILENT_DEADLINE_SECONDS = 90  # 3 slots: the other partners answered long before (≥ 60 s after the submission)
LATE_SECONDS = 3  # the late partner's callback delay (local/simulators.py reads LATE_SECONDS)
CARD_QUERIES = 5  # 132 operators on moto in-process: ~10 s a card query on two shared cores
CARD_DEADLINE_SECONDS = 180  # never the reason a card query ends: it ends when every operator answered
RELEASE_COUNT = 4  # a release asks the same companies as a query: a few are enough for its per-release figures
# Two codes per subscriber (its query's, its dispute's) from one client: at most 10 stay under the 20 code requests
# an hour a client has before it must solve a challenge (CODE_FREE_PER_CLIENT).
DISPUTE_COUNT = 8


def active_subscribers() -> list[dict[str, str]]:
    with open(os.path.join(ROOT, "local", "fixtures", "subscribers.csv"), encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh) if row["status"] == "active"]


def main() -> int:
    report = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    log_path = os.path.join(WORKDIR, "app-output.log")
    log = open(log_path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 (for the whole run)
    os.dup2(log.fileno(), 1)
    sys.stdout = log  # Powertools' log lines and metrics (EMF) print here

    from local.stack import StackOptions, configure_environment

    configure_environment(StackOptions(workdir=WORKDIR))  # before chalicelib is imported
    os.environ.pop("AWS_ENDPOINT_URL", None)
    os.environ.pop("PARTNER_MODES", None)
    os.environ["LATE_SECONDS"] = str(LATE_SECONDS)

    from bench.cold_start import measure as measure_cold_start
    from bench.cold_start import print_section as print_cold_start
    from bench.disputes import measure_disputes
    from bench.economics import deadline_execution_figures, economics
    from bench.patterns import CARDS, DISPUTES, RELEASES, Pattern, measure
    from bench.report import Report
    from bench.sms_channel import measure as measure_sms_channel
    from bench.sms_channel import print_section as print_sms_channel

    patterns = [
        Pattern("answering", "all answering", in_flight=2),
        Pattern("immediate", "all at once", all_immediate=True, in_flight=1),
        # At most two queries in flight: with three lookups overlapping, a partner failing two requests in
        # three reaches 5 consecutive failures and its circuit opens; it is then "down", not "flaky".
        Pattern("flaky", "one flaky", failing_mode="flaky", in_flight=2),
        Pattern("down", "one down", failing_mode="down", deadline_seconds=DOWN_DEADLINE_SECONDS,
                slot_seconds=SHORT_SLOT_SECONDS, in_flight=0, probe_minutes=PROBE_MINUTES),
        Pattern("silent", "one silent", failing_mode="silent", deadline_seconds=SILENT_DEADLINE_SECONDS,
                slot_seconds=SHORT_SLOT_SECONDS, in_flight=0),
        Pattern("late", "one late", failing_mode="late", in_flight=0),
        # One query in flight: the flaky operators' 503s never reach 5 in a row, so their circuits stay closed.
        Pattern("cards", "cards, all answer", kind=CARDS, deadline_seconds=CARD_DEADLINE_SECONDS, in_flight=1,
                max_queries=CARD_QUERIES, warm_up=True),
        # The release deadline (RELEASE_DEADLINE_SECONDS) as the query's: every company answers long before it.
        Pattern("releases", "releases, all answer", kind=RELEASES, in_flight=2,
                max_queries=RELEASE_COUNT),
    ]
    dispute_patterns = [
        Pattern("dispute-answered", "dispute, at once", kind=DISPUTES, all_immediate=True,
                company_mode="immediate", max_queries=DISPUTE_COUNT),
        # The company never answers: the expired SMS at the deadline, sent by the deadline executions.
        Pattern("dispute-silent", "dispute, silent", kind=DISPUTES, all_immediate=True, company_mode="silent",
                deadline_seconds=SILENT_DEADLINE_SECONDS, slot_seconds=SHORT_SLOT_SECONDS,
                max_queries=DISPUTE_COUNT),
    ]
    subscribers = active_subscribers()
    measured = []
    for pattern in patterns:
        started = time.monotonic()
        measured.append(measure(pattern, WORKDIR, subscribers, log))
        print(f"[bench] {pattern.title}: {measured[-1].queries} queries measured in "
              f"{time.monotonic() - started:.0f} s",
              file=report, flush=True)
    disputes = []
    for pattern in dispute_patterns:
        started = time.monotonic()
        disputes.append(measure_disputes(pattern, WORKDIR, subscribers, log))
        print(f"[bench] {pattern.title}: {disputes[-1].queries} disputes measured in "
              f"{time.monotonic() - started:.0f} s", file=report, flush=True)
    started = time.monotonic()
    channel = measure_sms_channel()  # its own mock_aws, after the patterns' stacks
    print(f"[bench] SMS channel: {sum(len(load.sent) for load in channel.loads)} code requests measured in "
          f"{time.monotonic() - started:.0f} s", file=report, flush=True)
    # The deadline executions are a fixed cost per kind and minute: measured once, from every pattern's.
    deadline = deadline_execution_figures(measured + disputes)
    results = [economics(m, deadline) for m in measured]
    passed = Report(report, results, [economics(m, deadline) for m in disputes]).print(log_path)
    sms_passed = print_sms_channel(report, channel)
    cold_passed = print_cold_start(report, measure_cold_start())  # last: nothing else runs beside it
    return 0 if passed and sms_passed and cold_passed else 1


if __name__ == "__main__":
    sys.exit(main())

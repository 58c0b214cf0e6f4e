"""`make bench`: what a query costs, measured on the local stack (moto in-process).

Reports, for queries by fixture subscribers with all eight partners answering:
- AWS requests per accepted query on the submit path, and per workflow step;
- Step Functions state transitions per eight-company query (what AWS bills);
- median in-process latency of the three citizen-facing calls, side by side, as ratios
  (absolute times on moto say little about AWS; the ratios show where the work is).
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter

WORKDIR = tempfile.mkdtemp(prefix="yztc-bench-")


def main() -> int:
    from local.stack import StackOptions, configure_environment

    options = StackOptions(workdir=WORKDIR, api_port=18000, deadline_seconds=60, pump=False,
                           partner_modes=",".join(f"{c}=immediate" for c in
                                                  ["tencent", "alibaba", "alipay", "baidu", "kuaishou", "douyin",
                                                   "jd", "meituan"]))
    configure_environment(options)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    from moto import mock_aws

    from local.lambdas import acting_as
    from local.recording import recording
    from local.stack import LocalStack

    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
        stack = LocalStack(options).start()
        from chalice.test import Client

        project = os.path.join(WORKDIR, "project", ".chalice")
        os.makedirs(project)
        with open(os.path.join(project, "config.json"), "w") as fh:
            json.dump({"version": "2.0", "app_name": "yizhengtongcha", "stages": {"dev": {}}}, fh)
        with open(os.path.join(os.path.dirname(__file__), "..", "local", "fixtures", "subscribers.csv")) as fh:
            subscribers = [r for r in csv.DictReader(fh) if r["status"] == "active"]
        timings: dict[str, list[float]] = {"code": [], "submit": [], "status": []}
        submit_requests: list[Counter[str]] = []
        transitions: list[int] = []
        workflow = Counter[tuple[str, str]]()
        import boto3

        sfn = boto3.client("stepfunctions")
        with Client(stack.app_module.app, project_dir=os.path.dirname(project)) as api, recording() as rec:
            for row in subscribers:
                phone, id_last6 = row["phone"], row["id_last6"]
                started = time.perf_counter()
                with acting_as("APIHandler"):
                    api.http.post("/v1/verification-codes", headers={"Content-Type": "application/json"},
                                  body=json.dumps({"phone": phone}))
                timings["code"].append(time.perf_counter() - started)
                code = stack.read_outbox()[-1]["message"].split("验证码为")[1][:6]
                before = Counter({op: n for (f, op), n in rec.requests.items() if f == "APIHandler"})
                started = time.perf_counter()
                with acting_as("APIHandler"):
                    response = api.http.post("/v1/queries", headers={"Content-Type": "application/json"},
                                             body=json.dumps({"phone": phone, "id_last6": id_last6, "code": code}))
                timings["submit"].append(time.perf_counter() - started)
                after = Counter({op: n for (f, op), n in rec.requests.items() if f == "APIHandler"})
                submit_requests.append(after - before)
                query_id = json.loads(response.body)["query_id"]
                stack.pump_once()
                arn = stack.env["STATE_MACHINE_ARN"].replace(":stateMachine:", ":execution:") + ":" + query_id
                deadline = time.monotonic() + 60
                while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING":
                    if time.monotonic() > deadline:
                        raise RuntimeError("execution did not finish")
                    time.sleep(0.05)
                events = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
                transitions.append(sum(1 for e in events if e["type"].endswith("StateEntered")))
                started = time.perf_counter()
                with acting_as("APIHandler"):
                    api.http.get(f"/v1/queries/{query_id}")
                timings["status"].append(time.perf_counter() - started)
            workflow.update({k: v for k, v in rec.requests.items() if k[0] != "APIHandler"})
        stack.stop()

    n = len(subscribers)
    print(f"queries: {n} (fixture subscribers, 8 partners answering at once)")
    typical = Counter(submit_requests[-1])
    print(f"AWS requests on the submit path (POST /v1/queries), steady state: {sum(typical.values())}")
    for op, count in sorted(typical.items()):
        print(f"  {count} x {op}")
    print(f"  (first request of a container adds secretsmanager:GetSecretValue for the pepper, cached "
          f"300 s; first submit here: {sum(submit_requests[0].values())})")
    print("AWS requests per query, by workflow function:")
    for function in ("StartQueries", "VerifyCarrier", "RequestLookup", "SendReply"):
        ops = {op: c for (f, op), c in workflow.items() if f == function}
        total = sum(ops.values())
        print(f"  {function}: {total / n:.1f} per query  " +
              ", ".join(f"{op} {c / n:.1f}" for op, c in sorted(ops.items())))
    print(f"state transitions per 8-company query: {statistics.median(transitions):.0f} "
          f"(min {min(transitions)}, max {max(transitions)})")
    medians = {k: statistics.median(v) * 1000 for k, v in timings.items()}
    print("median in-process latency on moto (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in medians.items()))
    print(f"ratios: submit/code {medians['submit'] / medians['code']:.2f}, "
          f"status/code {medians['status'] / medians['code']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

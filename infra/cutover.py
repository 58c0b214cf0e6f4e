"""Drain the task-token version's executions when this version deploys (README: Deploying, cut-over).

Executions started before issue 14 wait on a task token nothing releases any more, and their last steps
(SendReply, NotifyDispute) are gone. For each RUNNING execution of the query and dispute state machines:
put its record into the deadline index (so the deadline executions answer it at its deadline), claim its
reply at once if every partner already answered, then stop the execution.

Only executions started before `--before` (the time the stack update replaced the state machines) are
drained: the script runs right after the update, while the new version already starts executions, and
those must run to their end (stopping one mid fan-out would leave its partners unasked).

    python -m infra.cutover --stage prod --before 2026-12-01T18:30:05Z [--dry-run]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import Any


def instant(text: str) -> dt.datetime:
    """An ISO 8601 time with its offset (`Z` or `+08:00`): a time without one would be read in whatever
    zone the operator's shell is in, and an hour's error either way stops new executions or strands old ones."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the time zone (Z or +08:00): {text!r}")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True)
    # Required, no default: "now" would stop the executions the new version started since the update.
    parser.add_argument("--before", required=True, type=instant,
                        help="drain only executions started before this time: when the stack update replaced "
                             "the state machines (README: Deploying)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    from infra.generate import stage_env

    os.environ.update({k: v for k, v in stage_env(args.stage).items() if k not in os.environ})
    import boto3

    from chalicelib.contracts import ReplyType

    sfn = boto3.client("stepfunctions")
    account = boto3.client("sts").get_caller_identity()["Account"]
    region = sfn.meta.region_name
    machines = {kind: f"arn:aws:states:{region}:{account}:stateMachine:{os.environ[variable]}"
                for kind, variable in ((ReplyType.QUERY, "STATE_MACHINE_NAME"),
                                       (ReplyType.DISPUTE, "DISPUTE_STATE_MACHINE_NAME"))}
    drained = drain(sfn, machines, before=args.before, dry_run=args.dry_run)
    print(f"drained {drained} execution(s)")
    return 0


def drain(sfn: Any, machines: dict[Any, str], *, before: dt.datetime, dry_run: bool = False) -> int:
    """Drain every RUNNING execution of these machines (kind -> ARN) started before `before`; how many were
    drained. Later ones are the new version's: left running."""
    from chalicelib.contracts import ReplyType
    from chalicelib.engine.deadlines import Deadlines
    from chalicelib.partners.lookups import stored_results
    from chalicelib.storage.models import Dispute, QueryRecord

    deadlines = Deadlines()
    drained = 0
    for kind, machine in machines.items():
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=machine, statusFilter="RUNNING"):
            for execution in page["executions"]:
                if execution["startDate"] >= before:
                    continue  # started by the new version
                model: Any = QueryRecord if kind is ReplyType.QUERY else Dispute
                try:
                    record = model.get(execution["name"], consistent_read=True)
                except model.DoesNotExist:
                    continue
                if dry_run:
                    print(f"would drain {execution['name']}")
                    continue
                closed = record.status in ("replied", "failed", "resolved", "expired")
                if record.deadline_slot is None and not closed:
                    entry = deadlines.entry(kind, execution["name"], int(record.deadline_at))
                    record.update(actions=[model.deadline_shard.set(entry["deadline_shard"]),
                                           model.deadline_slot.set(entry["deadline_slot"])])
                if isinstance(record, QueryRecord):
                    asked = set(record.asked or ())
                    complete = bool(asked) and asked <= stored_results(record).keys()
                else:
                    complete = record.state == "settled"
                # Stopped first: its old reply step can no longer run while the new route claims the reply.
                sfn.stop_execution(executionArn=execution["executionArn"], cause="cut-over to short executions")
                if complete and not closed:
                    deadlines.claim(kind, record)  # every answer is in: the reply now, not at the deadline
                drained += 1
    return drained


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

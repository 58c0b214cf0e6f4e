"""Disputes (SPEC §8): "this account is not mine", forwarded to the company, tracked, answered by SMS."""

# The metrics the dispute code emits (chalicelib/telemetry.py format); infra/disputes.py charts and alarms on them.
DISPUTE_METRICS = ("DisputeSubmitted", "DisputeForwarded", "DisputeDeferred", "DisputeAnswered", "DisputeResolved",
                   "DisputeExpired")

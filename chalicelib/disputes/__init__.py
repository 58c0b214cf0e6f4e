"""Disputes: "this account is not mine" to a company (SPEC §8) and "this card is not mine" to an operator
(SPEC §10.1), forwarded, tracked, answered by SMS."""

# The metrics the dispute code emits (chalicelib/telemetry.py format); infra/disputes.py charts and alarms on them.
# The Card* ones carry the operator's group_id (CloudWatch dimension values are ASCII): one alarm per group.
DISPUTE_METRICS = ("DisputeSubmitted", "DisputeForwarded", "DisputeDeferred", "DisputeAnswered", "DisputeResolved",
                   "DisputeExpired", "CardDisputeResolved", "CardDisputeExpired")

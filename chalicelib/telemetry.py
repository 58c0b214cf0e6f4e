"""Metrics in CloudWatch Embedded Metric Format (Powertools): one log line each, no API call.

The dashboard and alarms in infra/ read exactly these names (see METRICS).
"""
from __future__ import annotations

from aws_lambda_powertools.metrics import MetricUnit, single_metric

NAMESPACE = "YiZhengTongCha"
METRICS = ("CodeSent", "QueryAccepted", "CardQueryAccepted", "QueryReplied", "QueryFailed", "SmsSent", "SmsFailed",
           "SmsChannelFull", "SmsRejected", "TransactionConflict", "StartDeferred", "LookupRequested",
           "LookupAnswered", "LookupLatency", "LookupDeferred", "LookupRefused", "LookupExpired",
           "PartnerAnswerRejected", "CircuitOpen", "CircuitsOpen", "CircuitOpened", "CircuitClosed", "CircuitProbe")


def count(name: str, value: float = 1, unit: MetricUnit = MetricUnit.Count, **dimensions: str) -> None:
    with single_metric(name=name, unit=unit, value=value, namespace=NAMESPACE,
                       default_dimensions={"service": "yizhengtongcha"}) as metric:
        for key, dimension in dimensions.items():
            metric.add_dimension(name=key, value=dimension)


def latency(name: str, milliseconds: float, **dimensions: str) -> None:
    count(name, milliseconds, MetricUnit.Milliseconds, **dimensions)

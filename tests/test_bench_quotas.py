"""The quota arithmetic `make bench` prints (bench/economics.py): pure functions, no AWS, no stack."""
from __future__ import annotations

import pytest

from bench.economics import (
    QUOTA_VALUES,
    capacity_under,
    little_lifetime_capacity,
    needed_quota,
    quota_value,
    table_quota,
)
from bench.prices import QUOTAS


def test_kms_is_one_shared_symmetric_quota_at_the_us_east_1_default() -> None:
    assert QUOTA_VALUES["KMS requests"] == QUOTAS["kms_symmetric_requests_per_second"] == 100_000
    # 4 KMS requests a query (one GenerateDataKey, three Decrypt): 25,000 queries/s; 7.05 (a partner down): ~14,184
    assert capacity_under(QUOTA_VALUES["KMS requests"], 0.0, 4) == 25_000
    assert round(capacity_under(QUOTA_VALUES["KMS requests"], 0.0, 7.05)) == 14_184


def test_each_table_is_its_own_quota() -> None:
    assert table_quota("WRU", "yztc-queries") == "DynamoDB WRU queries"
    assert table_quota("RRU", "yztc-lookups") == "DynamoDB RRU lookups"
    assert quota_value("DynamoDB WRU queries") == QUOTAS["dynamodb_table_write_units_per_second"]
    assert quota_value("DynamoDB RRU lookups") == QUOTAS["dynamodb_table_read_units_per_second"]
    assert quota_value("SNS SMS") == QUOTAS["sns_sms_per_second"]
    with pytest.raises(KeyError):
        quota_value("DynamoDB XRU queries")


def test_fixed_use_comes_off_the_quota_once() -> None:
    # 2 deadline starts a minute off the 300/s StartExecution refill, one start per query or dispute
    assert capacity_under(300, 2 / 60, 1) == pytest.approx(299.9667, abs=1e-4)


def test_open_executions_by_littles_law() -> None:
    # 1,000,000 open executions, 22 taken by the deadline executions, each query's execution open 2 s
    assert little_lifetime_capacity(1_000_000, 22, 2.0) == pytest.approx(499_989)
    # the "before": open 48 h, 5.8 queries/s
    assert little_lifetime_capacity(1_000_000, 0, 172_800) == pytest.approx(5.787, abs=1e-3)


def test_raise_needed_is_the_target_times_the_use_plus_the_fixed_use() -> None:
    assert needed_quota(1_000, 2) == 2_000  # SMS: 2 a query at 1,000 queries/s
    assert needed_quota(1_000, 1, 2 / 60) == pytest.approx(1_000.0333, abs=1e-4)
    # consistent with capacity_under: at the capacity a quota allows, the needed value is the quota
    assert needed_quota(capacity_under(5_000, 0.1, 3), 3, 0.1) == pytest.approx(5_000)

"""The service's DynamoDB tables by the environment variable that names each, and each one's default name.

The one list: chalicelib/config.py reads the names from it, storage/models.py maps each model to its variable,
local/aws.py names the local stack's tables from it (before anything reads the configuration, so this module
imports nothing of the service), and infra/ derives the deployed tables from the models.
"""
from __future__ import annotations

import os

PREFIX = "yztc"
TABLES: dict[str, str] = {
    "CODES_TABLE": "codes",
    "THROTTLE_TABLE": "throttle",
    "QUERIES_TABLE": "queries",
    "LOOKUPS_TABLE": "lookups",
    "CIRCUITS_TABLE": "circuits",
    "IDEMPOTENCY_TABLE": "idempotency",
    "DISPUTES_TABLE": "disputes",
    "REPORTED_TABLE": "reported",
}


def table_names(prefix: str = PREFIX) -> dict[str, str]:
    """Every table variable with the name a stage with this prefix gives it (local stacks, defaults)."""
    return {var: f"{prefix}-{suffix}" for var, suffix in TABLES.items()}


def table_name(var: str) -> str:
    """The table a variable names in this process: the environment's, or the default."""
    return os.environ.get(var, table_names()[var])

"""The tables are listed once (chalicelib/storage/tables.py); everything that names them agrees with the list."""
from __future__ import annotations

import json
import os

import pytest

from chalicelib.storage.tables import TABLES, table_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_model_has_a_listed_table_variable_and_every_listed_variable_a_model() -> None:
    from chalicelib.storage.models import ALL_MODELS, TABLE_VARS

    assert set(TABLE_VARS) == set(ALL_MODELS)
    assert sorted(TABLE_VARS.values()) == sorted(TABLES)


def test_the_local_stack_and_the_configuration_name_every_table_as_listed() -> None:
    from local.aws import base_environment

    environment = base_environment("yztc-test")
    assert {var: environment[var] for var in TABLES} == table_names("yztc-test")


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_each_deployed_stage_names_every_listed_table_with_its_own_prefix(stage: str) -> None:
    with open(os.path.join(ROOT, ".chalice", "config.json"), encoding="utf-8") as fh:
        variables = json.load(fh)["stages"][stage]["environment_variables"]
    assert {var: variables[var] for var in TABLES} == table_names(f"yztc-{stage}")

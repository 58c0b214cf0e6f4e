"""moto as the local stack patches it (local/aws.py) still answers as DynamoDB does: items of every attribute type
read back as written, through every item operation, and errors keep their codes; and state machines parsed once
still run each execution on its own input."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from local import aws
from tests.conftest import wait_for

ITEM: dict[str, Any] = {
    "k": {"S": "a"}, "n": {"N": "1.5"}, "b": {"B": b"\x00\x01\xff"}, "ss": {"SS": ["x", "y"]},
    "ns": {"NS": ["1", "2"]}, "bs": {"BS": [b"a", b"\x00"]}, "yes": {"BOOL": True}, "none": {"NULL": True},
    "m": {"M": {"x": {"N": "1"}, "y": {"L": [{"S": "z"}, {"NULL": True}, {"BOOL": False}]}}},
    "results": {"M": {f"operator-{i}": {"N": str(i)} for i in range(132)}},
}
KEY = {"k": {"S": "a"}}


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, and no endpoint a stack test may have left: clients go to this test's moto."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert "AWS_ENDPOINT_URL" not in os.environ


@pytest.fixture
def dynamodb(fake_aws: None) -> Iterator[Any]:
    with mock_aws():
        aws.make_dynamodb_serializable()
        aws.make_dynamodb_responses_fast()
        client = boto3.client("dynamodb")
        client.create_table(TableName="t", KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                            BillingMode="PAY_PER_REQUEST")
        client.put_item(TableName="t", Item=ITEM)
        yield client


def test_every_item_operation_reads_back_every_attribute_type_as_written(dynamodb: Any) -> None:
    assert dynamodb.get_item(TableName="t", Key=KEY, ConsistentRead=True)["Item"] == ITEM
    assert dynamodb.query(TableName="t", KeyConditionExpression="k = :k",
                          ExpressionAttributeValues={":k": KEY["k"]})["Items"] == [ITEM]
    assert dynamodb.scan(TableName="t")["Items"] == [ITEM]
    assert dynamodb.batch_get_item(RequestItems={"t": {"Keys": [KEY]}})["Responses"]["t"] == [ITEM]
    assert dynamodb.transact_get_items(TransactItems=[{"Get": {"TableName": "t", "Key": KEY}}])["Responses"] == [
        {"Item": ITEM}]
    updated = dynamodb.update_item(TableName="t", Key=KEY, UpdateExpression="SET results.#o = :v",
                                   ExpressionAttributeNames={"#o": "operator-1"},
                                   ExpressionAttributeValues={":v": {"N": "7"}}, ReturnValues="ALL_NEW")
    expected = {**ITEM, "results": {"M": {**ITEM["results"]["M"], "operator-1": {"N": "7"}}}}
    assert updated["Attributes"] == expected
    assert dynamodb.delete_item(TableName="t", Key=KEY, ReturnValues="ALL_OLD")["Attributes"] == expected
    assert "Item" not in dynamodb.get_item(TableName="t", Key=KEY)


def test_a_failed_condition_is_still_conditional_check_failed(dynamodb: Any) -> None:
    with pytest.raises(ClientError) as refused:
        dynamodb.put_item(TableName="t", Item=ITEM, ConditionExpression="attribute_not_exists(k)")
    assert refused.value.response["Error"]["Code"] == "ConditionalCheckFailedException"


# -- a failed transaction rolled back from copies of its items (make_dynamodb_transactions_copy_items_not_tables) --
@pytest.fixture
def two_tables(dynamodb: Any) -> Any:
    """Table t (hash key) holding ITEM and {k: b}; table r (hash and range key) holding {h: x, r: 1}."""
    aws.make_dynamodb_transactions_copy_items_not_tables()
    dynamodb.put_item(TableName="t", Item={"k": {"S": "b"}, "n": {"N": "1"}})
    dynamodb.create_table(TableName="r", KeySchema=[{"AttributeName": "h", "KeyType": "HASH"},
                                                    {"AttributeName": "r", "KeyType": "RANGE"}],
                          AttributeDefinitions=[{"AttributeName": "h", "AttributeType": "S"},
                                                {"AttributeName": "r", "AttributeType": "N"}],
                          BillingMode="PAY_PER_REQUEST")
    dynamodb.put_item(TableName="r", Item={"h": {"S": "x"}, "r": {"N": "1"}, "v": {"S": "old"}})
    return dynamodb


def _everything(client: Any) -> dict[str, list[Any]]:
    def order(item: dict[str, Any]) -> str:
        return json.dumps(item, sort_keys=True, default=repr)

    return {name: sorted(client.scan(TableName=name)["Items"], key=order) for name in ("t", "r")}


def _transaction(last_condition: str) -> list[dict[str, Any]]:
    """Updates ITEM, deletes b, puts c, updates and puts in r (under x and a new hash y); then a condition check
    on d that may fail."""
    return [
        {"Update": {"TableName": "t", "Key": KEY, "UpdateExpression": "SET results.#o = :v, n = :n",
                    "ExpressionAttributeNames": {"#o": "operator-1"},
                    "ExpressionAttributeValues": {":v": {"N": "9"}, ":n": {"N": "2"}}}},
        {"Delete": {"TableName": "t", "Key": {"k": {"S": "b"}}}},
        {"Put": {"TableName": "t", "Item": {"k": {"S": "c"}}}},
        {"Update": {"TableName": "r", "Key": {"h": {"S": "x"}, "r": {"N": "1"}}, "UpdateExpression": "SET v = :v",
                    "ExpressionAttributeValues": {":v": {"S": "new"}}}},
        {"Put": {"TableName": "r", "Item": {"h": {"S": "x"}, "r": {"N": "2"}}}},
        {"Put": {"TableName": "r", "Item": {"h": {"S": "y"}, "r": {"N": "1"}}}},
        {"ConditionCheck": {"TableName": "t", "Key": {"k": {"S": "d"}}, "ConditionExpression": last_condition}},
    ]


def test_a_transaction_whose_last_condition_fails_leaves_every_item_as_it_was(two_tables: Any) -> None:
    before = _everything(two_tables)
    with pytest.raises(ClientError) as refused:
        two_tables.transact_write_items(TransactItems=_transaction("attribute_exists(k)"))
    assert refused.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert _everything(two_tables) == before


def test_a_transaction_naming_one_item_twice_leaves_every_item_as_it_was(two_tables: Any) -> None:
    before = _everything(two_tables)
    twice = [*_transaction("attribute_not_exists(k)")[:3],
             {"ConditionCheck": {"TableName": "t", "Key": KEY, "ConditionExpression": "attribute_exists(k)"}}]
    with pytest.raises(ClientError) as refused:
        two_tables.transact_write_items(TransactItems=twice)
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert _everything(two_tables) == before


def test_a_transaction_whose_conditions_hold_writes_every_item(two_tables: Any) -> None:
    two_tables.transact_write_items(TransactItems=_transaction("attribute_not_exists(k)"))
    after = _everything(two_tables)
    assert [item["k"]["S"] for item in after["t"]] == ["a", "c"]
    assert after["t"][0]["results"]["M"]["operator-1"] == {"N": "9"} and after["t"][0]["n"] == {"N": "2"}
    assert after["r"] == [{"h": {"S": "x"}, "r": {"N": "1"}, "v": {"S": "new"}}, {"h": {"S": "x"}, "r": {"N": "2"}},
                          {"h": {"S": "y"}, "r": {"N": "1"}}]


# -- state machine definitions parsed once (local/aws.py make_state_machines_parse_once) -------------------
PASS_THEN_CHOOSE = json.dumps({"StartAt": "Keep", "States": {
    "Keep": {"Type": "Pass", "Parameters": {"n.$": "$.n"}, "Next": "Pause"},
    "Pause": {"Type": "Wait", "Seconds": 0, "Next": "Big?"},
    "Big?": {"Type": "Choice", "Choices": [{"Variable": "$.n", "NumericGreaterThan": 5, "Next": "Big"}],
             "Default": "Small"},
    "Big": {"Type": "Succeed"}, "Small": {"Type": "Fail", "Error": "Small"}}})
MAPPED = json.dumps({"StartAt": "Each", "States": {"Each": {
    "Type": "Map", "ItemsPath": "$.items", "End": True,
    "ItemProcessor": {"StartAt": "One", "States": {"One": {"Type": "Pass", "End": True}}}}}})


@pytest.fixture
def parses(fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The definitions moto really parsed, with the patch installed afresh over a counting parser."""
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    parsed: list[str] = []
    original = AmazonStateLanguageParser.parse

    def counting(definition: str) -> Any:
        parsed.append(definition)
        return original(definition)

    monkeypatch.setattr(AmazonStateLanguageParser, "parse", staticmethod(counting))
    monkeypatch.delattr(AmazonStateLanguageParser, "_yztc_once", raising=False)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        aws.make_state_machines_parse_once()
        yield parsed


def _run_all(definition: str, inputs: list[dict[str, Any]]) -> list[str]:
    sfn = boto3.client("stepfunctions")
    arn = sfn.create_state_machine(name="m", definition=definition,
                                   roleArn="arn:aws:iam::123456789012:role/r")["stateMachineArn"]
    started = [sfn.start_execution(stateMachineArn=arn, name=f"e{n}", input=json.dumps(i))["executionArn"]
               for n, i in enumerate(inputs)]

    def ended() -> list[str] | None:
        statuses = [sfn.describe_execution(executionArn=e)["status"] for e in started]
        return None if "RUNNING" in statuses else statuses

    return wait_for(ended, 30, "the executions to end")  # type: ignore[no-any-return]


def test_executions_share_one_parse_of_their_definition_and_keep_their_own_state(parses: list[str]) -> None:
    statuses = _run_all(PASS_THEN_CHOOSE, [{"n": n} for n in range(10)])
    assert statuses == ["FAILED"] * 6 + ["SUCCEEDED"] * 4  # each execution chose on its own input
    assert parses.count(PASS_THEN_CHOOSE) == 1  # its creation's check and ten executions: one parse


def test_a_definition_with_a_map_state_is_parsed_for_every_execution(parses: list[str]) -> None:
    assert _run_all(MAPPED, [{"items": [1, 2]}, {"items": [3]}]) == ["SUCCEEDED"] * 2
    assert parses.count(MAPPED) >= 3  # its creation's check and each execution: Map keeps its workers' state


def test_moto_lists_a_responder_class_s_actions_once_and_still_answers_them(fake_aws: None) -> None:
    from moto.core import responses

    aws.make_moto_dispatch_list_actions_once()
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        before = responses.method_names_from_class.cache_info()  # type: ignore[attr-defined]
        url = sqs.create_queue(QueueName="q")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="m")
        assert [m["Body"] for m in sqs.receive_message(QueueUrl=url)["Messages"]] == ["m"]
        after = responses.method_names_from_class.cache_info()  # type: ignore[attr-defined]
    assert after.hits - before.hits >= 2 and after.misses - before.misses <= 1

"""moto as the local stack patches it (local/aws.py) still answers as DynamoDB does: items of every attribute type
read back as written, through every item operation, and errors keep their codes."""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from local import aws

ITEM: dict[str, Any] = {
    "k": {"S": "a"}, "n": {"N": "1.5"}, "b": {"B": b"\x00\x01\xff"}, "ss": {"SS": ["x", "y"]},
    "ns": {"NS": ["1", "2"]}, "bs": {"BS": [b"a", b"\x00"]}, "yes": {"BOOL": True}, "none": {"NULL": True},
    "m": {"M": {"x": {"N": "1"}, "y": {"L": [{"S": "z"}, {"NULL": True}, {"BOOL": False}]}}},
    "results": {"M": {f"operator-{i}": {"N": str(i)} for i in range(132)}},
}
KEY = {"k": {"S": "a"}}


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert "AWS_ENDPOINT_URL" not in os.environ
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

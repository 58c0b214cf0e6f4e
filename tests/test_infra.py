"""The deployable template (`make package`): lint-clean, consistent with the code, least privilege,
and deployable into moto's CloudFormation where the state machine it creates answers a query."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from typing import Any

import boto3
import pytest
import time_machine

from chalicelib import signing
from infra import generate
from local.lambdas import acting_as
from local.stack import StackOptions
from tests.conftest import BASE_OPTIONS, post_json, wait_for
from tests.helpers import latest_code, request_code, submit, wait_finished

ROOT = generate.ROOT
STAGE = "prod"
OUT = os.path.join(ROOT, "build", "test-" + STAGE)


@pytest.fixture(scope="module")
def packaged() -> dict[str, Any]:
    result = subprocess.run(["make", "--no-print-directory", "package", f"STAGE={STAGE}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(os.path.join(ROOT, "build", STAGE, "package", "sam.json"), encoding="utf-8") as fh:
        return json.load(fh)


def resources(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_package_lints_clean_and_holds_every_part(packaged):
    kinds = {v["Type"] for v in packaged["Resources"].values()}
    assert {"AWS::Serverless::Function", "AWS::Serverless::Api", "AWS::DynamoDB::Table", "AWS::KMS::Key",
            "AWS::SecretsManager::Secret", "AWS::StepFunctions::StateMachine", "AWS::CloudWatch::Dashboard",
            "AWS::CloudWatch::Alarm", "AWS::SNS::Topic", "AWS::SQS::Queue", "Custom::SnsSmsSettings"} <= kinds


def test_every_model_table_exists_with_its_keys_ttl_pitr_and_kms(packaged):
    from chalicelib.storage import models

    env = generate.stage_env(STAGE)
    tables = {t["Properties"]["TableName"]: t["Properties"] for t in
              resources(packaged, "AWS::DynamoDB::Table").values()}
    for var, model in zip(generate.TABLE_VARS, models.ALL_MODELS, strict=True):
        table = tables[env[var]]
        description = model._get_schema()  # what PynamoDB itself would create
        assert table["KeySchema"] == description["key_schema"]
        assert table["AttributeDefinitions"] == description["attribute_definitions"]
        assert not description.get("global_secondary_indexes") and "GlobalSecondaryIndexes" not in table
        assert table["BillingMode"] == "PAY_PER_REQUEST"
        assert table["TimeToLiveSpecification"] == {"AttributeName": models.TTL_ATTRIBUTE[model], "Enabled": True}
        assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert table["SSESpecification"]["KMSMasterKeyId"] == {"Ref": "DataKey"}
    assert len(tables) == len(models.ALL_MODELS)


def test_state_machine_substitutions_cover_every_placeholder(packaged):
    (machine,) = resources(packaged, "AWS::StepFunctions::StateMachine").values()
    properties = machine["Properties"]
    with open(generate.ASL_FILE, encoding="utf-8") as fh:
        assert json.loads(properties["DefinitionString"]) == json.load(fh)  # the tested file, as is
    placeholders = set(re.findall(r"\$\{(\w+)\}", properties["DefinitionString"]))
    assert placeholders == set(properties["DefinitionSubstitutions"])
    for value in properties["DefinitionSubstitutions"].values():
        assert packaged["Resources"][value["Fn::GetAtt"][0]]["Type"] == "AWS::Serverless::Function"
    assert properties["LoggingConfiguration"]["Level"] == "ERROR"
    assert properties["LoggingConfiguration"]["IncludeExecutionData"] is False
    assert properties["TracingConfiguration"] == {"Enabled": True}


def _role_statements(packaged, function):
    role_name = packaged["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
    return [s for policy in packaged["Resources"][role_name]["Properties"]["Policies"]
            for s in policy["PolicyDocument"]["Statement"]]


def test_no_wildcard_actions_and_every_function_has_its_own_role(packaged):
    functions = resources(packaged, "AWS::Serverless::Function")
    roles = [f["Properties"]["Role"]["Fn::GetAtt"][0] for f in functions.values()]
    assert len(set(roles)) == len(functions) == 6
    for role in resources(packaged, "AWS::IAM::Role").values():
        for policy in role["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert not [a for a in actions if a == "*" or a.endswith(":*")], statement
                if statement.get("Resource") == "*":
                    # only services with no resource-level permissions
                    assert {a.split(":")[0] for a in actions} <= {"xray", "logs", "sns"}, statement


def test_every_function_gets_every_setting_the_code_reads(packaged):
    from chalicelib.config import Settings

    needed = {"CODES_TABLE", "THROTTLE_TABLE", "QUERIES_TABLE", "LOOKUPS_TABLE", "IDEMPOTENCY_TABLE", "KMS_KEY_ID",
              "PEPPER_SECRET_NAME", "STATE_MACHINE_ARN", "START_QUEUE_URL", "PUBLIC_API_URL", "SMS_SENDER_ID",
              "QUERY_DEADLINE_SECONDS"}
    assert len(Settings.__dataclass_fields__) >= len(needed)
    for name, function in resources(packaged, "AWS::Serverless::Function").items():
        variables = function["Properties"]["Environment"]["Variables"]
        assert needed <= set(variables), (name, needed - set(variables))


def test_api_is_throttled_and_callbacks_only_from_partner_networks(packaged):
    api = packaged["Resources"]["RestAPI"]["Properties"]
    (settings,) = api["MethodSettings"]
    assert settings["ThrottlingRateLimit"] == {"Ref": "ApiRateLimit"}
    policy = api["DefinitionBody"]["x-amazon-apigateway-policy"]["Statement"]
    deny = next(s for s in policy if s["Effect"] == "Deny")
    assert "v1/partners" in json.dumps(deny["Resource"])
    assert deny["Condition"]["NotIpAddress"]["aws:SourceIp"] == {"Ref": "PartnerCidrs"}


def test_alarms_cover_what_operators_must_hear_about(packaged):
    alarms = resources(packaged, "AWS::CloudWatch::Alarm")
    text = json.dumps(alarms)
    for metric in ("ExecutionsFailed", "SmsFailed", "ThrottledRequests", "OpenExecutionCount",
                   "ApproximateAgeOfOldestMessage"):
        assert metric in text
    for company in ("tencent", "meituan"):
        assert any(company in json.dumps(a) and "LookupAnswered" in json.dumps(a) for a in alarms.values())
    assert all(a["Properties"]["AlarmActions"] == [{"Ref": "OperatorTopic"}] for a in alarms.values())
    (dashboard,) = resources(packaged, "AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"][0]
    from chalicelib.telemetry import METRICS

    assert all(m in body for m in METRICS if m not in ("CodeSent",)) and "5XXError" in body


# -- least privilege, checked against what the code really calls --------------------------------
@pytest.fixture
def recorder():
    from local.recording import recording

    with recording() as recorder:
        yield recorder


MIXED = StackOptions(**{**BASE_OPTIONS.__dict__,
                        "partner_modes": "tencent=immediate,alibaba=error,jd=callback,meituan=silent"})


@pytest.mark.parametrize("stack_options", [MIXED])
def test_every_aws_action_the_code_calls_is_granted_to_its_function_and_nothing_more(packaged, stack, api,
                                                                                        recorder):
    """Drive every path once (codes, wrong code, query, limit, rollback, status, every workflow step,
    immediate, error and callback answers, duplicates), recording each AWS call by function."""
    from moto.sqs.models import SQSBackend

    phone = "13812345678"
    with acting_as("APIHandler"):
        assert request_code(api, phone).status_code == 202
        post_json(api, "/v1/queries", {"phone": phone, "id_last6": "12345X", "code": "000000"})
        response = submit(api, stack, phone, "12345X", latest_code(stack, phone))
        query_id = response.json_body["query_id"]
        api.http.get(f"/v1/queries/{query_id}")
    with acting_as("APIHandler"), time_machine.travel(time.time() + 61, tick=True):
        assert submit(api, stack, phone, "12345X").status_code == 429  # a fresh code, a held limit
    # the reply step: SNS refuses once (the idempotency record is released), then the
    # result is lost once (the retry finds the completed record)
    from botocore.exceptions import ClientError

    from chalicelib import clients

    failures = {"sns": 1}

    def refuse_once(**_):
        if failures["sns"]:
            failures["sns"] -= 1
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "Publish")

    clients.client("sns").meta.events.register("before-call.sns.Publish", refuse_once)
    stack.dispatcher.lose_results["send_reply"] = 1
    assert stack.pump_once() == 1
    meituan = stack.partners["meituan"]
    wait_for(lambda: meituan.requests, 20, "meituan asked")
    body = json.dumps({"lookup_id": meituan.requests[0]["lookup_id"], "error": "no such subscriber"}).encode()
    with acting_as("APIHandler"):
        answer = api.http.post("/v1/partners/meituan/results", body=body,
                               headers=signing.signed_headers(stack.secrets["yztc/partners/meituan"], body))
        assert answer.status_code == 200
    wait_finished(stack, query_id)
    # a duplicate callback after the reply, through the API over HTTP as partners do
    jd = stack.partners["jd"]
    wait_for(lambda: jd.callbacks, 10, "jd's callback")
    # the rollback path: SQS refuses the start message once
    original = SQSBackend.send_message
    refusing = {"once": True}

    def send_message(self, *args, **kwargs):
        if refusing.pop("once", False):
            from moto.core.exceptions import JsonRESTError

            raise JsonRESTError("ServiceUnavailable", "injected")
        return original(self, *args, **kwargs)

    SQSBackend.send_message = send_message
    try:
        with acting_as("APIHandler"):
            other = "13900001111"
            assert request_code(api, other).status_code == 202
            rollback = post_json(api, "/v1/queries", {"phone": other, "id_last6": "010203",
                                                      "code": latest_code(stack, other)})
            assert rollback.status_code == 503
    finally:
        SQSBackend.send_message = original

    env = generate.stage_env(STAGE)
    local_tables = {stack.env[var]: env[var] for var in generate.TABLE_VARS}
    for function in generate.FUNCTION_ACCESS:
        statements = _role_statements(packaged, function)
        granted: set[tuple[str, str]] = set()
        for statement in statements:
            actions = statement["Action"]
            targets = statement.get("Resource", statement.get("NotResource"))
            table_refs = [t["Fn::GetAtt"][0] for t in (targets if isinstance(targets, list) else [targets])
                          if isinstance(t, dict) and "Fn::GetAtt" in t]
            if "kms:ViaService" in json.dumps(statement.get("Condition", {})):
                continue  # Secrets Manager decrypts with our key on the caller's behalf
            for action in actions:
                if action.startswith(("logs:", "xray:")) or action == "dynamodb:DescribeTable":
                    continue  # the runtime's and PynamoDB's once-per-container calls
                tables = [packaged["Resources"][r]["Properties"].get("TableName", "")
                          for r in table_refs if packaged["Resources"][r]["Type"] == "AWS::DynamoDB::Table"]
                for table in tables or [""]:
                    granted.add((action, table))
        called = {(action, local_tables.get(table, table)) for f, action, table in recorder.calls
                  if f == function}
        if function == "StartQueries":  # Lambda's SQS poller makes these, not our code
            called |= {("sqs:ReceiveMessage", ""), ("sqs:DeleteMessage", ""), ("sqs:GetQueueAttributes", "")}
        assert called - granted == set(), f"{function} calls what it may not: {called - granted}"
        assert granted - called == set(), f"{function} is granted what it never calls: {granted - called}"


@pytest.mark.parametrize("stack_options", [StackOptions(**{**BASE_OPTIONS.__dict__, "provision": "cloudformation"})])
def test_the_template_deployed_into_moto_answers_a_query_end_to_end(stack, api):
    """Tables, key, queue and state machine come from the generated template via moto's CloudFormation."""
    cfn = boto3.client("cloudformation")
    created = {r["ResourceType"] for r in cfn.list_stack_resources(StackName="yztc")["StackResourceSummaries"]}
    assert {"AWS::DynamoDB::Table", "AWS::StepFunctions::StateMachine", "AWS::KMS::Key"} <= created
    response = submit(api, stack, "13812345678", "12345X")
    assert response.status_code == 202
    assert stack.pump_once() == 1
    execution = wait_finished(stack, response.json_body["query_id"])
    assert execution["status"] == "SUCCEEDED"
    assert execution["stateMachineArn"] == cfn.describe_stacks(StackName="yztc")["Stacks"][0]["Outputs"][0][
        "OutputValue"]
    assert "腾讯2个" in [m for m in stack.read_outbox() if "关联" in m["message"]][0]["message"]


# -- the edge (issue 9): API Gateway's own answers, WAF, access logs, tracing, checkov --------------
def test_what_api_gateway_answers_itself_has_the_spec_error_shape(packaged):
    from chalicelib.api.responses import STATUS_BY_ERROR

    responses = {r["Properties"]["ResponseType"]: r["Properties"]
                 for r in resources(packaged, "AWS::ApiGateway::GatewayResponse").values()}
    assert {"MISSING_AUTHENTICATION_TOKEN", "UNSUPPORTED_MEDIA_TYPE", "THROTTLED", "REQUEST_TOO_LARGE",
            "ACCESS_DENIED", "WAF_FILTERED", "DEFAULT_4XX", "DEFAULT_5XX"} <= set(responses)
    codes_by_status = {cls.code: str(status) for cls, status in STATUS_BY_ERROR.items()}
    for response_type, properties in responses.items():
        assert properties["RestApiId"] == {"Ref": "RestAPI"}
        body = json.loads(properties["ResponseTemplates"]["application/json"])
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, response_type
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", body["error"]["code"]) and body["error"]["message"]
        if "StatusCode" in properties:
            assert codes_by_status[body["error"]["code"]] == properties["StatusCode"], response_type
    assert responses["MISSING_AUTHENTICATION_TOKEN"]["StatusCode"] == "404"  # unknown path: not a 403
    assert json.loads(responses["THROTTLED"]["ResponseTemplates"]["application/json"])["error"]["code"] == \
        "too_many_requests"
    assert responses["THROTTLED"]["ResponseParameters"]["gatewayresponse.header.Retry-After"] == "'1'"
    assert "StatusCode" not in responses["DEFAULT_5XX"]


def test_a_waf_web_acl_with_managed_rules_and_a_per_ip_rate_limit_guards_the_api_stage(packaged):
    (acl,) = resources(packaged, "AWS::WAFv2::WebACL").values()
    properties = acl["Properties"]
    assert properties["Scope"] == "REGIONAL" and properties["DefaultAction"] == {"Allow": {}}
    rules = {rule["Name"]: rule for rule in properties["Rules"]}
    common = rules["AWSManagedRulesCommonRuleSet"]["Statement"]["ManagedRuleGroupStatement"]
    # partner callbacks may be 64 KiB: the managed 8 KB body rule only counts
    assert common["RuleActionOverrides"] == [{"Name": "SizeRestrictions_BODY", "ActionToUse": {"Count": {}}}]
    rate = rules["RatePerIp"]
    assert rate["Statement"]["RateBasedStatement"]["AggregateKeyType"] == "IP"
    assert rate["Statement"]["RateBasedStatement"]["Limit"] == {"Ref": "WafRateLimit"}
    assert packaged["Parameters"]["WafRateLimit"]["Default"] >= 1000  # carrier-grade NAT
    assert rate["Action"]["Block"]["CustomResponse"]["ResponseCode"] == 429
    body = json.loads(properties["CustomResponseBodies"]["TooManyRequests"]["Content"])
    assert body["error"]["code"] == "too_many_requests"
    (association,) = resources(packaged, "AWS::WAFv2::WebACLAssociation").values()
    assert association["Properties"]["WebACLArn"] == {"Fn::GetAtt": ["WebAcl", "Arn"]}
    assert "${RestAPI}/stages/api" in association["Properties"]["ResourceArn"]["Fn::Sub"]


def test_the_api_is_traced_and_access_logged_without_bodies(packaged):
    api = packaged["Resources"]["RestAPI"]
    assert api["Properties"]["TracingEnabled"] is True
    setting = api["Properties"]["AccessLogSetting"]
    assert setting["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    line = json.loads(setting["Format"])
    assert "$context.requestId" in line.values() and "$context.status" in line.values()
    assert not [v for v in line.values() if "body" in v.lower() or "$input" in v or "querystring" in v.lower()]
    assert "ApiGatewayAccount" in api["DependsOn"]


def test_queues_use_the_data_key_and_execution_starts_are_bounded(packaged):
    for queue in resources(packaged, "AWS::SQS::Queue").values():
        assert queue["Properties"]["KmsMasterKeyId"] == {"Ref": "DataKey"}
    start = packaged["Resources"]["StartQueries"]["Properties"]
    assert 1 <= start["ReservedConcurrentExecutions"] <= 10


def test_every_checkov_skip_says_why(packaged):
    skipped = [(name, entry) for name, resource in packaged["Resources"].items()
               for entry in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])]
    assert skipped
    for name, entry in skipped:
        assert re.fullmatch(r"CKV2?_AWS_\d+", entry["id"]) and len(entry["comment"]) > 20, (name, entry)

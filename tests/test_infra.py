"""The deployable template (`make package`): lint-clean, consistent with the code, least privilege,
and deployable into moto's CloudFormation where the state machine it creates answers a query."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import time_machine

from chalicelib import signing
from infra import generate
from local.lambdas import acting_as
from local.stack import LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS, PRODUCERS, post_json, produced_once, run_to_the_end, wait_for
from tests.helpers import FIXTURE_OPERATORS, aws, circuit, latest_code, request_code, submit, wait_finished

if TYPE_CHECKING:
    from pathlib import Path
    from types import ModuleType

    from chalice.test import Client

    from chalicelib.storage.models import Lookup
    from local.recording import CallRecorder
    from local.simulators import PartnerSimulator

ROOT = generate.ROOT
STAGE = "prod"
OUT = os.path.join(ROOT, "build", "test-" + STAGE)


def _build_the_package(product: Path) -> None:
    command = ["make", "--no-print-directory", "package", f"STAGE={STAGE}"]
    status, stdout, stderr = run_to_the_end(command, ROOT, 600)
    assert status == 0, stdout[-3000:] + stderr[-3000:]
    shutil.copyfile(os.path.join(ROOT, "build", STAGE, "package", "sam.json"), product)


# Built once per run, beside the tests (tests/conftest.py, PRODUCERS): its 26 CPU-s were spent again by each xdist
# worker that ran one of these tests, and two builds into build/ at once read each other's half-written files.
PRODUCERS["packaged"] = _build_the_package


@pytest.fixture(scope="session")
def packaged(request: pytest.FixtureRequest) -> dict[str, Any]:
    """`make package`'s template."""
    with open(produced_once(request.config, "packaged"), encoding="utf-8") as fh:
        return dict(json.load(fh))


def resources(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_package_lints_clean_and_holds_every_part(packaged: dict[str, Any]) -> None:
    kinds = {v["Type"] for v in packaged["Resources"].values()}
    assert {"AWS::Serverless::Function", "AWS::Serverless::Api", "AWS::DynamoDB::Table", "AWS::KMS::Key",
            "AWS::SecretsManager::Secret", "AWS::StepFunctions::StateMachine", "AWS::CloudWatch::Dashboard",
            "AWS::CloudWatch::Alarm", "AWS::SNS::Topic", "AWS::SQS::Queue", "Custom::SnsSmsSettings"} <= kinds


def test_every_model_table_exists_with_its_keys_indexes_ttl_pitr_and_kms(packaged: dict[str, Any]) -> None:
    from chalicelib.storage import models

    env = generate.stage_env(STAGE)
    tables = {t["Properties"]["TableName"]: t["Properties"] for t in
              resources(packaged, "AWS::DynamoDB::Table").values()}
    assert set(models.TABLE_VARS) == set(models.ALL_MODELS)
    for model, var in models.TABLE_VARS.items():
        table = tables[env[var]]
        description = model._get_schema()  # what PynamoDB itself would create
        assert table["KeySchema"] == generate._hash_first(description["key_schema"])  # HASH first
        assert table["AttributeDefinitions"] == description["attribute_definitions"]
        indexes = [{"IndexName": i["index_name"], "KeySchema": generate._hash_first(i["key_schema"]),
                    "Projection": i["projection"]}
                   for i in description["global_secondary_indexes"]]
        assert table.get("GlobalSecondaryIndexes", []) == indexes
        assert not description["local_secondary_indexes"] and "LocalSecondaryIndexes" not in table
        assert table["BillingMode"] == "PAY_PER_REQUEST"
        ttl = models.TTL_ATTRIBUTE[model]
        if ttl is None:
            assert "TimeToLiveSpecification" not in table, var
        else:
            assert table["TimeToLiveSpecification"] == {"AttributeName": ttl, "Enabled": True}
        assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert table["SSESpecification"]["KMSMasterKeyId"] == {"Ref": "DataKey"}
    assert len(tables) == len(models.ALL_MODELS)
    assert tables[env["LOOKUPS_TABLE"]]["GlobalSecondaryIndexes"][0]["IndexName"] == "backlog"


def test_state_machine_substitutions_cover_every_placeholder(packaged: dict[str, Any]) -> None:
    from chalicelib import contracts

    machines = resources(packaged, "AWS::StepFunctions::StateMachine")
    assert set(machines) == {"QueryStateMachine", "DisputeStateMachine", "DeadlineStateMachine"}
    properties = machines["QueryStateMachine"]["Properties"]
    with open(generate.ASL_FILE, encoding="utf-8") as fh:
        assert json.loads(properties["DefinitionString"]) == json.load(fh)  # the tested file, as is
    placeholders = set(re.findall(r"\$\{(\w+)\}", properties["DefinitionString"]))
    substitutions = properties["DefinitionSubstitutions"]
    assert placeholders == set(substitutions)
    for fn in contracts.WORKFLOW_FUNCTIONS:
        assert substitutions[fn.placeholder] == {"Fn::GetAtt": [fn.logical_id, "Arn"]}
        assert packaged["Resources"][fn.logical_id]["Type"] == "AWS::Serverless::Function"
    env = generate.stage_env(STAGE)
    for placeholder, var in contracts.WORKFLOW_QUEUES.items():
        queue = packaged["Resources"][substitutions[placeholder]["Ref"]]
        assert queue["Type"] == "AWS::SQS::Queue"
        assert queue["Properties"]["QueueName"] == env[var.replace("_URL", "_NAME")]
    assert properties["LoggingConfiguration"]["Level"] == "ERROR"
    assert properties["LoggingConfiguration"]["IncludeExecutionData"] is False
    assert properties["TracingConfiguration"] == {"Enabled": True}
    # The role: invoke the workflow's functions; send to the reply queue (CarrierNotAnswered), nothing else.
    statements = [s for policy in packaged["Resources"][properties["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
                  ["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    allowed = {(action, json.dumps(resource)) for s in statements if s["Resource"] != "*" for action in s["Action"]
               for resource in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])}
    assert allowed == {*(("lambda:InvokeFunction", json.dumps({"Fn::GetAtt": [fn.logical_id, "Arn"]}))
                         for fn in contracts.WORKFLOW_FUNCTIONS),
                       ("sqs:SendMessage", json.dumps({"Fn::GetAtt": ["ReplyQueue", "Arn"]})),
                       ("kms:GenerateDataKey", json.dumps({"Fn::GetAtt": ["DataKey", "Arn"]})),
                       ("kms:Decrypt", json.dumps({"Fn::GetAtt": ["DataKey", "Arn"]}))}
    # The deadline machine: its one step, and the schedule that starts it (SPEC §2).
    deadline = machines["DeadlineStateMachine"]["Properties"]
    with open(generate.DEADLINE_ASL_FILE, encoding="utf-8") as fh:
        assert json.loads(deadline["DefinitionString"]) == json.load(fh)
    assert deadline["DefinitionSubstitutions"] == {fn.placeholder: {"Fn::GetAtt": [fn.logical_id, "Arn"]}
                                                   for fn in contracts.DEADLINE_WORKFLOW_FUNCTIONS}


def _role_statements(packaged: dict[str, Any], function: str) -> list[dict[str, Any]]:
    role_name = packaged["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
    return [s for policy in packaged["Resources"][role_name]["Properties"]["Policies"]
            for s in policy["PolicyDocument"]["Statement"]]


def test_no_wildcard_actions_and_every_function_has_its_own_role(packaged: dict[str, Any]) -> None:
    from chalicelib import contracts

    functions = resources(packaged, "AWS::Serverless::Function")
    assert set(functions) == {contracts.API_HANDLER, *(fn.logical_id for fn in contracts.FUNCTIONS)}
    roles = [f["Properties"]["Role"]["Fn::GetAtt"][0] for f in functions.values()]
    assert len(set(roles)) == len(functions) == len(contracts.FUNCTIONS) + 1 == 11
    for role in resources(packaged, "AWS::IAM::Role").values():
        for policy in role["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert not [a for a in actions if a == "*" or a.endswith(":*")], statement
                if statement.get("Resource") == "*":
                    # only services with no resource-level permissions
                    assert {a.split(":")[0] for a in actions} <= {"xray", "logs", "sns"}, statement


def test_every_function_gets_every_setting_the_code_reads(packaged: dict[str, Any]) -> None:
    from chalicelib.config import Settings
    from chalicelib.storage import models

    needed = {*models.TABLE_VARS.values(), "KMS_KEY_ID", "PEPPER_SECRET_NAME", "STATE_MACHINE_ARN",
              "START_QUEUE_URL", "RETRY_QUEUE_URL", "REPLY_QUEUE_URL", "PUBLIC_API_URL", "SMS_SENDER_ID",
              "QUERY_DEADLINE_SECONDS", "DEADLINE_SLOT_SECONDS"}
    assert {"CIRCUITS_TABLE", "RETRY_QUEUE_URL"} <= needed
    assert len(Settings.__dataclass_fields__) >= len(needed)
    for name, function in resources(packaged, "AWS::Serverless::Function").items():
        variables = function["Properties"]["Environment"]["Variables"]
        assert needed <= set(variables), (name, needed - set(variables))
        assert variables["RETRY_QUEUE_URL"] == {"Ref": "RetryQueue"}
        assert variables["REPLY_QUEUE_URL"] == {"Ref": "ReplyQueue"}
    starter = resources(packaged, "AWS::Serverless::Function")["StartDeadlines"]["Properties"]
    assert starter["Environment"]["Variables"]["DEADLINE_STATE_MACHINE_ARN"] == {"Ref": "DeadlineStateMachine"}


def test_delivery_runs_alone_each_minute_and_retries_come_from_the_retry_queue(packaged: dict[str, Any]) -> None:
    """The delivery job never overlaps itself; the retry queue outlasts its consumer's timeout."""
    from chalicelib import contracts

    env = generate.stage_env(STAGE)
    job = packaged["Resources"][contracts.DELIVER_BACKLOG.logical_id]["Properties"]
    assert job["ReservedConcurrentExecutions"] == 1
    assert job["Timeout"] == 60 and int(job["Environment"]["Variables"]["DELIVERY_BUDGET_SECONDS"]) < 60
    ((event,),) = [list(job["Events"].values())]
    assert event == {"Type": "Schedule", "Properties": {"Schedule": "rate(1 minute)"}}
    consumer = packaged["Resources"][contracts.RETRY_LOOKUPS.logical_id]["Properties"]
    ((source,),) = [list(consumer["Events"].values())]
    assert source["Type"] == "SQS" and source["Properties"]["Queue"]["Fn::Sub"].endswith(
        ":" + env["RETRY_QUEUE_NAME"])
    queue = packaged["Resources"]["RetryQueue"]["Properties"]
    assert queue["QueueName"] == env["RETRY_QUEUE_NAME"] and queue["KmsMasterKeyId"] == {"Ref": "DataKey"}
    assert queue["VisibilityTimeout"] >= consumer["Timeout"]
    assert int(env["QUERY_DEADLINE_SECONDS"]) <= queue["MessageRetentionPeriod"] <= 1209600
    assert "DelaySeconds" not in queue  # each message carries its own backoff


def test_api_is_throttled_and_callbacks_only_from_partner_networks(packaged: dict[str, Any]) -> None:
    api = packaged["Resources"]["RestAPI"]["Properties"]
    (settings,) = api["MethodSettings"]
    assert settings["ThrottlingRateLimit"] == {"Ref": "ApiRateLimit"}
    policy = api["DefinitionBody"]["x-amazon-apigateway-policy"]["Statement"]
    deny = next(s for s in policy if s["Effect"] == "Deny")
    from chalicelib.partners.kinds import PARTNER_ROUTE_PREFIXES

    for prefix in PARTNER_ROUTE_PREFIXES:  # companies' and operators' callbacks: partner networks only
        assert f"POST{prefix}*" in json.dumps(deny["Resource"])
    assert deny["Condition"]["NotIpAddress"]["aws:SourceIp"] == {"Ref": "PartnerCidrs"}


def test_alarms_cover_what_operators_must_hear_about(packaged: dict[str, Any]) -> None:
    alarms = resources(packaged, "AWS::CloudWatch::Alarm")
    text = json.dumps(alarms)
    for metric in ("ExecutionsFailed", "SmsFailed", "SmsRejected", "ThrottledRequests", "OpenExecutionCount",
                   "ApproximateAgeOfOldestMessage"):
        assert metric in text
    companies = [c["id"] for c in generate.registry("companies")]
    for company in companies:
        assert any(company in json.dumps(a) and "LookupAnswered" in json.dumps(a) for a in alarms.values())
    circuit_alarms = {next(d["Value"] for d in a["Properties"]["Dimensions"] if d["Name"] == "partner"): a
                      for a in alarms.values() if a["Properties"].get("MetricName") == "CircuitOpen"}
    assert set(circuit_alarms) == set(companies)
    for alarm in circuit_alarms.values():
        assert alarm["Properties"]["Statistic"] == "Maximum" and alarm["Properties"]["Threshold"] == 1
        assert alarm["Properties"]["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    (rejected,) = [a for a in alarms.values() if a["Properties"].get("MetricName") == "SmsRejected"]
    assert rejected["Properties"]["Threshold"] == 1
    assert rejected["Properties"]["Dimensions"] == [{"Name": "service", "Value": "yizhengtongcha"}]
    assert all(a["Properties"]["AlarmActions"] == [{"Ref": "OperatorTopic"}] for a in alarms.values())
    (dashboard,) = resources(packaged, "AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"][0]
    from chalicelib.telemetry import METRICS

    assert all(m in body for m in METRICS) and "5XXError" in body
    widgets = {w["properties"]["title"]: w["properties"]["metrics"] for w in json.loads(body)["widgets"]}
    (circuits,) = [lines for title, lines in widgets.items() if "circuits" in title]
    assert [(line[1], line[5], line[-1]) for line in circuits] == [
        ("CircuitOpen", c, {"stat": "Maximum"}) for c in companies] + [("CircuitsOpen", "cards", {"stat": "Maximum"})]
    (backlog,) = [lines for title, lines in widgets.items() if "backlog" in title]
    assert {(line[1], line[5]) for line in backlog} == {(m, c) for m in ("LookupDeferred", "LookupExpired")
                                                        for c in companies}


def test_deadlines_start_every_minute_and_late_or_missing_deadline_minutes_and_dead_replies_alarm(
        packaged: dict[str, Any]) -> None:
    """SPEC §2: the starter runs every minute; every kind the deadline machinery sweeps has an alarm that fires
    when its minute runs late or when no minute of it ran at all (missing data breaches); a reply failing every
    try lands in the reply dead-letter queue, which alarms."""
    from chalicelib import contracts
    from chalicelib.engine.deadlines import COMPLETABLE
    from local.aws import REPLY_MAX_RECEIVES

    env = generate.stage_env(STAGE)
    starter = packaged["Resources"][contracts.START_DEADLINES.logical_id]["Properties"]
    ((event,),) = [list(starter["Events"].values())]
    assert event == {"Type": "Schedule", "Properties": {"Schedule": "rate(1 minute)"}}

    reply_queue = packaged["Resources"]["ReplyQueue"]["Properties"]
    dead_letters = packaged["Resources"]["ReplyDeadLetterQueue"]
    assert reply_queue["QueueName"] == env["REPLY_QUEUE_NAME"]
    assert dead_letters["Type"] == "AWS::SQS::Queue" and dead_letters["Properties"]["QueueName"] == env[
        "REPLY_DLQ_NAME"]
    assert reply_queue["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": ["ReplyDeadLetterQueue", "Arn"]},
                                            "maxReceiveCount": REPLY_MAX_RECEIVES}
    consumer = packaged["Resources"][contracts.REPLIES_FAILED.logical_id]["Properties"]
    ((source,),) = [list(consumer["Events"].values())]
    assert source["Type"] == "SQS" and source["Properties"]["Queue"]["Fn::Sub"].endswith(":" + env["REPLY_DLQ_NAME"])

    alarms = resources(packaged, "AWS::CloudWatch::Alarm")
    dead = alarms["ReplyDeadLetterAlarm"]["Properties"]
    assert (dead["Namespace"], dead["MetricName"], dead["Statistic"]) == (
        "AWS/SQS", "ApproximateNumberOfMessagesVisible", "Maximum")
    assert dead["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["ReplyDeadLetterQueue",
                                                                                 "QueueName"]}}]
    assert dead["Threshold"] == 1 and dead["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"

    late = {next(d["Value"] for d in a["Properties"]["Dimensions"] if d["Name"] == "kind"): a["Properties"]
            for a in alarms.values() if a["Properties"].get("MetricName") == "DeadlineLag"}
    assert set(late) == {kind.value for kind in contracts.ReplyType} == {kind.value for kind in COMPLETABLE}
    assert alarms["DeadlineLateAlarm"]["Properties"] is late["query"]  # the name README and runbooks use
    for kind, properties in late.items():
        assert properties["Namespace"] == "YiZhengTongCha" and properties["Statistic"] == "Maximum", kind
        assert properties["Dimensions"] == [{"Name": "service", "Value": "yizhengtongcha"},
                                            {"Name": "kind", "Value": kind}]
        assert properties["Threshold"] == 120000 and properties["ComparisonOperator"] == "GreaterThanThreshold"
        # Deadlines.step emits DeadlineLag every minute per kind (tests/test_deadlines.py): silence is an outage.
        assert properties["TreatMissingData"] == "breaching", kind
        assert properties["Period"] * properties["EvaluationPeriods"] >= 5 * 60  # several minutes' metrics


# -- least privilege, checked against what the code really calls --------------------------------
@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[CallRecorder]:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    from chalicelib import clients
    from local.lambdas import CURRENT
    from local.recording import recording

    # Each function has its own containers: a secret one function fetched is not in another's cache.
    providers: dict[Any, Any] = {}

    def secrets() -> Any:
        function = getattr(CURRENT, "function", None)
        return providers.setdefault(function, SecretsProvider(boto3_client=clients.client("secretsmanager")))

    monkeypatch.setattr(clients, "secrets", secrets)
    with recording() as recorder:
        yield recorder


MIXED = StackOptions(**{**BASE_OPTIONS.__dict__, "deadline_seconds": 120, "operators": FIXTURE_OPERATORS,
                        "partner_modes": "tencent=immediate,alibaba=error,jd=callback,meituan=silent"})


def _accepted(api: Client, stack: LocalStack, phone: str, id_last6: str) -> str:
    with acting_as("APIHandler"):
        response = submit(api, stack, phone, id_last6)
    assert response.status_code == 202, response.body
    assert stack.pump_once() == 1
    return response.json_body["query_id"]


def _released(api: Client, stack: LocalStack, phone: str, id_last6: str) -> str:
    """A recycled number's release (SPEC §10.2), accepted and started."""
    with acting_as("APIHandler"):
        assert request_code(api, phone).status_code == 202
        response = post_json(api, "/v1/number-releases", {"phone": phone, "id_last6": id_last6,
                                                           "code": latest_code(stack, phone)})
    assert response.status_code == 202, response.body
    assert stack.pump_once() == 1
    return str(response.json_body["release_id"])


def _lookup(stack: LocalStack, query_id: str, company: str) -> Lookup | None:
    """A lookup as it stands (read by the harness: not recorded)."""
    from chalicelib.storage.models import Lookup

    try:
        return Lookup.get(stack.app_module.lookups().lookup_id(query_id, company), consistent_read=True)
    except Lookup.DoesNotExist:
        return None


def _unsent(stack: LocalStack, query_id: str, company: str) -> bool:
    lookup = _lookup(stack, query_id, company)
    return lookup is not None and lookup.state == "unsent"


def _settled(stack: LocalStack, query_id: str) -> set[str]:
    from chalicelib.partners.lookups import stored_results
    from chalicelib.storage.models import QueryRecord

    return set(stored_results(QueryRecord.get(query_id, consistent_read=True)))


def _retry_queue_empty(stack: LocalStack) -> bool:
    counts = aws("sqs").get_queue_attributes(QueueUrl=stack.env["RETRY_QUEUE_URL"], AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return not any(int(count) for count in counts.values())


def _answers_by_callback_first(partner: PartnerSimulator, times: int = 1) -> None:
    """The partner posts its answer as a signed callback before answering the same in its 200: whoever
    sent the request then finds the lookup settled already and reads it back."""
    original = partner.handle
    left = [times]

    def handle(path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        status, answer = original(path, headers, body)
        if status == 200 and left[0] > 0:
            left[0] -= 1
            partner._call_back(json.loads(body)["callback_url"], answer)
        return status, answer

    partner.handle = handle  # type: ignore[method-assign]  # the behaviour injected into this partner


def _fails_first(partner: PartnerSimulator, failures: int) -> None:
    """The partner answers 503 to the first `failures` requests for each lookup, then as its mode says."""
    original = partner.handle
    tries: dict[str, int] = {}

    def handle(path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        lookup_id = json.loads(body)["lookup_id"]
        tries[lookup_id] = tries.get(lookup_id, 0) + 1
        if tries[lookup_id] <= failures:
            return 503, {"error": "overloaded"}
        return original(path, headers, body)

    partner.handle = handle  # type: ignore[method-assign]  # the behaviour injected into this partner


def _set_modes(stack: LocalStack, default: str, **modes: str) -> None:
    """Every partner's mode, any behaviour added by the helpers above removed."""
    for company, partner in stack.partners.items():
        partner.__dict__.pop("handle", None)
        partner.mode = modes.get(company, default)


# The drive asks codes for numbers it used a moment before (a release after a query, disputes after both).
@pytest.mark.usefixtures("codes_without_resend_gap")  # tests/conftest.py
@pytest.mark.parametrize("stack_options", [MIXED])
def test_every_aws_action_the_code_calls_is_granted_to_its_function_and_nothing_more(
        packaged: dict[str, Any], stack: LocalStack, api: Client, recorder: CallRecorder) -> None:
    """Drive every path once, recording each AWS call by the function making it: codes, wrong code,
    query, limit, rollback, status, every workflow step (the fan-out retried), immediate, error and
    callback answers, duplicates; a flaky partner through the retry queue; a partner down until its
    circuit opens, then the delivery job's probe and replay; a failed replay back to the retry queue."""
    from moto.sqs.models import SQSBackend

    from chalicelib.storage import models

    phone = "13812345678"
    with acting_as("APIHandler"):
        assert request_code(api, phone).status_code == 202
        post_json(api, "/v1/queries", {"phone": phone, "id_last6": "12345X", "code": "000000"})
        response = submit(api, stack, phone, "12345X", latest_code(stack, phone))
        query_id = response.json_body["query_id"]
        api.http.get(f"/v1/queries/{query_id}")
        assert api.http.get("/v1/challenges").status_code == 200  # signed with the altcha key
    with acting_as("APIHandler"), time_machine.travel(time.time() + 61, tick=True):
        assert submit(api, stack, phone, "12345X").status_code == 429  # a fresh code, a held limit
    # the reply step: SNS refuses once (the idempotency record is released), then the
    # result is lost once (the retry finds the completed record)
    from botocore.exceptions import ClientError

    from chalicelib import clients

    failures = {"sns": 1}

    def refuse_once(**_: Any) -> None:
        if failures["sns"]:
            failures["sns"] -= 1
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "Publish")

    clients.client("sns").meta.events.register("before-call.sns.Publish", refuse_once)
    # the fan-out's result is lost once: the retried step finds its lookups stored (and reads them)
    stack.dispatcher.lose_results["ask_companies"] = 1
    assert stack.pump_once() == 1
    meituan = stack.partners["meituan"]
    wait_for(lambda: meituan.requests, 20, "meituan asked")
    wait_for(lambda: stack.dispatcher.calls.count("ask_companies") == 2, 20, "the fan-out retried")
    # douyin (flaky in the fixtures) is answered from the retry queue; meituan, silent, answers last
    others = {c for c in stack.partners if c != "meituan"}
    wait_for(lambda: _settled(stack, query_id) >= others, 30, "every company but meituan settled")
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

    def send_message(self: SQSBackend, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        if queue_name == stack.env["START_QUEUE_NAME"] and refusing.pop("once", False):
            from moto.core.exceptions import JsonRESTError

            raise JsonRESTError("ServiceUnavailable", "injected")
        return original(self, queue_name, *args, **kwargs)

    SQSBackend.send_message = send_message  # type: ignore[method-assign]  # the fault injected into moto
    try:
        with acting_as("APIHandler"):
            other = "13900001111"
            assert request_code(api, other).status_code == 202
            rollback = post_json(api, "/v1/queries", {"phone": other, "id_last6": "010203",
                                                      "code": latest_code(stack, other)})
            assert rollback.status_code == 503
    finally:
        SQSBackend.send_message = original  # type: ignore[method-assign]

    # The carrier says the ID digits do not match: VerifyCarrier claims the failure reply itself.
    mismatch = _accepted(api, stack, "13312345678", "010101")
    assert wait_finished(stack, mismatch)["status"] == "SUCCEEDED"

    # Every company answers in its 200: the fan-out itself claims the reply.
    _set_modes(stack, "immediate")
    assert wait_finished(stack, _accepted(api, stack, "19912345678", "121212"))["status"] == "SUCCEEDED"

    # The retry queue settles the last lookup: baidu fails once and answers twice (callback, then
    # its 200: the retry reads the stored answer back), douyin fails twice and answers last, in its 200.
    _set_modes(stack, "immediate")
    baidu, douyin = stack.partners["baidu"], stack.partners["douyin"]
    _fails_first(baidu, 1)
    _answers_by_callback_first(baidu)
    _fails_first(douyin, 2)
    callbacks = {name: len(partner.callbacks) for name, partner in stack.partners.items()}
    retried = _accepted(api, stack, "13700002222", "150617")
    assert wait_finished(stack, retried)["status"] == "SUCCEEDED"
    assert baidu.callbacks[callbacks["baidu"]:] == [200] and len(douyin.callbacks) == callbacks["douyin"]

    # A partner down: its transient failures open its circuit; while open no query sends it anything.
    _set_modes(stack, "immediate", kuaishou="down")
    pending = []
    for candidate, id_last6 in [("15012345678", "281234"), ("18812345678", "31002X"), ("19212345678", "090909")]:
        pending.append(_accepted(api, stack, candidate, id_last6))
        wait_for(lambda: _unsent(stack, pending[-1], "kuaishou"), 20, "kuaishou's lookup in its backlog")
    wait_for(lambda: circuit("kuaishou")["failures"] >= 5, 20, "five transient failures (fan-outs and nudges)")
    assert not circuit("kuaishou")["is_open"]
    # SPEC §4: it opens once the partner has answered nothing for 30 s; the clock stands 31 s later
    # rather than the test waiting them out.
    with time_machine.travel(time.time() + 31, tick=True):
        pending.append(_accepted(api, stack, "16612345678", "190827"))
        wait_for(lambda: _unsent(stack, pending[-1], "kuaishou"), 20, "kuaishou's lookup in its backlog")
        assert circuit("kuaishou")["is_open"], "30 s of failures open the circuit"
        # Nudges sent before it opened come back and find it open: they leave their lookups in the backlog.
        wait_for(lambda: _retry_queue_empty(stack), 40, "the retry queue drained")
    # It recovers: a minute later the delivery job probes it (the probe's answer arrives by callback
    # first), the circuit closes and the backlog is replayed, releasing the waiting queries.
    kuaishou = stack.partners["kuaishou"]
    kuaishou.mode = "immediate"
    _answers_by_callback_first(kuaishou)
    kuaishou_callbacks = len(kuaishou.callbacks)
    probe_at = circuit("kuaishou")["next_probe_at"]  # a minute after it opened, on the clock that stood 31 s later
    assert stack.deliver_once(now=probe_at - 1)["kuaishou"] == 0
    assert stack.deliver_once(now=probe_at)["kuaishou"] == len(pending)
    assert not circuit("kuaishou")["is_open"] and kuaishou.callbacks[kuaishou_callbacks:] == [200]
    for waiting in pending:
        assert wait_finished(stack, waiting)["status"] == "SUCCEEDED"

    # A closed circuit's due backlog fails again during the delivery job: back to the retry queue.
    _set_modes(stack, "immediate", alipay="down")
    failing = _accepted(api, stack, "18912345678", "071234")
    wait_for(lambda: _unsent(stack, failing, "alipay"), 20, "alipay's lookup in its backlog")
    requests_before = len(stack.partners["alipay"].requests)
    assert stack.deliver_once(now=time.time() + 3)["alipay"] == 1  # its 1 s backoff is due by then
    assert len(stack.partners["alipay"].requests) >= requests_before + 1 and not circuit("alipay")["is_open"]

    # SPEC §10.2: a release whose carrier matches (the 30-day lock kept, every company asked, one answering
    # by callback with a duplicate) and one that mismatches (the lock given back), then its status.
    _set_modes(stack, "immediate", tencent="callback")
    tencent_callbacks = len(stack.partners["tencent"].callbacks)
    released = _released(api, stack, "19912345678", "121212")
    assert wait_finished(stack, released)["status"] == "SUCCEEDED"
    wait_for(lambda: stack.partners["tencent"].callbacks[tencent_callbacks:] == [200], 20, "tencent's callback")
    duplicate = json.dumps({"release_id": released, "unbound": 0}).encode()
    with acting_as("APIHandler"):
        assert api.http.post("/v1/partners/tencent/releases", body=duplicate, headers=signing.signed_headers(
            stack.secrets["yztc/partners/tencent"], duplicate)).status_code == 200
        assert api.http.get(f"/v1/number-releases/{released}").status_code == 200
    assert wait_finished(stack, _released(api, stack, "13312345678", "010101"))["status"] == "SUCCEEDED"

    # SPEC §8: every dispute path, on the replies above (13812345678, 15012345678).
    from tests.test_disputes import drive_every_dispute_path

    drive_every_dispute_path(stack, api, queries=False)

    # The deadline path: a query whose partner never answers, and a dispute whose company never does,
    # answered by the deadline step once their deadlines passed (the step as its execution runs it).
    _set_modes(stack, "immediate", tencent="silent")
    stranded = _accepted(api, stack, "18012345678", "080808")
    wait_for(lambda: _settled(stack, stranded) >= set(stack.partners) - {"tencent"}, 30, "all but tencent settled")
    from chalicelib.contracts import DisputeStatus, ReplyType, TaskState
    from chalicelib.engine.deadlines import Deadlines
    from chalicelib.storage.models import Dispute, at
    from local.lambdas import FakeContext

    now = int(time.time())  # a dispute forwarded and never answered, as intake and Forward leave it
    Dispute("SILENTDISPUTE0001", company="alibaba", status=DisputeStatus.FORWARDED, created_at=now,
            deadline_at=now + 60, lock_key="dispute#x#alibaba", state=TaskState.PENDING, attempts=0,
            ttl=at(now + 86400), **Deadlines().entry(ReplyType.DISPUTE, "SILENTDISPUTE0001", now + 60)).save()

    with time_machine.travel(time.time() + 16 * 86400, tick=True), acting_as("DeadlineStep"):
        for kind in ("query", "dispute"):
            stack.app_module.deadline_step({"kind": kind, "slot": int(time.time()) - 60}, FakeContext("deadline_step"))
    wait_finished(stack, stranded)

    # Dead letters: a reply and a dispute outcome that failed every try end in a terminal status all the same.
    from chalicelib.contracts import QueryStatus
    from chalicelib.storage.models import QueryRecord

    now = int(time.time())
    QueryRecord("00000000-0000-4000-8000-00000000dead", status=QueryStatus.LOOKING_UP, created_at=now,
                deadline_at=now + 600, data_key="x", phone_sealed="x", lock_key="x", ttl=at(now + 86400),
                **Deadlines().entry(ReplyType.QUERY, "00000000-0000-4000-8000-00000000dead", now + 600)).save()
    Dispute("DEADLETTERDISPUTE", company="alibaba", status=DisputeStatus.FORWARDED, created_at=now,
            deadline_at=now + 600, lock_key="dispute#y#alibaba", state=TaskState.PENDING, attempts=0,
            ttl=at(now + 86400), **Deadlines().entry(ReplyType.DISPUTE, "DEADLETTERDISPUTE", now + 600)).save()
    sqs = clients.client("sqs")
    for kind, item_id in (("query", "00000000-0000-4000-8000-00000000dead"), ("dispute", "DEADLETTERDISPUTE")):
        sqs.send_message(QueueUrl=stack.env["REPLY_DLQ_URL"], MessageBody=json.dumps({"type": kind, "id": item_id}))
    wait_for(lambda: QueryRecord.get("00000000-0000-4000-8000-00000000dead").status == QueryStatus.FAILED, 20,
             "the dead-lettered query marked failed")
    wait_for(lambda: Dispute.get("DEADLETTERDISPUTE").deadline_slot is None, 20, "the dead-lettered dispute closed")

    _assert_called_is_granted(packaged, stack, recorder, models)


def _granted(packaged: dict[str, Any], statements: list[dict[str, Any]],
             secret_kind: dict[str, str]) -> set[tuple[str, str]]:
    """(action, resource) pairs a role's statements allow; resources as recorded (table, index, queue,
    secret kind), "" for the rest."""
    resources_ = packaged["Resources"]

    def target(resource: Any) -> str:
        if isinstance(resource, dict) and "Fn::GetAtt" in resource:
            properties = resources_[resource["Fn::GetAtt"][0]]
            if properties["Type"] == "AWS::DynamoDB::Table":
                return properties["Properties"]["TableName"]
            if properties["Type"] == "AWS::SQS::Queue":
                return properties["Properties"]["QueueName"]
        if isinstance(resource, dict) and "Fn::Sub" in resource:
            index = re.fullmatch(r"\$\{(\w+)\.Arn\}/index/(\w+)", resource["Fn::Sub"])
            if index:
                return resources_[index.group(1)]["Properties"]["TableName"] + "/index/" + index.group(2)
            prefix = re.fullmatch(r".*:secret:(.+)\*", resource["Fn::Sub"])
            if prefix:  # the operators' secrets, granted by their common name prefix
                return "secret:" + secret_kind[next(n for n in secret_kind if n.startswith(prefix.group(1)))]
        if isinstance(resource, dict) and "Ref" in resource:
            if resources_.get(resource["Ref"], {}).get("Type") == "AWS::SecretsManager::Secret":
                return "secret:" + secret_kind[resources_[resource["Ref"]]["Properties"]["Name"]]
        return ""

    granted: set[tuple[str, str]] = set()
    for statement in statements:
        if "kms:ViaService" in json.dumps(statement.get("Condition", {})):
            continue  # Secrets Manager decrypts with our key on the caller's behalf
        targets = statement.get("Resource", statement.get("NotResource"))
        for action in statement["Action"]:
            if action.startswith(("logs:", "xray:")) or action == "dynamodb:DescribeTable":
                continue  # the runtime's and PynamoDB's once-per-container calls
            granted |= {(action, target(t)) for t in (targets if isinstance(targets, list) else [targets])}
    return granted


def _assert_called_is_granted(packaged: dict[str, Any], stack: LocalStack, recorder: CallRecorder,
                              models: ModuleType) -> None:
    env = generate.stage_env(STAGE)
    names = {stack.env[var]: env[var] for var in [*models.TABLE_VARS.values(), "START_QUEUE_NAME",
                                                  "RETRY_QUEUE_NAME", "REPLY_QUEUE_NAME", "REPLY_DLQ_NAME"]}
    secret_kind = {stack.env["PEPPER_SECRET_NAME"]: "pepper", env["PEPPER_SECRET_NAME"]: "pepper",
                   stack.env["ALTCHA_SECRET_NAME"]: "altcha", env["ALTCHA_SECRET_NAME"]: "altcha",
                   **{c["secret_name"]: "partners" for c in generate.registry("companies")},
                   **{o["secret_name"]: "partners" for o in generate.registry("operators")},
                   **{c["secret_name"]: "carriers" for c in generate.registry("carriers")}}

    def deployed(action: str, resource: str) -> tuple[str, str]:
        if action.startswith("sqs:") and action.endswith("Batch"):  # IAM authorises a batch as its single action
            action = action.removesuffix("Batch")
        if action == "secretsmanager:GetSecretValue":
            return action, "secret:" + secret_kind[resource]
        table, _, index = resource.partition("/index/")
        return action, names.get(table, table) + (f"/index/{index}" if index else "")

    functions = resources(packaged, "AWS::Serverless::Function")
    assert set(generate.FUNCTION_ACCESS) == set(functions)
    for function, resource in functions.items():
        granted = _granted(packaged, _role_statements(packaged, function), secret_kind)
        called = {deployed(action, target) for f, action, target in recorder.calls if f == function}
        for event in resource["Properties"].get("Events", {}).values():
            if event["Type"] == "SQS":  # Lambda's SQS poller makes these with the role, not our code
                queue = event["Properties"]["Queue"]["Fn::Sub"].rsplit(":", 1)[-1]
                called |= {(action, queue) for action in
                           ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")}
        assert called - granted == set(), f"{function} calls what it may not: {called - granted}"
        assert granted - called == set(), f"{function} is granted what it never calls: {granted - called}"


@pytest.mark.parametrize("stack_options", [StackOptions(**{**BASE_OPTIONS.__dict__, "provision": "cloudformation"})])
def test_the_template_deployed_into_moto_answers_a_query_end_to_end(stack: LocalStack, api: Client) -> None:
    """Tables, key, queue and state machine come from the generated template via moto's CloudFormation."""
    cfn = aws("cloudformation")
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
def test_what_api_gateway_answers_itself_has_the_spec_error_shape(packaged: dict[str, Any]) -> None:
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


def test_a_waf_web_acl_with_managed_rules_and_a_per_ip_rate_limit_guards_the_api_stage(
        packaged: dict[str, Any]) -> None:
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
    # Every route a partner or an operator calls is exempt from the per-IP rule, and only those.
    import app as app_module
    from chalicelib.partners.kinds import PARTNER_ROUTE_PREFIXES

    exempt = json.dumps(rate["Statement"]["RateBasedStatement"]["ScopeDownStatement"])
    callback_routes = [path for path, methods in app_module.app.routes.items()
                       if "POST" in methods and path.startswith(PARTNER_ROUTE_PREFIXES)]
    assert {"/v1/partners/{company}/results", "/v1/operators/{operator}/results"} <= set(callback_routes)
    for prefix in PARTNER_ROUTE_PREFIXES:
        assert f'"SearchString": "{prefix}"' in exempt
    citizen_posts = [path for path, methods in app_module.app.routes.items()
                     if "POST" in methods and not path.startswith(PARTNER_ROUTE_PREFIXES)]
    assert citizen_posts and not any(path.startswith(p) for path in citizen_posts for p in PARTNER_ROUTE_PREFIXES)
    (association,) = resources(packaged, "AWS::WAFv2::WebACLAssociation").values()
    assert association["Properties"]["WebACLArn"] == {"Fn::GetAtt": ["WebAcl", "Arn"]}
    assert "${RestAPI}/stages/api" in association["Properties"]["ResourceArn"]["Fn::Sub"]


def test_the_api_is_traced_and_access_logged_without_bodies(packaged: dict[str, Any]) -> None:
    api = packaged["Resources"]["RestAPI"]
    assert api["Properties"]["TracingEnabled"] is True
    setting = api["Properties"]["AccessLogSetting"]
    assert setting["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    line = json.loads(setting["Format"])
    assert "$context.requestId" in line.values() and "$context.status" in line.values()
    assert not [v for v in line.values() if "body" in v.lower() or "$input" in v or "querystring" in v.lower()]
    assert "ApiGatewayAccount" in api["DependsOn"]


def test_queues_use_the_data_key_and_execution_starts_are_bounded(packaged: dict[str, Any]) -> None:
    for queue in resources(packaged, "AWS::SQS::Queue").values():
        assert queue["Properties"]["KmsMasterKeyId"] == {"Ref": "DataKey"}
    start = packaged["Resources"]["StartQueries"]["Properties"]
    assert 1 <= start["ReservedConcurrentExecutions"] <= 10


def test_every_checkov_skip_says_why(packaged: dict[str, Any]) -> None:
    skipped = [(name, entry) for name, resource in packaged["Resources"].items()
               for entry in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])]
    assert skipped
    for name, entry in skipped:
        assert re.fullmatch(r"CKV2?_AWS_\d+", entry["id"]) and len(entry["comment"]) > 20, (name, entry)

"""Build the CloudFormation merge template for one stage: `python -m infra.generate STAGE OUT`.

Everything is derived from the sources the code itself uses, so nothing can drift:
- tables from the PynamoDB models (chalicelib/storage/models.py: TABLE_VARS, each model's schema),
- names and function settings from the stage in .chalice/config.json,
- the state machine from stepfunctions/query.asl.json, its placeholders wired by DefinitionSubstitutions
  from chalicelib/contracts.py (WORKFLOW_FUNCTIONS, WORKFLOW_QUEUES), its role from what it calls,
- secrets, alarms and dashboard widgets from the company and carrier registries,
- IAM: one role per Lambda function with exactly the actions listed in FUNCTION_ACCESS.
`chalice package --merge-template` deep-merges the result onto Chalice's SAM template.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from chalicelib import contracts
from chalicelib.storage import models
from infra import disputes  # SPEC §8: the dispute workflow, its tables, roles, dashboard row and alarms
from infra.cfn import NAMESPACE, ROOT, get_att, logical, metric, ref, registry, stage_env, sub, table_logical

ASL_FILE = os.path.join(ROOT, "stepfunctions", "query.asl.json")
TABLE_VARS = models.TABLE_VARS  # model -> its table's environment variable: the tables, one list

# Function logical ids (contracts.FUNCTIONS, Chalice: PascalCase of the function name, plus Chalice's
# APIHandler) -> exactly what each may touch; tests/test_infra.py records what each really calls.
# "tables": table env var -> DynamoDB actions; DescribeTable is added for every table (PynamoDB
# reads the key schema once per container). "indexes": table env var -> {index: actions}.
# "queues": queue logical id -> SQS actions. A Lambda SQS event source polls with its function's
# role: ReceiveMessage, DeleteMessage and GetQueueAttributes are the poller's, not the code's.
_POLLER = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]
_SEND_REPLY = {"ReplyQueue": ["sqs:SendMessage"]}  # whoever settles a last answer claims and enqueues the reply
_IDEMPOTENCY = ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]
FUNCTION_ACCESS: dict[str, dict[str, Any]] = {
    contracts.API_HANDLER: {
        "tables": {
            "CODES_TABLE": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
            # a code request reads its number's and its client's counters at once (proof of work needed?)
            "THROTTLE_TABLE": ["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:UpdateItem",
                               "dynamodb:DeleteItem"],
            "QUERIES_TABLE": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                              "dynamodb:DeleteItem"],
            "LOOKUPS_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem"],
            # disputes (SPEC §8): intake (a refused start undone), status, partner answers; anything to dispute?
            "DISPUTES_TABLE": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
            "REPORTED_TABLE": ["dynamodb:GetItem"],
        },
        "kms": ["kms:GenerateDataKey"],
        "secrets": ["pepper", "altcha", "partners"],
        "sns_publish": True,
        "queues": {"StartQueue": ["sqs:SendMessage"], **_SEND_REPLY},
    },
    contracts.START_QUERIES.logical_id: {
        "queues": {"StartQueue": _POLLER},
        "states": ["states:StartExecution"],
    },
    contracts.VERIFY_CARRIER.logical_id: {
        "tables": {"QUERIES_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem"],
                   # a release's 30-day lock: kept from the carrier's match, given back otherwise (SPEC §10.2)
                   "THROTTLE_TABLE": ["dynamodb:UpdateItem", "dynamodb:DeleteItem"]},
        "kms": ["kms:Decrypt"],
        "secrets": ["carriers"],
        "queues": _SEND_REPLY,  # a carrier outcome other than a match ends the query
    },
    contracts.ASK_COMPANIES.logical_id: {
        "tables": {
            "QUERIES_TABLE": ["dynamodb:UpdateItem"],
            "LOOKUPS_TABLE": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
            "CIRCUITS_TABLE": ["dynamodb:BatchGetItem", "dynamodb:UpdateItem"],
        },
        "kms": ["kms:Decrypt"],
        "secrets": ["pepper", "partners"],
        "queues": {"RetryQueue": ["sqs:SendMessage"], **_SEND_REPLY},
    },
    contracts.SEND_REPLIES.logical_id: {
        "tables": {
            "QUERIES_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem"],
            # Powertools reads a conflicting record back from the failed conditional put
            # (ReturnValuesOnConditionCheckFailure): no GetItem.
            "IDEMPOTENCY_TABLE": _IDEMPOTENCY,
            "REPORTED_TABLE": ["dynamodb:BatchWriteItem"],  # which companies this reply listed accounts at
            "DISPUTES_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem"],  # a dispute's outcome SMS
            "THROTTLE_TABLE": ["dynamodb:DeleteItem"],  # the open-dispute lock
        },
        "kms": ["kms:Decrypt"],
        "secrets": ["pepper"],  # the phone's keyed hash, for the REPORTED_TABLE item
        "sns_publish": True,
        "queues": {"ReplyQueue": _POLLER},
    },
    contracts.REPLIES_FAILED.logical_id: {
        "tables": {
            "QUERIES_TABLE": ["dynamodb:UpdateItem"],
            "DISPUTES_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem"],
            "THROTTLE_TABLE": ["dynamodb:DeleteItem"],
        },
        "queues": {"ReplyDeadLetterQueue": _POLLER},
    },
    contracts.START_DEADLINES.logical_id: {
        "states": ["states:ListExecutions", "states:StartExecution"],
        "machine": "DeadlineStateMachine",
    },
    contracts.DEADLINE_STEP.logical_id: {
        "tables": {"QUERIES_TABLE": ["dynamodb:UpdateItem"], "DISPUTES_TABLE": ["dynamodb:UpdateItem"]},
        "indexes": {"QUERIES_TABLE": {"deadline": ["dynamodb:Query"]},
                    "DISPUTES_TABLE": {"deadline": ["dynamodb:Query"]}},
        "queues": _SEND_REPLY,
    },
    contracts.FORWARD_DISPUTE.logical_id: {
        "tables": {
            "DISPUTES_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem"],
            "CIRCUITS_TABLE": ["dynamodb:BatchGetItem", "dynamodb:UpdateItem"],
            "IDEMPOTENCY_TABLE": _IDEMPOTENCY,
        },
        "kms": ["kms:Decrypt"],
        "secrets": ["partners"],
        "sns_publish": True,
        "queues": {"RetryQueue": ["sqs:SendMessage"], **_SEND_REPLY},
    },
    contracts.RETRY_LOOKUPS.logical_id: {
        "tables": {
            "QUERIES_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem"],
            "LOOKUPS_TABLE": ["dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:UpdateItem"],
            "CIRCUITS_TABLE": ["dynamodb:BatchGetItem", "dynamodb:UpdateItem"],
            "DISPUTES_TABLE": ["dynamodb:BatchGetItem", "dynamodb:UpdateItem"],
        },
        "kms": ["kms:Decrypt"],
        "secrets": ["partners"],
        "queues": {"RetryQueue": [*_POLLER, "sqs:SendMessage"], **_SEND_REPLY},
    },
    contracts.DELIVER_BACKLOG.logical_id: {
        "tables": {
            "QUERIES_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem"],
            "LOOKUPS_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem"],
            "CIRCUITS_TABLE": ["dynamodb:BatchGetItem", "dynamodb:UpdateItem"],
            "DISPUTES_TABLE": ["dynamodb:UpdateItem"],
        },
        "indexes": {"LOOKUPS_TABLE": {"backlog": ["dynamodb:Query"]},
                    "DISPUTES_TABLE": {"backlog": ["dynamodb:Query"]}},
        "kms": ["kms:Decrypt"],
        "secrets": ["partners"],
        "queues": {"RetryQueue": ["sqs:SendMessage"], **_SEND_REPLY},
    },
}
# The workflow's placeholders: Lambda steps (-> the function's ARN) and tables it writes itself (-> the name).
WORKFLOW_FUNCTIONS = {fn.placeholder: fn.logical_id for fn in contracts.WORKFLOW_FUNCTIONS if fn.placeholder}
WORKFLOW_QUEUES = {"ReplyQueueUrl": "ReplyQueue"}  # contracts.WORKFLOW_QUEUES' placeholders -> the queue resource
DEADLINE_ASL_FILE = os.path.join(ROOT, "stepfunctions", "deadline.asl.json")


def _index(index: Mapping[str, Any]) -> dict[str, Any]:
    """A PynamoDB index description as CloudFormation's (on-demand: no throughput)."""
    return {"IndexName": index["index_name"], "KeySchema": _hash_first(index["key_schema"]),
            "Projection": index["projection"]}


def _hash_first(key_schema: Any) -> list[Any]:
    """CloudFormation wants the HASH key before the RANGE key; PynamoDB lists them in any order."""
    return sorted(key_schema, key=lambda key: key["KeyType"] != "HASH")


def table_resources(env: dict[str, str]) -> dict[str, Any]:
    """One table per model, as PynamoDB itself would create it (its _get_schema), on demand,
    with TTL where the model has one, point-in-time recovery and our KMS key."""
    resources = {}
    for model, var in TABLE_VARS.items():
        schema = model._get_schema()
        properties: dict[str, Any] = {
            "TableName": env[var],
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": schema["attribute_definitions"],
            "KeySchema": _hash_first(schema["key_schema"]),
        }
        if schema.get("global_secondary_indexes"):
            properties["GlobalSecondaryIndexes"] = [_index(i) for i in schema["global_secondary_indexes"]]
        if schema.get("local_secondary_indexes"):
            properties["LocalSecondaryIndexes"] = [_index(i) for i in schema["local_secondary_indexes"]]
        if models.TTL_ATTRIBUTE[model] is not None:
            properties["TimeToLiveSpecification"] = {"AttributeName": models.TTL_ATTRIBUTE[model], "Enabled": True}
        properties["PointInTimeRecoverySpecification"] = {"PointInTimeRecoveryEnabled": True}
        properties["SSESpecification"] = {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": ref("DataKey")}
        resources[table_logical(var)] = {"Type": "AWS::DynamoDB::Table", "DeletionPolicy": "Retain",
                                         "UpdateReplacePolicy": "Retain", "Properties": properties}
    return resources


def function_config(stage: str, name: str) -> Any:
    """Chalice's own view of one function's settings in a stage (per-function lambda_functions included)."""
    from chalice.config import Config
    from chalice.constants import DEFAULT_LAMBDA_TIMEOUT

    with open(os.path.join(ROOT, ".chalice", "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    return Config(chalice_stage=stage, function_name=name, config_from_disk=config,
                  default_params={"lambda_timeout": DEFAULT_LAMBDA_TIMEOUT})


def retry_queue_resources(env: dict[str, str], stage: str) -> dict[str, Any]:
    """The delay queue that brings a lookup back after its backoff (chalicelib/partners/delivery.py).

    A nudge is useless once its query's deadline passed, so it is kept no longer than that (and a
    day). It is only a nudge: the lookup waits in the backlog index, and the delivery job sends it
    whatever happens to the message, so a message failing again and again is set aside, not kept.
    """
    timeout = int(function_config(stage, contracts.RETRY_LOOKUPS.name).lambda_timeout)
    retention = min(1209600, int(env.get("QUERY_DEADLINE_SECONDS", "172800")) + 86400)
    return {
        "RetryDeadLetterQueue": {"Type": "AWS::SQS::Queue", "Properties": {
            "QueueName": env["RETRY_QUEUE_NAME"] + "-dlq", "MessageRetentionPeriod": retention,
            "KmsMasterKeyId": ref("DataKey"), "KmsDataKeyReusePeriodSeconds": 3600}},
        "RetryQueue": {"Type": "AWS::SQS::Queue", "Properties": {
            "QueueName": env["RETRY_QUEUE_NAME"], "MessageRetentionPeriod": retention,
            # AWS's advice for a Lambda event source: six times the function's timeout.
            "VisibilityTimeout": 6 * timeout, "KmsMasterKeyId": ref("DataKey"), "KmsDataKeyReusePeriodSeconds": 3600,
            "RedrivePolicy": {"deadLetterTargetArn": get_att("RetryDeadLetterQueue"), "maxReceiveCount": 5}}},
    }


def secret_resources(env: dict[str, str]) -> dict[str, Any]:
    secrets = {"PepperSecret": (env["PEPPER_SECRET_NAME"], "HMAC pepper for phone-number keys"),
               "AltchaSecret": (env["ALTCHA_SECRET_NAME"], "HMAC key signing proof-of-work challenges (SPEC §3)")}
    for kind in ("companies", "carriers", "operators"):
        for entry in registry(kind):
            secrets[logical(entry["secret_name"]) + "Secret"] = (
                entry["secret_name"], f"Shared HMAC secret with {entry['name']} ({entry['id']})")
    return {
        name: {"Type": "AWS::SecretsManager::Secret", "Properties": {
            "Name": secret_name, "Description": description, "KmsKeyId": ref("DataKey"),
            "GenerateSecretString": {"PasswordLength": 64, "ExcludePunctuation": True}}}
        for name, (secret_name, description) in secrets.items()
    }


def secret_arns(kind: str) -> list[Any]:
    """pepper, carriers, or partners: the companies' secrets one by one, and the operators' by their
    common name prefix (132 ARNs would not fit a role's inline-policy size limit)."""
    if kind == "pepper":
        return [ref("PepperSecret")]
    if kind == "altcha":
        return [ref("AltchaSecret")]
    if kind == "carriers":
        return [ref(logical(entry["secret_name"]) + "Secret") for entry in registry("carriers")]
    prefix = os.path.commonprefix([entry["secret_name"] for entry in registry("operators")])
    return [*(ref(logical(entry["secret_name"]) + "Secret") for entry in registry("companies")),
            sub("arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:" + prefix + "*")]


def index_arn(var: str, index: str) -> dict[str, str]:
    model = next(m for m, v in TABLE_VARS.items() if v == var)
    names = {i["index_name"] for i in model._get_schema().get("global_secondary_indexes", [])}
    if index not in names:
        raise ValueError(f"{model.__name__} has no index {index!r}")
    return sub("${" + table_logical(var) + ".Arn}/index/" + index)


def role(function: str, access: dict[str, Any]) -> dict[str, Any]:
    statements: list[dict[str, Any]] = [
        {"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream",
                                                       "logs:PutLogEvents"],
         "Resource": sub("arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:"
                         "/aws/lambda/${AWS::StackName}-" + function + "*")},
        # X-Ray has no resource-level permissions: "*" is the only form AWS accepts.
        {"Sid": "Tracing", "Effect": "Allow", "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
         "Resource": "*"},
    ]
    for var, actions in access.get("tables", {}).items():
        statements.append({"Sid": logical(var.lower()), "Effect": "Allow",
                           "Action": sorted({*actions, "dynamodb:DescribeTable"}),
                           "Resource": get_att(table_logical(var))})
    for var, indexes in access.get("indexes", {}).items():
        for index, actions in indexes.items():
            statements.append({"Sid": logical(var.lower()) + logical(index) + "Index", "Effect": "Allow",
                               "Action": sorted(actions), "Resource": index_arn(var, index)})
    if access.get("kms"):
        statements.append({"Sid": "PersonalDataKey", "Effect": "Allow", "Action": access["kms"],
                           "Resource": get_att("DataKey")})
    secrets = [arn for kind in access.get("secrets", []) for arn in secret_arns(kind)]
    if secrets:
        statements.append({"Sid": "Secrets", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
                           "Resource": secrets})
        statements.append({"Sid": "SecretsKey", "Effect": "Allow", "Action": ["kms:Decrypt"],
                           "Resource": get_att("DataKey"),
                           "Condition": {"StringEquals": {"kms:ViaService": sub(
                               "secretsmanager.${AWS::Region}.amazonaws.com")}}})
    if access.get("sns_publish"):
        # SMS to a phone number has no resource ARN; deny topics so only SMS can be sent.
        statements.append({"Sid": "Sms", "Effect": "Allow", "Action": ["sns:Publish"], "NotResource":
                           sub("arn:${AWS::Partition}:sns:*:*:*")})
    for queue, actions in access.get("queues", {}).items():
        statements.append({"Sid": queue, "Effect": "Allow", "Action": sorted(actions),
                           "Resource": get_att(queue)})
    if access.get("queues"):
        # The queues are encrypted with the data key: SQS uses it on the sender's and receiver's behalf.
        statements.append({"Sid": "QueueKey", "Effect": "Allow",
                           "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": get_att("DataKey"),
                           "Condition": {"StringEquals": {"kms:ViaService": sub("sqs.${AWS::Region}.amazonaws.com")}}})
    if access.get("states"):
        statements.append({"Sid": "Workflow", "Effect": "Allow", "Action": access["states"],
                           "Resource": ref(access.get("machine", "QueryStateMachine"))})
    return {"Type": "AWS::IAM::Role", "Properties": {
        "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
        "Policies": [{"PolicyName": "least-privilege", "PolicyDocument": {
            "Version": "2012-10-17", "Statement": statements}}],
    }}


def _states(definition: dict[str, Any]) -> list[dict[str, Any]]:
    """Every state of a definition, nested ones (Parallel branches, Map iterators) included."""
    found = []
    for state in definition.get("States", {}).values():
        found.append(state)
        for branch in [*state.get("Branches", []), state.get("Iterator"), state.get("ItemProcessor")]:
            if branch:
                found += _states(branch)
    return found


def machine_role(statements: list[dict[str, Any]]) -> dict[str, Any]:
    """A state machine's role: its own statements, plus log delivery and X-Ray (no resource-level permissions)."""
    return {"Type": "AWS::IAM::Role", "Properties": {
        "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
        "Policies": [{"PolicyName": "least-privilege", "PolicyDocument": {"Version": "2012-10-17", "Statement": [
            *statements,
            {"Sid": "Logging", "Effect": "Allow", "Resource": "*", "Action": [
                "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
                "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
                "logs:DescribeResourcePolicies", "logs:DescribeLogGroups"]},
            {"Sid": "Tracing", "Effect": "Allow", "Resource": "*", "Action": [
                "xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
                "xray:GetSamplingTargets"]},
        ]}}]}}


def state_machine(env: dict[str, str], stage: str) -> dict[str, Any]:
    with open(ASL_FILE, encoding="utf-8") as fh:
        definition = json.load(fh)
    if set(contracts.WORKFLOW_QUEUES) != set(WORKFLOW_QUEUES) or any(
            "arn:aws:states:::sqs:sendMessage" != st["Resource"] for st in _states(definition)
            if st.get("Type") == "Task" and st["Resource"].startswith("arn:aws:states:::")):
        raise ValueError("the workflow's own integrations: only sqs:sendMessage to contracts.WORKFLOW_QUEUES")
    queues: list[dict[str, Any]] = [{"Sid": "ReplyQueue", "Effect": "Allow", "Action": ["sqs:SendMessage"],
               "Resource": [get_att(queue) for queue in WORKFLOW_QUEUES.values()]},
              # The queues are encrypted with the data key: SQS uses it on the sender's behalf.
              {"Sid": "QueueKey", "Effect": "Allow", "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
               "Resource": get_att("DataKey"),
               "Condition": {"StringEquals": {"kms:ViaService": sub("sqs.${AWS::Region}.amazonaws.com")}}}]
    return {
        "StateMachineLogGroup": {"Type": "AWS::Logs::LogGroup", "Properties": {
            "LogGroupName": f"/aws/vendedlogs/states/yztc-{stage}-query", "RetentionInDays": 90}},
        "StateMachineRole": machine_role([
            {"Sid": "InvokeSteps", "Effect": "Allow", "Action": ["lambda:InvokeFunction"],
             "Resource": [get_att(fn) for fn in WORKFLOW_FUNCTIONS.values()]},
            # CarrierNotAnswered: the workflow's own send to the reply queue.
            *queues]),
        "QueryStateMachine": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
            "StateMachineName": env["STATE_MACHINE_NAME"],
            "StateMachineType": "STANDARD",
            "DefinitionString": json.dumps(definition, ensure_ascii=False, indent=1),
            "DefinitionSubstitutions": {
                **{placeholder: get_att(fn) for placeholder, fn in WORKFLOW_FUNCTIONS.items()},
                **{placeholder: ref(queue) for placeholder, queue in WORKFLOW_QUEUES.items()}},
            "RoleArn": get_att("StateMachineRole"),
            # ERROR level and no execution data: the history holds no personal data, but logs
            # are read by more people than the console, so they carry none at all.
            "LoggingConfiguration": {"Level": "ERROR", "IncludeExecutionData": False, "Destinations": [
                {"CloudWatchLogsLogGroup": {"LogGroupArn": get_att("StateMachineLogGroup")}}]},
            "TracingConfiguration": {"Enabled": True},
        }},
    }


def deadline_machine(env: dict[str, str], stage: str) -> dict[str, Any]:
    """stepfunctions/deadline.asl.json: one execution per kind and slot (SPEC §2), started by StartDeadlines."""
    with open(DEADLINE_ASL_FILE, encoding="utf-8") as fh:
        definition = json.load(fh)
    steps = {fn.placeholder: fn.logical_id for fn in contracts.DEADLINE_WORKFLOW_FUNCTIONS if fn.placeholder}
    return {
        "DeadlineStateMachineLogGroup": {"Type": "AWS::Logs::LogGroup", "Properties": {
            "LogGroupName": f"/aws/vendedlogs/states/yztc-{stage}-deadline", "RetentionInDays": 90},
            "Metadata": {"checkov": {"skip": [{"id": "CKV_AWS_158", "comment": (
                "ERROR level without execution data: no personal data; CloudWatch encrypts at rest")}]}}},
        "DeadlineStateMachineRole": machine_role([
            {"Sid": "InvokeSteps", "Effect": "Allow", "Action": ["lambda:InvokeFunction"],
             "Resource": [get_att(fn) for fn in steps.values()]}]),
        "DeadlineStateMachine": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
            "StateMachineName": env.get("DEADLINE_STATE_MACHINE_NAME", f"yztc-{stage}-deadline"),
            "StateMachineType": "STANDARD",
            "DefinitionString": json.dumps(definition, ensure_ascii=False, indent=1),
            "DefinitionSubstitutions": {placeholder: get_att(fn) for placeholder, fn in steps.items()},
            "RoleArn": get_att("DeadlineStateMachineRole"),
            "LoggingConfiguration": {"Level": "ERROR", "IncludeExecutionData": False, "Destinations": [
                {"CloudWatchLogsLogGroup": {"LogGroupArn": get_att("DeadlineStateMachineLogGroup")}}]},
            "TracingConfiguration": {"Enabled": True},
        }},
    }


def reply_queue_resources(env: dict[str, str], stage: str) -> dict[str, Any]:
    """The one reply route (engine/deadlines.py): a reply failing REPLY_MAX_RECEIVES times lands in the
    dead-letter queue, whose consumer marks the query failed (and the alarm fires)."""
    from local.aws import REPLY_MAX_RECEIVES

    timeout = int(function_config(stage, contracts.SEND_REPLIES.name).lambda_timeout)
    return {
        "ReplyDeadLetterQueue": {"Type": "AWS::SQS::Queue", "Properties": {
            "QueueName": env["REPLY_DLQ_NAME"], "MessageRetentionPeriod": 1209600,
            "VisibilityTimeout": 6 * timeout,
            "KmsMasterKeyId": ref("DataKey"), "KmsDataKeyReusePeriodSeconds": 3600}},
        "ReplyQueue": {"Type": "AWS::SQS::Queue", "Properties": {
            "QueueName": env["REPLY_QUEUE_NAME"], "MessageRetentionPeriod": 1209600,
            "VisibilityTimeout": 6 * timeout, "KmsMasterKeyId": ref("DataKey"), "KmsDataKeyReusePeriodSeconds": 3600,
            "RedrivePolicy": {"deadLetterTargetArn": get_att("ReplyDeadLetterQueue"),
                              "maxReceiveCount": REPLY_MAX_RECEIVES}}},
    }


def dashboard(env: dict[str, str], stage: str) -> dict[str, Any]:
    companies = [c["id"] for c in registry("companies")]
    machine = ref("QueryStateMachine")
    widgets: list[dict[str, Any]] = []

    def widget(title: str, metrics: list[Any], view: str = "timeSeries") -> None:
        widgets.append({"type": "metric", "width": 12, "height": 6, "properties": {
            "title": title, "view": view, "region": "${AWS::Region}", "period": 300, "metrics": metrics}})

    widget("Queries accepted (accounts / phone cards) / releases accepted / replied / failed",
           [metric("QueryAccepted"), metric("CardQueryAccepted"), metric("ReleaseAccepted"), metric("QueryReplied"),
            metric("QueryFailed")])
    # SPEC §10.2: a release's result SMS went with a company's 暂未返回 (it let the 15 days pass).
    widget("Releases left unanswered per company (15 days)",
           [metric("ReleaseUnanswered", company=c["id"]) for c in registry("companies")])
    # Phone cards ask 132 operators: one widget per carrier group, and the worst operators by name.
    groups: dict[str, list[str]] = {}
    for entry in registry("operators"):
        groups.setdefault(entry.get("group", ""), []).append(entry["id"])
    for group, ids in groups.items():
        requested = ", ".join(f"r{i}" for i in range(len(ids)))
        answered = ", ".join(f"a{i}" for i in range(len(ids)))
        widget(f"{group}: lookups requested / answered (phone cards)", [
            [{"expression": f"SUM([{requested}])", "label": "requested", "id": "req"}],
            [{"expression": f"SUM([{answered}])", "label": "answered", "id": "ans"}],
            *([*metric(name, company=op)[:-1], {"id": f"{key}{i}", "visible": False}]
              for i, op in enumerate(ids) for key, name in (("r", "LookupRequested"), ("a", "LookupAnswered")))])
    widget("Worst operators: lookups deferred (transient failures), top 10", [[{
        "expression": f"SELECT SUM(LookupDeferred) FROM SCHEMA(\"{NAMESPACE}\", company, service) "
                      "GROUP BY company ORDER BY SUM() DESC LIMIT 10", "label": "deferred", "id": "worst"}]])
    rate_lines: list[Any] = []
    for i, company in enumerate(companies):
        rate_lines += [[{"expression": f"100*answered{i}/FILL(requested{i},1)", "label": company, "id": f"rate{i}"}],
                       [*metric("LookupRequested", company=company)[:-1], {"id": f"requested{i}", "visible": False}],
                       [*metric("LookupAnswered", company=company)[:-1], {"id": f"answered{i}", "visible": False}]]
    widget("Partner answer rate % per company", rate_lines)
    widget("Partner answer latency p90 (ms) per company",
           [metric("LookupLatency", "p90", company=c) for c in companies])
    widget("Executions", [["AWS/States", m, "StateMachineArn", "${QueryStateMachine}"] for m in
                          ("ExecutionsStarted", "ExecutionsSucceeded", "ExecutionsFailed", "ExecutionsTimedOut",
                           "ExecutionThrottled")] + [["AWS/States", "OpenExecutionCount", {"stat": "Maximum"}]])
    widget("SMS sent / failed / refused for good", [metric("SmsSent"), metric("SmsFailed"), metric("SmsRejected"),
                                                     metric("CodeSent"), metric("SmsChannelFull")])
    # The delivery job publishes CircuitOpen (0 or 1) for every partner every minute.
    widget("Partner circuits (1 = open); operators: how many are open",
           [metric("CircuitOpen", "Maximum", partner=c) for c in companies]
           + [metric("CircuitsOpen", "Maximum", kind="cards")])
    widget("Partner backlog per company: deferred (transient failure) / expired unsent",
           [metric(name, company=c) for name in ("LookupDeferred", "LookupExpired") for c in companies])
    widget("Partner faults: circuit opened / probed / closed, lookups refused, answers rejected",
           [metric(name, partner=c) for name in ("CircuitOpened", "CircuitProbe", "CircuitClosed") for c in companies]
           + [metric(name, company=c) for name in ("LookupRefused", "PartnerAnswerRejected") for c in companies])
    widget("API 4xx / 5xx", [["AWS/ApiGateway", m, "ApiName", "yizhengtongcha", "Stage", "api"]
                             for m in ("Count", "4XXError", "5XXError")])
    widget("Throttles and queues", [["AWS/DynamoDB", "ThrottledRequests", "TableName", env[v]]
                                    for v in TABLE_VARS.values()]
           + [["AWS/Lambda", "Throttles"], metric("StartDeferred"), metric("TransactionConflict"),
              *(["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", env[q], {"stat": "Maximum"}]
                for q in ("START_QUEUE_NAME", "RETRY_QUEUE_NAME"))])
    body = json.dumps({"widgets": widgets}, ensure_ascii=False)
    return {"Type": "AWS::CloudWatch::Dashboard", "Properties": {
        "DashboardName": f"yztc-{stage}", "DashboardBody": {"Fn::Sub": [body, {"QueryStateMachine": machine}]}}}


def alarm(description: str, threshold: Any, comparison: str, **spec: Any) -> dict[str, Any]:
    return {"Type": "AWS::CloudWatch::Alarm", "Properties": {
        "AlarmDescription": description, "Threshold": threshold, "ComparisonOperator": comparison,
        "EvaluationPeriods": spec.pop("EvaluationPeriods", 1), "TreatMissingData": spec.pop("missing", "notBreaching"),
        "AlarmActions": [ref("OperatorTopic")], "OKActions": [ref("OperatorTopic")], **spec}}


def throttled(index: int, table: str) -> dict[str, Any]:
    return {"Id": f"t{index}", "ReturnData": False, "MetricStat": {
        "Metric": {"Namespace": "AWS/DynamoDB", "MetricName": "ThrottledRequests",
                   "Dimensions": [{"Name": "TableName", "Value": table}]},
        "Period": 300, "Stat": "Sum"}}


DEADLINE_LATE_MS = 120000  # a slot swept over 2 minutes after it: the replies due then are late


def deadline_late_alarm_id(kind: contracts.ReplyType) -> str:
    """The query kind keeps the alarm's first logical id (renaming it would replace the deployed alarm and
    break the name README and runbooks use); every other kind is named after itself."""
    return "DeadlineLateAlarm" if kind is contracts.ReplyType.QUERY else f"DeadlineLate{logical(kind.value)}Alarm"


def deadline_late_alarms(service_dim: list[dict[str, str]]) -> dict[str, Any]:
    """SPEC §2: every reply and dispute outcome is due by its deadline. One alarm per kind the deadline
    machinery sweeps (the starter starts one execution per ReplyType and slot), on DeadlineLag, which
    Deadlines.step emits for its kind each time a slot's execution reaches its slot: every minute, whatever the
    traffic. So no data for 5 minutes means no deadline execution of that kind ran (starter stopped, machine
    failing before its step): missing data breaches."""
    return {deadline_late_alarm_id(kind): alarm(
        f"A {kind.value} deadline minute ran late (over 2 minutes after its slot), or none ran for 5 minutes: "
        f"{kind.value} replies due then are late. Check the DeadlineStateMachine's deadline-{kind.value}-* "
        "executions and StartDeadlines.", DEADLINE_LATE_MS, "GreaterThanThreshold", missing="breaching",
        Namespace=NAMESPACE, MetricName="DeadlineLag", Statistic="Maximum", Period=300,
        Dimensions=[*service_dim, {"Name": "kind", "Value": kind.value}]) for kind in contracts.ReplyType}


def alarms(env: dict[str, str]) -> dict[str, Any]:
    machine_dim = [{"Name": "StateMachineArn", "Value": ref("QueryStateMachine")}]
    service_dim = [{"Name": "service", "Value": "yizhengtongcha"}]
    out = {
        "FailedExecutionsAlarm": alarm("A query execution failed (FanOutFailed: its fan-out failed every retry, so "
                                       "partners may be unasked; the query is still answered at its deadline, "
                                       "暂未返回 for them). The cause is in the execution's history.", 1,
                                       "GreaterThanOrEqualToThreshold", Namespace="AWS/States",
                                       MetricName="ExecutionsFailed", Dimensions=machine_dim, Statistic="Sum",
                                       Period=300),
        "SmsFailuresAlarm": alarm("SMS could not be sent (SNS refused or throttled).", 5,
                                  "GreaterThanOrEqualToThreshold", Namespace=NAMESPACE, MetricName="SmsFailed",
                                  Dimensions=service_dim, Statistic="Sum", Period=300),
        "OpenExecutionsAlarm": alarm("Open executions near the account quota: queries will queue.",
                                     ref("OpenExecutionsAlarmThreshold"), "GreaterThanThreshold",
                                     Namespace="AWS/States", MetricName="OpenExecutionCount", Statistic="Maximum",
                                     Period=300),
        "StartQueueAgeAlarm": alarm("Accepted queries wait to start (Step Functions refusing starts).", 600,
                                    "GreaterThanThreshold", Namespace="AWS/SQS",
                                    MetricName="ApproximateAgeOfOldestMessage", Statistic="Maximum", Period=300,
                                    Dimensions=[{"Name": "QueueName", "Value": env["START_QUEUE_NAME"]}]),
        "StartDeadLetterAlarm": alarm("An accepted query could not be started for a day: start it by hand.", 1,
                                      "GreaterThanOrEqualToThreshold", Namespace="AWS/SQS",
                                      MetricName="ApproximateNumberOfMessagesVisible", Statistic="Maximum",
                                      Period=300, Dimensions=[{"Name": "QueueName",
                                                               "Value": get_att("StartDeadLetterQueue", "QueueName")}]),
        "DynamoDbThrottlesAlarm": alarm("DynamoDB throttled requests.", 1, "GreaterThanOrEqualToThreshold",
                                        Metrics=[{"Id": "total", "Expression": "SUM(METRICS())", "ReturnData": True},
                                                 *(throttled(i, env[v]) for i, v in enumerate(TABLE_VARS.values()))]),
        "SmsRejectedAlarm": alarm("A reply SMS was refused for good (over the length limit, or the number opted "
                                  "out): that citizen got no reply.", 1, "GreaterThanOrEqualToThreshold",
                                  Namespace=NAMESPACE, MetricName="SmsRejected", Dimensions=service_dim,
                                  Statistic="Sum", Period=300),
        # The job is the only way out of an open circuit: silence from it is an outage of its own.
        "DeliveryJobStoppedAlarm": alarm("The partner delivery job did not run, or failed, for 10 minutes: "
                                         "open circuits are neither probed nor replayed.", 1, "LessThanThreshold",
                                         EvaluationPeriods=2, missing="breaching", Metrics=[
                                             {"Id": "healthy", "Expression": "runs - errors", "ReturnData": True},
                                             *({"Id": key, "ReturnData": False, "MetricStat": {"Metric": {
                                                 "Namespace": "AWS/Lambda", "MetricName": name, "Dimensions": [
                                                     {"Name": "FunctionName", "Value": ref("DeliverBacklog")}]},
                                                 "Period": 300, "Stat": "Sum"}}
                                               for key, name in (("runs", "Invocations"), ("errors", "Errors")))]),
        **deadline_late_alarms(service_dim),
        "DeadlineExecutionsFailedAlarm": alarm("A deadline execution failed: the minute's replies were not all "
                                               "enqueued (the next minute catches up; find why).", 1,
                                               "GreaterThanOrEqualToThreshold", Namespace="AWS/States",
                                               MetricName="ExecutionsFailed", Statistic="Sum", Period=300,
                                               Dimensions=[{"Name": "StateMachineArn",
                                                            "Value": ref("DeadlineStateMachine")}]),
        "ReplyDeadLetterAlarm": alarm("A reply or dispute outcome SMS failed every try: its record is marked failed "
                                      "and that citizen got no SMS.", 1, "GreaterThanOrEqualToThreshold",
                                      Namespace="AWS/SQS", MetricName="ApproximateNumberOfMessagesVisible",
                                      Statistic="Maximum", Period=300,
                                      Dimensions=[{"Name": "QueueName",
                                                   "Value": get_att("ReplyDeadLetterQueue", "QueueName")}]),
    }
    for company in registry("companies"):
        dims = [*service_dim, {"Name": "company", "Value": company["id"]}]
        out[logical(company["id"]) + "AnswerRateAlarm"] = alarm(
            f"{company['name']} answers fewer lookups than the threshold.", ref("PartnerAnswerRateThreshold"),
            "LessThanThreshold", EvaluationPeriods=3, missing="notBreaching", Metrics=[
                {"Id": "rate", "Expression": "answered/requested", "ReturnData": True},
                *({"Id": key, "ReturnData": False, "MetricStat": {"Metric": {
                    "Namespace": NAMESPACE, "MetricName": name, "Dimensions": dims}, "Period": 3600, "Stat": "Sum"}}
                  for key, name in (("requested", "LookupRequested"), ("answered", "LookupAnswered")))])
        # The delivery job reports every partner's circuit each minute: an open one means the partner
        # fails and its lookups wait in the backlog (one probe a minute until it answers).
        out[logical(company["id"]) + "ReleasesUnansweredAlarm"] = alarm(
            f"{company['name']} let number releases pass their 15 days without an answer (SPEC §10.2).",
            ref("ReleasesUnansweredAlarmThreshold"), "GreaterThanOrEqualToThreshold", Namespace=NAMESPACE,
            MetricName="ReleaseUnanswered", Dimensions=dims, Statistic="Sum", Period=86400)
        out[logical(company["id"]) + "CircuitOpenAlarm"] = alarm(
            f"{company['name']}'s circuit is open: it fails every request; its lookups wait for it to recover.",
            1, "GreaterThanOrEqualToThreshold", Namespace=NAMESPACE, MetricName="CircuitOpen",
            Dimensions=[*service_dim, {"Name": "partner", "Value": company["id"]}], Statistic="Maximum", Period=300)
    # 132 operators: one alarm for any open operator circuit (the job counts them each minute), not one
    # per operator; the dashboard names the worst ones.
    out["OperatorCircuitOpenAlarm"] = alarm(
        "An operator's circuit is open (phone-card lookups): see the dashboard's worst operators.", 1,
        "GreaterThanOrEqualToThreshold", Namespace=NAMESPACE, MetricName="CircuitsOpen",
        Dimensions=[*service_dim, {"Name": "kind", "Value": "cards"}], Statistic="Maximum", Period=300)
    return out


SMS_SETTINGS_CODE = """
import boto3, cfnresponse
def handler(event, context):
    try:
        if event["RequestType"] != "Delete":
            p = event["ResourceProperties"]
            boto3.client("sns").set_sms_attributes(attributes={
                "DefaultSenderID": p["SenderId"], "DefaultSMSType": "Transactional",
                "MonthlySpendLimit": str(p["MonthlySpendLimit"])})
        cfnresponse.send(event, context, cfnresponse.SUCCESS, {})
    except Exception as exc:
        cfnresponse.send(event, context, cfnresponse.FAILED, {"Error": str(exc)[:200]})
"""


def template(stage: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The merge template for a stage (its names from .chalice/config.json, or `env`)."""
    env = env or stage_env(stage)
    deployed = {contracts.API_HANDLER, *(fn.logical_id for fn in contracts.FUNCTIONS)}
    if set(FUNCTION_ACCESS) != deployed:
        raise ValueError(f"FUNCTION_ACCESS must list every function: {sorted(set(FUNCTION_ACCESS) ^ deployed)}")
    functions: dict[str, Any] = {}
    for function in FUNCTION_ACCESS:
        functions[function] = {"Properties": {
            "Role": get_att(f"{function}Role"),
            "Environment": {"Variables": {
                "STATE_MACHINE_ARN": ref("QueryStateMachine"), "START_QUEUE_URL": ref("StartQueue"),
                "RETRY_QUEUE_URL": ref("RetryQueue"), "REPLY_QUEUE_URL": ref("ReplyQueue")}}}}
    # Only the starter names the deadline machine (its step must not refer to the machine that invokes it).
    functions[contracts.START_DEADLINES.logical_id]["Properties"]["Environment"]["Variables"][
        "DEADLINE_STATE_MACHINE_ARN"] = ref("DeadlineStateMachine")
    # Chalice names the queues from START_QUEUE_NAME and RETRY_QUEUE_NAME at package time (make
    # package sets them from the stage config); the env references order the event sources after them.
    from chalicelib.partners.kinds import PARTNER_ROUTE_PREFIXES

    partner_paths = [sub(f"execute-api:/*/POST{prefix}*") for prefix in PARTNER_ROUTE_PREFIXES]
    resources: dict[str, Any] = {
        **functions,
        **{f"{function}Role": role(function, access) for function, access in FUNCTION_ACCESS.items()},
        "DataKey": {"Type": "AWS::KMS::Key", "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
                    "Properties": {"Description": "一证通查: phone numbers and ID digits, tables, secrets",
                                   "EnableKeyRotation": True, "KeyPolicy": {"Version": "2012-10-17", "Statement": [
                                       {"Sid": "AccountAdministers", "Effect": "Allow",
                                        "Principal": {"AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")},
                                        "Action": "kms:*", "Resource": "*"}]}}},
        "DataKeyAlias": {"Type": "AWS::KMS::Alias", "Properties": {"AliasName": env["KMS_KEY_ID"],
                                                                   "TargetKeyId": ref("DataKey")}},
        **secret_resources(env),
        **table_resources(env),
        # Encrypted with the data key (checkov CKV_AWS_27): the messages hold only query ids, but the
        # key's CloudTrail record and policy then cover them like the tables.
        "StartDeadLetterQueue": {"Type": "AWS::SQS::Queue", "Properties": {
            "QueueName": env["START_QUEUE_NAME"] + "-dlq", "MessageRetentionPeriod": 1209600,
            "KmsMasterKeyId": ref("DataKey"), "KmsDataKeyReusePeriodSeconds": 3600}},
        "StartQueue": {"Type": "AWS::SQS::Queue", "Properties": {
            "QueueName": env["START_QUEUE_NAME"], "VisibilityTimeout": 180, "MessageRetentionPeriod": 1209600,
            "KmsMasterKeyId": ref("DataKey"), "KmsDataKeyReusePeriodSeconds": 3600,
            # A refused start comes back every 3 minutes for 3 days before it needs an operator.
            "RedrivePolicy": {"deadLetterTargetArn": get_att("StartDeadLetterQueue"), "maxReceiveCount": 1440}}},
        **retry_queue_resources(env, stage),
        **reply_queue_resources(env, stage),
        **state_machine(env, stage),
        **deadline_machine(env, stage),
        "OperatorTopic": {"Type": "AWS::SNS::Topic", "Properties": {
            "TopicName": f"yztc-{stage}-operators", "KmsMasterKeyId": "alias/aws/sns"}},
        "Dashboard": dashboard(env, stage),
        **alarms(env),
        "SmsSettingsRole": {"Type": "AWS::IAM::Role", "Properties": {
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
            "Policies": [{"PolicyName": "sms-settings", "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                # Account-level SMS settings have no resource ARN.
                {"Effect": "Allow", "Action": ["sns:SetSMSAttributes"], "Resource": "*"},
                {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                 "Resource": sub("arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:"
                                 "/aws/lambda/${AWS::StackName}-SmsSettings*")}]}}]}},
        "SmsSettingsFunction": {"Type": "AWS::Lambda::Function", "Properties": {
            "FunctionName": sub("${AWS::StackName}-SmsSettings"), "Runtime": "python3.11",
            "Handler": "index.handler", "Timeout": 30, "Role": get_att("SmsSettingsRole"),
            "Code": {"ZipFile": SMS_SETTINGS_CODE}}},
        "SmsSettings": {"Type": "Custom::SnsSmsSettings", "Properties": {
            "ServiceToken": get_att("SmsSettingsFunction"), "SenderId": env["SMS_SENDER_ID"],
            "MonthlySpendLimit": ref("SmsMonthlySpendLimit")}},
        "RestAPI": {"Properties": {
            "MethodSettings": [{"ResourcePath": "/*", "HttpMethod": "*",
                                "ThrottlingRateLimit": ref("ApiRateLimit"),
                                "ThrottlingBurstLimit": ref("ApiBurstLimit")}],
            # The callback routes answer only partners' and operators' networks; the rest is public.
            "DefinitionBody": {"x-amazon-apigateway-policy": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke",
                 "Resource": sub("execute-api:/*")},
                {"Effect": "Deny", "Principal": "*", "Action": "execute-api:Invoke", "Resource": partner_paths,
                 "Condition": {"NotIpAddress": {"aws:SourceIp": ref("PartnerCidrs")}}},
            ]}}}},
    }
    resources = deep_merge(resources, edge_resources(stage))
    return disputes.extend({
        "Parameters": {
            **EDGE_PARAMETERS,
            "SmsMonthlySpendLimit": {"Type": "Number", "Default": 5000,
                                     "Description": "SNS SMS monthly spend limit (USD)"},
            "ApiRateLimit": {"Type": "Number", "Default": 2000, "Description": "API steady requests per second"},
            "ApiBurstLimit": {"Type": "Number", "Default": 4000, "Description": "API burst"},
            "PartnerCidrs": {"Type": "CommaDelimitedList", "Default": "203.0.113.0/24",
                             "Description": "Networks partners call back from"},
            "PartnerAnswerRateThreshold": {"Type": "Number", "Default": 0.8,
                                           "Description": "Alarm when a company answers fewer lookups (0-1)"},
            "ReleasesUnansweredAlarmThreshold": {"Type": "Number", "Default": 1,
                                                 "Description": "Alarm when a company leaves this many number "
                                                                "releases unanswered in a day"},
            "OpenExecutionsAlarmThreshold": {"Type": "Number", "Default": 800000,
                                             "Description": "Alarm before the 1,000,000 open-execution quota"},
        },
        "Resources": resources,
        "Outputs": {"StateMachineArn": {"Value": ref("QueryStateMachine")},
                    "OperatorTopicArn": {"Value": ref("OperatorTopic")},
                    "DashboardName": {"Value": ref("Dashboard")}},
    }, env, stage, FUNCTION_ACCESS)


# -- the edge: API Gateway's own answers, access logs, tracing, WAF (issue 9) -------------------------
# What API Gateway answers itself, before any Lambda runs, in the SPEC error shape. The status and the
# code come from the same exception classes and STATUS_BY_ERROR as the app's own answers; None keeps
# API Gateway's status (the DEFAULT_* families cover many).
def gateway_errors() -> dict[str, tuple[Any, int | None]]:
    from chalicelib import errors

    not_found = errors.NotFound("没有这个地址。")
    return {
        # A path (or a method) API Gateway has no route for: its 403 "Missing Authentication Token".
        "MISSING_AUTHENTICATION_TOKEN": (not_found, 404),
        "RESOURCE_NOT_FOUND": (not_found, 404),
        "UNSUPPORTED_MEDIA_TYPE": (errors.UnsupportedMediaType(), 415),
        "REQUEST_TOO_LARGE": (errors.PayloadTooLarge(), 413),
        "THROTTLED": (errors.TooManyRequests(retry_after=1), 429),
        "QUOTA_EXCEEDED": (errors.TooManyRequests(retry_after=60), 429),
        # The resource policy (partner routes from outside PartnerCidrs) and WAF's own block action.
        "ACCESS_DENIED": (errors.Forbidden(), 403),
        "WAF_FILTERED": (errors.Forbidden(), 403),
        # A Lambda that timed out or failed to start: "try again shortly" rather than a bare 5xx.
        "INTEGRATION_TIMEOUT": (errors.ServiceBusy("服务繁忙，请稍后再试。", retry_after=1), 503),
        "INTEGRATION_FAILURE": (errors.ServiceBusy("服务繁忙，请稍后再试。", retry_after=1), 503),
        "DEFAULT_4XX": (errors.InvalidRequest(), None),
        "DEFAULT_5XX": (errors.ServiceError(), None),
    }


def error_body(error: Any) -> str:
    return json.dumps({"error": {"code": error.code, "message": error.message}}, ensure_ascii=False)


def gateway_responses() -> dict[str, Any]:
    from chalicelib.api.responses import STATUS_BY_ERROR

    out: dict[str, Any] = {}
    for response_type, (error, status) in gateway_errors().items():
        if status is not None:
            assert STATUS_BY_ERROR.get(type(error), 500) == status, response_type  # one status per error
        parameters = {"gatewayresponse.header.Content-Type": "'application/json; charset=utf-8'"}
        if error.retry_after is not None:
            parameters["gatewayresponse.header.Retry-After"] = f"'{error.retry_after}'"
        properties: dict[str, Any] = {
            "RestApiId": ref("RestAPI"), "ResponseType": response_type, "ResponseParameters": parameters,
            "ResponseTemplates": {"application/json": error_body(error)}}
        if status is not None:
            properties["StatusCode"] = str(status)
        out[f"GatewayResponse{logical(response_type.lower())}"] = {
            "Type": "AWS::ApiGateway::GatewayResponse", "Properties": properties}
    return out


# One JSON line per request: who, what route, how it ended, how long. Never a body, a query string or
# a header value (bodies hold phone numbers and ID digits; $context.path holds only opaque ids).
ACCESS_LOG_FORMAT = json.dumps({
    "requestId": "$context.requestId", "ip": "$context.identity.sourceIp", "time": "$context.requestTimeEpoch",
    "method": "$context.httpMethod", "resource": "$context.resourcePath", "status": "$context.status",
    "responseType": "$context.error.responseType", "length": "$context.responseLength",
    "latencyMs": "$context.responseLatency", "integrationLatencyMs": "$context.integrationLatency",
    "waf": "$context.waf.status", "xray": "$context.xrayTraceId"}, separators=(",", ":"))

WAF_RULE_COMMON = "AWSManagedRulesCommonRuleSet"
WAF_RULE_BAD_INPUTS = "AWSManagedRulesKnownBadInputsRuleSet"
EDGE_PARAMETERS = {
    "WafRateLimit": {"Type": "Number", "Default": 3000, "MinValue": 100,
                     "Description": "Requests per client IP per 5 minutes before WAF answers 429 (partner "
                                    "callbacks excluded). Generous: carrier-grade NAT puts many citizens "
                                    "behind one address"},
}


def _visibility(name: str) -> dict[str, Any]:
    return {"SampledRequestsEnabled": True, "CloudWatchMetricsEnabled": True, "MetricName": name}


def _managed(name: str, priority: int, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    statement: dict[str, Any] = {"VendorName": "AWS", "Name": name}
    if overrides:
        statement["RuleActionOverrides"] = [{"Name": rule, "ActionToUse": {"Count": {}}} for rule in overrides]
    return {"Name": name, "Priority": priority, "OverrideAction": {"None": {}},
            "Statement": {"ManagedRuleGroupStatement": statement}, "VisibilityConfig": _visibility(name)}


def web_acl(stage: str) -> dict[str, Any]:
    from chalicelib import errors
    from chalicelib.partners.kinds import PARTNER_ROUTE_PREFIXES

    matches = [{"ByteMatchStatement": {
        "FieldToMatch": {"UriPath": {}}, "PositionalConstraint": "CONTAINS", "SearchString": prefix,
        "TextTransformations": [{"Priority": 0, "Type": "LOWERCASE"}]}} for prefix in PARTNER_ROUTE_PREFIXES]
    # Every partner-facing route (companies' and operators' callbacks): 132 operators answering from few
    # addresses must not count against the per-IP rate rule.
    partner_routes = matches[0] if len(matches) == 1 else {"OrStatement": {"Statements": matches}}
    too_many = errors.TooManyRequests("请求过于频繁，请稍后再试。")
    return {
        "WebAcl": {"Type": "AWS::WAFv2::WebACL", "Properties": {
            "Name": f"yztc-{stage}-api", "Scope": "REGIONAL", "DefaultAction": {"Allow": {}},
            "Description": "yztc API: AWS managed rules and a per-IP rate limit in front of API Gateway",
            "VisibilityConfig": _visibility(f"yztc-{stage}-api"),
            "CustomResponseBodies": {
                "TooManyRequests": {"ContentType": "APPLICATION_JSON", "Content": error_body(too_many)},
                "Forbidden": {"ContentType": "APPLICATION_JSON", "Content": error_body(errors.Forbidden())}},
            "Rules": [
                # First line of defence against floods; the app's per-IP limits are backstops. Partners
                # call back from few addresses at high rates: their routes are not counted.
                {"Name": "RatePerIp", "Priority": 0, "VisibilityConfig": _visibility("RatePerIp"),
                 "Action": {"Block": {"CustomResponse": {
                     "ResponseCode": 429, "CustomResponseBodyKey": "TooManyRequests",
                     "ResponseHeaders": [{"Name": "Retry-After", "Value": "300"}]}}},
                 "Statement": {"RateBasedStatement": {
                     "Limit": ref("WafRateLimit"), "AggregateKeyType": "IP", "EvaluationWindowSec": 300,
                     "ScopeDownStatement": {"NotStatement": {"Statement": partner_routes}}}}},
                # SizeRestrictions_BODY blocks bodies over 8 KB: partner callbacks may carry up to 64 KiB
                # and the app answers oversize bodies 413 itself, so that rule only counts.
                _managed(WAF_RULE_COMMON, 1, ("SizeRestrictions_BODY",)),
                _managed(WAF_RULE_BAD_INPUTS, 2),
            ]}},
        "WebAclAssociation": {"Type": "AWS::WAFv2::WebACLAssociation", "DependsOn": ["RestAPIapiStage"],
                              "Properties": {"WebACLArn": get_att("WebAcl"), "ResourceArn": sub(
                                  "arn:${AWS::Partition}:apigateway:${AWS::Region}::/restapis/${RestAPI}/stages/api")}},
        # WAF logs hold headers and paths, never bodies; the signature header is redacted anyway.
        "WafLogGroup": {"Type": "AWS::Logs::LogGroup", "Properties": {
            "LogGroupName": f"aws-waf-logs-yztc-{stage}", "RetentionInDays": 90},
            "Metadata": skip(("CKV_AWS_158", "holds no personal data (no bodies); CloudWatch encrypts at rest"))},
        "WafLogging": {"Type": "AWS::WAFv2::LoggingConfiguration", "Properties": {
            "ResourceArn": get_att("WebAcl"), "LogDestinationConfigs": [get_att("WafLogGroup")],
            "RedactedFields": [{"SingleHeader": {"Name": "x-signature"}}]}},
    }


def skip(*checks: tuple[str, str]) -> dict[str, Any]:
    """checkov suppressions, each with its one-line reason (reported as skipped, not failed)."""
    return {"checkov": {"skip": [{"id": check, "comment": comment} for check, comment in checks]}}


NO_VPC = ("CKV_AWS_117", "calls only AWS public endpoints and partners on the internet; no private resource")
ENV_NOT_SECRET = ("CKV_AWS_173", "environment holds names and ARNs only; secrets are in Secrets Manager")
NO_ASYNC_DLQ = ("CKV_AWS_116", "never invoked asynchronously: the caller (API Gateway, Step Functions, the SQS "
                               "poller with its own DLQ) sees and handles every failure")
# StartExecution: bucket 1,300, refill 300/s (us-east-1). Each invocation starts up to 10 executions in
# ~100-300 ms, so 5 at once stay near or under the refill rate; the queue holds the rest.
START_QUERIES_CONCURRENCY = 5


def function_hardening() -> dict[str, Any]:
    shared_pool = ("CKV_AWS_115", "scales with its caller (API Gateway throttling, Step Functions quotas); "
                                  "reserving would carve the account pool")
    out: dict[str, Any] = {}
    for function in FUNCTION_ACCESS:
        if function == "StartQueries":
            out[function] = {"Properties": {"ReservedConcurrentExecutions": START_QUERIES_CONCURRENCY},
                             "Metadata": skip(NO_VPC, ENV_NOT_SECRET, NO_ASYNC_DLQ)}
        else:
            out[function] = {"Metadata": skip(NO_VPC, ENV_NOT_SECRET, NO_ASYNC_DLQ, shared_pool)}
    out["SmsSettingsFunction"] = {"Metadata": skip(
        NO_VPC, ("CKV_AWS_116", "a CloudFormation custom resource: invoked once per deployment, which waits"),
        ("CKV_AWS_115", "runs once per deployment"))}
    out["StateMachineLogGroup"] = {"Metadata": skip(
        ("CKV_AWS_158", "ERROR level without execution data: no personal data; CloudWatch encrypts at rest"))}
    return out


def edge_resources(stage: str) -> dict[str, Any]:
    return {
        **gateway_responses(),
        **web_acl(stage),
        **function_hardening(),
        "ApiAccessLogGroup": {"Type": "AWS::Logs::LogGroup", "Properties": {
            "LogGroupName": f"/aws/apigateway/yztc-{stage}-access", "RetentionInDays": 90},
            "Metadata": skip(("CKV_AWS_158", "access log lines carry no bodies and no personal data; "
                                             "CloudWatch encrypts at rest"))},
        # API Gateway writes logs with an account-wide role (one per account and region).
        "ApiGatewayCloudWatchRole": {"Type": "AWS::IAM::Role", "Metadata": skip(
            ("CKV_AWS_111", "API Gateway creates and names its log groups itself: the grants of AWS's managed "
                            "AmazonAPIGatewayPushToCloudWatchLogs, inline")), "Properties": {
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "apigateway.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
            # What AWS's AmazonAPIGatewayPushToCloudWatchLogs grants, inline: API Gateway names its
            # execution-log groups itself, per API and stage, hence no narrower resource.
            "Policies": [{"PolicyName": "push-logs", "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Resource": "*", "Action": [
                    "logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogGroups",
                    "logs:DescribeLogStreams", "logs:PutLogEvents", "logs:GetLogEvents",
                    "logs:FilterLogEvents"]}]}}]}},
        "ApiGatewayAccount": {"Type": "AWS::ApiGateway::Account", "Properties": {
            "CloudWatchRoleArn": get_att("ApiGatewayCloudWatchRole")}},
        "RestAPI": {"DependsOn": ["ApiGatewayAccount"], "Properties": {
            "TracingEnabled": True,
            "AccessLogSetting": {"DestinationArn": get_att("ApiAccessLogGroup"), "Format": ACCESS_LOG_FORMAT}},
            "Metadata": skip(("CKV_AWS_120", "answers are per citizen and per moment (codes, query status): "
                                             "nothing may be served from a cache"))},
    }


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` merged into `base` the way `chalice package --merge-template` merges: dicts deeply."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def main(argv: list[str]) -> int:
    stage, out = argv[1], argv[2]
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(template(stage), fh, ensure_ascii=False, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The dispute feature's CloudFormation (SPEC §8), merged into infra/generate.py's template by `extend`.

Additive on purpose: it adds resources, policies and dashboard widgets and never edits what generate.py
builds, so the query side's template stays its own. Derived, like generate.py, from the code's sources:
- the tables from the PynamoDB models (Dispute with its sparse `backlog` index, ReportedAccounts),
  on-demand, TTL, point-in-time recovery, encrypted with the service's key;
- the second state machine from stepfunctions/dispute.asl.json, its placeholders from chalicelib/contracts.py;
- least privilege: a role for each new function (ForwardDispute) and, for the functions
  that already exist, one more inline policy on their role with exactly what the dispute code calls;
- a dashboard row (disputes submitted / resolved / expired per company), an alarm per company on expired
  disputes and one on failed dispute executions, from the company registry;
- for card disputes (SPEC §10.1), a row (submitted / resolved / expired per operator group) and an alarm per
  group on expired card disputes, from the operator registry's groups (132 operators: 4 groups, not 132 lines).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any

from chalicelib.contracts import DISPUTE_WORKFLOW_FUNCTIONS
from chalicelib.disputes import DISPUTE_METRICS
from infra.cfn import NAMESPACE, ROOT, get_att, logical, metric, ref, registry, sub, table_logical

ASL_FILE = os.path.join(ROOT, "stepfunctions", "dispute.asl.json")
TABLE_VARS = ("DISPUTES_TABLE", "REPORTED_TABLE")
NEW_FUNCTIONS = tuple(fn.logical_id for fn in DISPUTE_WORKFLOW_FUNCTIONS)  # ForwardDispute
MACHINE = "DisputeStateMachine"

_TABLE_READ_WRITE = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
_IDEMPOTENCY = ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]


def _key_schema(hash_key: Any, range_key: Any | None) -> list[dict[str, str]]:
    keys = [{"AttributeName": hash_key.attr_name, "KeyType": "HASH"}]
    if range_key is not None:
        keys.append({"AttributeName": range_key.attr_name, "KeyType": "RANGE"})
    return keys


def table(model: Any, name: str) -> dict[str, Any]:
    """A table resource from a PynamoDB model: its keys, its global secondary indexes, its TTL."""
    from chalicelib.storage.models import TTL_ATTRIBUTE

    attributes = model.get_attributes()
    hash_key = next(a for a in attributes.values() if a.is_hash_key)
    range_key = next((a for a in attributes.values() if a.is_range_key), None)
    key_attributes = {hash_key.attr_name: hash_key.attr_type}
    if range_key is not None:
        key_attributes[range_key.attr_name] = range_key.attr_type
    indexes = []
    for index in model._indexes.values():
        index_hash = next(a for a in index.Meta.attributes.values() if a.is_hash_key)
        index_range = next((a for a in index.Meta.attributes.values() if a.is_range_key), None)
        for attribute in (index_hash, index_range):
            if attribute is not None:
                key_attributes[attribute.attr_name] = attribute.attr_type
        indexes.append({"IndexName": index.Meta.index_name, "KeySchema": _key_schema(index_hash, index_range),
                        "Projection": {"ProjectionType": "ALL"}})
    properties: dict[str, Any] = {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": k, "AttributeType": v} for k, v in key_attributes.items()],
        "KeySchema": _key_schema(hash_key, range_key),
        "TimeToLiveSpecification": {"AttributeName": TTL_ATTRIBUTE[model], "Enabled": True},
        "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        "SSESpecification": {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": ref("DataKey")},
    }
    if indexes:
        properties["GlobalSecondaryIndexes"] = indexes
    return {"Type": "AWS::DynamoDB::Table", "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
            "Properties": properties}


def tables(env: dict[str, str]) -> dict[str, Any]:
    from chalicelib.storage.models import Dispute, ReportedAccounts

    return {table_logical("DISPUTES_TABLE"): table(Dispute, env["DISPUTES_TABLE"]),
            table_logical("REPORTED_TABLE"): table(ReportedAccounts, env["REPORTED_TABLE"])}


def state_machine(env: dict[str, str], stage: str) -> dict[str, Any]:
    with open(ASL_FILE, encoding="utf-8") as fh:
        definition = json.load(fh)
    return {
        "DisputeStateMachineLogGroup": {"Type": "AWS::Logs::LogGroup", "Properties": {
            "LogGroupName": f"/aws/vendedlogs/states/yztc-{stage}-dispute", "RetentionInDays": 90},
            "Metadata": {"checkov": {"skip": [{"id": "CKV_AWS_158", "comment": (
                "ERROR level without execution data: no personal data; CloudWatch encrypts at rest")}]}}},
        "DisputeStateMachineRole": {"Type": "AWS::IAM::Role", "Properties": {
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
            "Policies": [{"PolicyName": "least-privilege", "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Sid": "InvokeSteps", "Effect": "Allow", "Action": ["lambda:InvokeFunction"],
                 "Resource": [get_att(fn) for fn in NEW_FUNCTIONS]},
                # Log delivery and X-Ray APIs have no resource-level permissions.
                {"Sid": "Logging", "Effect": "Allow", "Resource": "*", "Action": [
                    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
                    "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
                    "logs:DescribeResourcePolicies", "logs:DescribeLogGroups"]},
                {"Sid": "Tracing", "Effect": "Allow", "Resource": "*", "Action": [
                    "xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
                    "xray:GetSamplingTargets"]},
            ]}}]}},
        MACHINE: {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
            "StateMachineName": machine_name(env, stage),
            "StateMachineType": "STANDARD",
            "DefinitionString": json.dumps(definition, ensure_ascii=False, indent=1),
            "DefinitionSubstitutions": {fn.placeholder: get_att(fn.logical_id)
                                        for fn in DISPUTE_WORKFLOW_FUNCTIONS if fn.placeholder},
            "RoleArn": get_att("DisputeStateMachineRole"),
            "LoggingConfiguration": {"Level": "ERROR", "IncludeExecutionData": False, "Destinations": [
                {"CloudWatchLogsLogGroup": {"LogGroupArn": get_att("DisputeStateMachineLogGroup")}}]},
            "TracingConfiguration": {"Enabled": True},
        }},
    }


def _table(var: str, actions: list[str], index: str | None = None) -> dict[str, Any]:
    resource: Any = get_att(table_logical(var))
    if index:
        resource = [resource, sub("${" + table_logical(var) + ".Arn}/index/" + index)]
    return {"Sid": logical(var.lower()) + ("Index" if index else ""), "Effect": "Allow",
            "Action": sorted({*actions, "dynamodb:DescribeTable"}), "Resource": resource}


def machine_name(env: dict[str, str], stage: str) -> str:
    return env.get("DISPUTE_STATE_MACHINE_NAME", f"yztc-{stage}-dispute")


def machine_arn(env: dict[str, str], stage: str) -> dict[str, str]:
    """The machine's ARN built from its name: a Ref from the roles of the functions it invokes would be circular."""
    return sub("arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:"
               + machine_name(env, stage))


# Secrets Manager decrypts a secret with the service's key on the caller's behalf.
_SECRETS_KEY = {"Sid": "SecretsKey", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": get_att("DataKey"),
                "Condition": {"StringEquals": {"kms:ViaService": sub("secretsmanager.${AWS::Region}.amazonaws.com")}}}


def _partner_delivery(machine: Any) -> list[dict[str, Any]]:
    """What sending a dispute to a partner needs: its circuit, the phone, its secret, the retry and reply queues."""
    return [
        _table("CIRCUITS_TABLE", ["dynamodb:BatchGetItem", "dynamodb:UpdateItem"]),
        {"Sid": "PersonalDataKey", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": get_att("DataKey")},
        # Companies one by one; operators (card disputes, SPEC §10.1) by their common secret-name prefix.
        {"Sid": "PartnerSecrets", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
         "Resource": [*(ref(logical(c["secret_name"]) + "Secret") for c in registry("companies")),
                      sub("arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:"
                          + os.path.commonprefix([o["secret_name"] for o in registry("operators")]) + "*")]},
        _SECRETS_KEY,
        {"Sid": "RetryQueue", "Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": get_att("RetryQueue")},
        {"Sid": "ReplyQueue", "Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": get_att("ReplyQueue")},
    ]


# SMS to a phone number has no resource ARN; topics are denied so only SMS can be sent.
_SMS = {"Sid": "Sms", "Effect": "Allow", "Action": ["sns:Publish"],
        "NotResource": sub("arn:${AWS::Partition}:sns:*:*:*")}


def access(machine: Any) -> dict[str, list[dict[str, Any]]]:
    """Function logical id -> the IAM statements the dispute code needs in it (and nothing else)."""
    return {
        "APIHandler": [  # POST /v1/disputes, GET /v1/disputes/{id}, the dispute callback
            _table("DISPUTES_TABLE", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                                      "dynamodb:DeleteItem"]),
            _table("REPORTED_TABLE", ["dynamodb:GetItem"]),
            {"Sid": "DisputeWorkflow", "Effect": "Allow", "Action": ["states:StartExecution"], "Resource": machine},
        ],
        "SendReplies": [  # a dispute's outcome SMS; which companies a reply listed accounts at (the pepper)
            _table("DISPUTES_TABLE", _TABLE_READ_WRITE),
            _table("THROTTLE_TABLE", ["dynamodb:DeleteItem"]),  # the open-dispute lock
            _table("IDEMPOTENCY_TABLE", _IDEMPOTENCY),
            _table("REPORTED_TABLE", ["dynamodb:BatchWriteItem", "dynamodb:PutItem", "dynamodb:DeleteItem"]),
            {"Sid": "Pepper", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
             "Resource": [ref("PepperSecret")]},
            _SECRETS_KEY,
            {"Sid": "PersonalDataKey", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": get_att("DataKey")},
            _SMS,
        ],
        "ForwardDispute": [
            _table("DISPUTES_TABLE", _TABLE_READ_WRITE),
            _table("IDEMPOTENCY_TABLE", _IDEMPOTENCY),
            _SMS,
            *_partner_delivery(machine),
        ],
        "RetryLookups": [_table("DISPUTES_TABLE", ["dynamodb:BatchGetItem", *_TABLE_READ_WRITE]),
                         *_partner_delivery(machine)],
        "DeliverBacklog": [_table("DISPUTES_TABLE", ["dynamodb:Query", *_TABLE_READ_WRITE], index="backlog"),
                           *_partner_delivery(machine)],
    }


def _basic_role(function: str, statements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Type": "AWS::IAM::Role", "Properties": {
        "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
        "Policies": [{"PolicyName": "least-privilege", "PolicyDocument": {"Version": "2012-10-17", "Statement": [
            {"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream",
                                                          "logs:PutLogEvents"],
             "Resource": sub("arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:"
                             "/aws/lambda/${AWS::StackName}-" + function + "*")},
            {"Sid": "Tracing", "Effect": "Allow", "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
             "Resource": "*"},
            *statements]}}]}}


def add_roles_and_policies(resources: dict[str, Any], env: dict[str, str], stage: str,
                           integrated: bool = False) -> None:
    """A role for each new function; for an existing function, one more inline policy on its role
    (appended: nothing of its own is touched), or a separate policy if the role is not in this template.

    `integrated`: generate.py's FUNCTION_ACCESS already grants the dispute code its tables, key, secrets,
    queue and SMS; only what it cannot say (the dispute workflow, not the query one) is added here."""
    for function, statements in access(machine_arn(env, stage)).items():
        if integrated:
            statements = [s for s in statements if any(a.startswith("states:") for a in s["Action"])]
            if not statements:
                continue
        role = f"{function}Role"
        document = {"Version": "2012-10-17", "Statement": statements}
        if function in NEW_FUNCTIONS and role not in resources:
            resources[role] = _basic_role(function, statements)
        elif isinstance(resources.get(role, {}).get("Properties", {}).get("Policies"), list):
            resources[role]["Properties"]["Policies"].append({"PolicyName": "disputes", "PolicyDocument": document})
        else:
            resources[f"{function}DisputesPolicy"] = {"Type": "AWS::IAM::Policy", "Properties": {
                "PolicyName": "disputes", "Roles": [ref(role)], "PolicyDocument": document}}


def dashboard_widgets() -> list[dict[str, Any]]:
    """One row: disputes submitted / resolved / expired, a line per company."""
    companies = [c["id"] for c in registry("companies")]
    return [{"type": "metric", "width": 8, "height": 6, "properties": {
        "title": title, "view": "timeSeries", "region": "${AWS::Region}", "period": 3600,
        "metrics": [metric(name, company=c) for c in companies]}}
        for title, name in (("Disputes submitted per company", "DisputeSubmitted"),
                            ("Disputes resolved per company", "DisputeResolved"),
                            ("Disputes expired per company (no answer in 15 days)", "DisputeExpired"))]


def operator_groups() -> dict[str, tuple[str, list[str]]]:
    """The operator registry's groups in registry order: group_id (cmcc…, ASCII: a CloudWatch dimension value)
    -> (its name, 中国移动…, and its operators' ids). An operator without a group is in none."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for entry in registry("operators"):
        if entry.get("group_id"):
            groups.setdefault(entry["group_id"], (entry.get("group", entry["group_id"]), []))[1].append(entry["id"])
    return groups


def card_dashboard_widgets() -> list[dict[str, Any]]:
    """One row: card disputes submitted / resolved / expired, a line per operator group (SPEC §10.1), each the
    sum of its operators' dispute counts (the dispute metrics carry company=<operator id>)."""
    groups = list(operator_groups().values())

    def lines(name: str) -> list[Any]:
        out: list[Any] = []
        for i, (group, ids) in enumerate(groups):
            terms = ", ".join(f"g{i}o{j}" for j in range(len(ids)))
            out.append([{"expression": f"SUM([{terms}])", "label": group, "id": f"g{i}"}])
            out += [[*metric(name, company=op)[:-1], {"stat": "Sum", "id": f"g{i}o{j}", "visible": False}]
                    for j, op in enumerate(ids)]
        return out

    return [{"type": "metric", "width": 8, "height": 6, "properties": {
        "title": title, "view": "timeSeries", "region": "${AWS::Region}", "period": 3600, "metrics": lines(name)}}
        for title, name in (("Card disputes submitted per operator group", "DisputeSubmitted"),
                            ("Card disputes resolved per operator group", "DisputeResolved"),
                            ("Card disputes expired per operator group (no answer in 15 days)", "DisputeExpired"))]


def alarms() -> dict[str, Any]:
    service_dim = [{"Name": "service", "Value": "yizhengtongcha"}]

    def alarm(description: str, **spec: Any) -> dict[str, Any]:
        return {"Type": "AWS::CloudWatch::Alarm", "Properties": {
            "AlarmDescription": description, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "EvaluationPeriods": 1, "TreatMissingData": "notBreaching", "Statistic": "Sum",
            "AlarmActions": [ref("OperatorTopic")], "OKActions": [ref("OperatorTopic")], **spec}}

    out = {"FailedDisputeExecutionsAlarm": alarm(
        "A dispute could not be forwarded or answered after every retry (redrive its execution).", Threshold=1,
        Namespace="AWS/States", MetricName="ExecutionsFailed", Period=300,
        Dimensions=[{"Name": "StateMachineArn", "Value": ref(MACHINE)}])}
    for company in registry("companies"):
        out[logical(company["id"]) + "DisputesExpiredAlarm"] = alarm(
            f"{company['name']} let disputes expire without an answer (15 days).",
            Threshold=ref("DisputesExpiredAlarmThreshold"), Namespace=NAMESPACE, MetricName="DisputeExpired",
            Period=86400, Dimensions=[*service_dim, {"Name": "company", "Value": company["id"]}])
    # Card disputes (SPEC §10.1): one alarm per operator group, on the dispute code's per-group count (an alarm's
    # metric math may not sum a group's 31 or more operators).
    for group_id, (group, _ids) in operator_groups().items():
        out[logical(group_id) + "CardDisputesExpiredAlarm"] = alarm(
            f"{group} operators let card disputes expire without an answer (15 days).",
            Threshold=ref("CardDisputesExpiredAlarmThreshold"), Namespace=NAMESPACE, MetricName="CardDisputeExpired",
            Period=86400, Dimensions=[*service_dim, {"Name": "group", "Value": group_id}])
    return out


def extend(template: dict[str, Any], env: dict[str, str], stage: str,
           function_access: dict[str, Any]) -> dict[str, Any]:
    """generate.py's template with the dispute feature added; `function_access` is generate.py's FUNCTION_ACCESS
    (what each function is granted), passed in so that the two modules do not import each other."""
    template = copy.deepcopy(template)
    resources = template.setdefault("Resources", {})
    integrated = all(fn in function_access for fn in NEW_FUNCTIONS)
    # The new functions get what every function gets (names, ARNs), plus their own role.
    shared_variables = resources.get("APIHandler", {}).get("Properties", {}).get("Environment", {}).get(
        "Variables", {})
    for function in NEW_FUNCTIONS:
        resources.setdefault(function, {"Properties": {"Role": get_att(f"{function}Role"),
                                                       "Environment": {"Variables": dict(shared_variables)}}})
    # Only the API starts dispute executions (the steps themselves must not refer to their machine).
    resources.setdefault("APIHandler", {}).setdefault("Properties", {}).setdefault("Environment", {}).setdefault(
        "Variables", {})["DISPUTE_STATE_MACHINE_ARN"] = ref(MACHINE)
    for name, table_resource in tables(env).items():
        resources.setdefault(name, table_resource)  # generate.py may build every model's table itself
    resources.update({**state_machine(env, stage), **alarms()})
    add_roles_and_policies(resources, env, stage, integrated)
    board = resources.get("Dashboard", {}).get("Properties", {}).get("DashboardBody")
    if isinstance(board, dict) and "Fn::Sub" in board:
        body, variables = board["Fn::Sub"]
        widgets = json.loads(body)
        widgets["widgets"] += dashboard_widgets() + card_dashboard_widgets()
        board["Fn::Sub"] = [json.dumps(widgets, ensure_ascii=False), variables]
    template.setdefault("Parameters", {})["DisputesExpiredAlarmThreshold"] = {
        "Type": "Number", "Default": 1, "Description": "Alarm when a company lets this many disputes expire in a day"}
    template["Parameters"]["CardDisputesExpiredAlarmThreshold"] = {
        "Type": "Number", "Default": 1,
        "Description": "Alarm when an operator group lets this many card disputes expire in a day"}
    template.setdefault("Outputs", {})["DisputeStateMachineArn"] = {"Value": ref(MACHINE)}
    return template


__all__ = ["DISPUTE_METRICS", "extend"]

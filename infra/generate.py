"""Build the CloudFormation merge template for one stage: `python -m infra.generate STAGE OUT`.

Everything is derived from the sources the code itself uses, so nothing can drift:
- tables from the PynamoDB models (chalicelib/storage/models.py),
- names from the stage's environment in .chalice/config.json,
- the state machine from stepfunctions/query.asl.json (placeholders wired by DefinitionSubstitutions),
- secrets, alarms and dashboard widgets from the company and carrier registries,
- IAM: one role per Lambda function with exactly the actions listed in FUNCTION_ACCESS.
`chalice package --merge-template` deep-merges the result onto Chalice's SAM template.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASL_FILE = os.path.join(ROOT, "stepfunctions", "query.asl.json")
NAMESPACE = "YiZhengTongCha"

# Function logical ids (Chalice: PascalCase of the function name) -> what each may touch.
# "tables": table env var -> DynamoDB actions; DescribeTable is added for every table (PynamoDB
# reads the key schema once per container).
FUNCTION_ACCESS: dict[str, dict[str, Any]] = {
    "APIHandler": {
        "tables": {
            "CODES_TABLE": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
            "THROTTLE_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
            "QUERIES_TABLE": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"],
            "LOOKUPS_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem"],
        },
        "kms": ["kms:Encrypt"],
        "secrets": ["pepper", "partners"],
        "sns_publish": True,
        "queue": ["sqs:SendMessage"],
        "states": ["states:SendTaskSuccess", "states:SendTaskFailure"],
    },
    "StartQueries": {
        "queue": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
        "states": ["states:StartExecution"],
    },
    "VerifyCarrier": {
        "tables": {"QUERIES_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem"]},
        "kms": ["kms:Decrypt"],
        "secrets": ["carriers"],
    },
    "RequestLookup": {
        "tables": {
            "QUERIES_TABLE": ["dynamodb:GetItem"],
            "LOOKUPS_TABLE": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
        },
        "kms": ["kms:Decrypt"],
        "secrets": ["pepper", "partners"],
        "states": ["states:SendTaskSuccess", "states:SendTaskFailure"],
    },
    "PlanLookupRetry": {},  # pure computation: logs and traces only
    "SendReply": {
        "tables": {
            "QUERIES_TABLE": ["dynamodb:GetItem", "dynamodb:UpdateItem"],
            # Powertools reads a conflicting record back from the failed conditional put
            # (ReturnValuesOnConditionCheckFailure): no GetItem.
            "IDEMPOTENCY_TABLE": ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
        },
        "kms": ["kms:Decrypt"],
        "sns_publish": True,
    },
}
TABLE_VARS = ("CODES_TABLE", "THROTTLE_TABLE", "QUERIES_TABLE", "LOOKUPS_TABLE", "IDEMPOTENCY_TABLE")
WORKFLOW_FUNCTIONS = {"VerifyCarrierArn": "VerifyCarrier", "RequestLookupArn": "RequestLookup",
                      "PlanLookupRetryArn": "PlanLookupRetry", "SendReplyArn": "SendReply"}


def sub(text: str) -> dict[str, str]:
    return {"Fn::Sub": text}


def get_att(resource: str, attribute: str = "Arn") -> dict[str, list[str]]:
    return {"Fn::GetAtt": [resource, attribute]}


def ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def logical(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("/", "_").replace("-", "_").split("_"))


def stage_env(stage: str) -> dict[str, str]:
    with open(os.path.join(ROOT, ".chalice", "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    return {**config.get("environment_variables", {}),
            **config["stages"][stage].get("environment_variables", {})}


def registry(kind: str) -> list[dict[str, Any]]:
    with open(os.path.join(ROOT, "chalicelib", "data", f"{kind}.json"), encoding="utf-8") as fh:
        return list(json.load(fh)[kind])


def table_resources(env: dict[str, str]) -> dict[str, Any]:
    os.environ.update({k: env[k] for k in TABLE_VARS})
    from chalicelib.storage import models

    resources = {}
    by_var = dict(zip(TABLE_VARS, (models.VerificationCode, models.Throttle, models.QueryRecord,
                                   models.Lookup, models.IdempotencyRecord), strict=True))
    for var, model in by_var.items():
        hash_key = next(name for name, attr in model.get_attributes().items() if attr.is_hash_key)
        attribute = model.get_attributes()[hash_key]
        resources[logical(var.removesuffix("_TABLE").lower()) + "Table"] = {
            "Type": "AWS::DynamoDB::Table",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "TableName": env[var],
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": attribute.attr_name,
                                          "AttributeType": attribute.attr_type}],
                "KeySchema": [{"AttributeName": attribute.attr_name, "KeyType": "HASH"}],
                "TimeToLiveSpecification": {"AttributeName": models.TTL_ATTRIBUTE[model], "Enabled": True},
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "SSESpecification": {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": ref("DataKey")},
            },
        }
    return resources


def table_logical(var: str) -> str:
    return logical(var.removesuffix("_TABLE").lower()) + "Table"


def secret_resources(env: dict[str, str]) -> dict[str, Any]:
    secrets = {"PepperSecret": (env["PEPPER_SECRET_NAME"], "HMAC pepper for phone-number keys")}
    for kind in ("companies", "carriers"):
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
    if kind == "pepper":
        return [ref("PepperSecret")]
    return [ref(logical(entry["secret_name"]) + "Secret")
            for entry in registry("companies" if kind == "partners" else "carriers")]


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
    if access.get("queue"):
        statements.append({"Sid": "StartQueue", "Effect": "Allow", "Action": access["queue"],
                           "Resource": get_att("StartQueue")})
    if access.get("states"):
        statements.append({"Sid": "Workflow", "Effect": "Allow", "Action": access["states"],
                           "Resource": ref("QueryStateMachine")})
    return {"Type": "AWS::IAM::Role", "Properties": {
        "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
        "Policies": [{"PolicyName": "least-privilege", "PolicyDocument": {
            "Version": "2012-10-17", "Statement": statements}}],
    }}


def state_machine(env: dict[str, str], stage: str) -> dict[str, Any]:
    with open(ASL_FILE, encoding="utf-8") as fh:
        definition = json.load(fh)
    return {
        "StateMachineLogGroup": {"Type": "AWS::Logs::LogGroup", "Properties": {
            "LogGroupName": f"/aws/vendedlogs/states/yztc-{stage}-query", "RetentionInDays": 90}},
        "StateMachineRole": {"Type": "AWS::IAM::Role", "Properties": {
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
            "Policies": [{"PolicyName": "least-privilege", "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Sid": "InvokeSteps", "Effect": "Allow", "Action": ["lambda:InvokeFunction"],
                 "Resource": [get_att(fn) for fn in WORKFLOW_FUNCTIONS.values()]},
                # Log delivery and X-Ray APIs have no resource-level permissions.
                {"Sid": "Logging", "Effect": "Allow", "Resource": "*", "Action": [
                    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
                    "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
                    "logs:DescribeResourcePolicies", "logs:DescribeLogGroups"]},
                {"Sid": "Tracing", "Effect": "Allow", "Resource": "*", "Action": [
                    "xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
                    "xray:GetSamplingTargets"]},
            ]}}]}},
        "QueryStateMachine": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
            "StateMachineName": env["STATE_MACHINE_NAME"],
            "StateMachineType": "STANDARD",
            "DefinitionString": json.dumps(definition, ensure_ascii=False, indent=1),
            "DefinitionSubstitutions": {placeholder: get_att(fn) for placeholder, fn in WORKFLOW_FUNCTIONS.items()},
            "RoleArn": get_att("StateMachineRole"),
            # ERROR level and no execution data: the history holds no personal data, but logs
            # are read by more people than the console, so they carry none at all.
            "LoggingConfiguration": {"Level": "ERROR", "IncludeExecutionData": False, "Destinations": [
                {"CloudWatchLogsLogGroup": {"LogGroupArn": get_att("StateMachineLogGroup")}}]},
            "TracingConfiguration": {"Enabled": True},
        }},
    }


def metric(name: str, stat: str = "Sum", **dims: Any) -> list[Any]:
    line: list[Any] = [NAMESPACE, name, "service", "yizhengtongcha"]
    for key, value in dims.items():
        line += [key, value]
    return line + [{"stat": stat}]


def dashboard(env: dict[str, str], stage: str) -> dict[str, Any]:
    companies = [c["id"] for c in registry("companies")]
    machine = ref("QueryStateMachine")
    widgets: list[dict[str, Any]] = []

    def widget(title: str, metrics: list[Any], view: str = "timeSeries") -> None:
        widgets.append({"type": "metric", "width": 12, "height": 6, "properties": {
            "title": title, "view": view, "region": "${AWS::Region}", "period": 300, "metrics": metrics}})

    widget("Queries accepted / replied / failed",
           [metric("QueryAccepted"), metric("QueryReplied"), metric("QueryFailed")])
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
    widget("SMS sent / failed", [metric("SmsSent"), metric("SmsFailed"), metric("CodeSent"),
                                 metric("SmsChannelFull")])
    widget("API 4xx / 5xx", [["AWS/ApiGateway", m, "ApiName", "yizhengtongcha", "Stage", "api"]
                             for m in ("Count", "4XXError", "5XXError")])
    widget("Throttles", [["AWS/DynamoDB", "ThrottledRequests", "TableName", env[v]] for v in TABLE_VARS]
           + [["AWS/Lambda", "Throttles"], metric("StartDeferred"),
              ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", env["START_QUEUE_NAME"],
               {"stat": "Maximum"}]])
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


def alarms(env: dict[str, str]) -> dict[str, Any]:
    machine_dim = [{"Name": "StateMachineArn", "Value": ref("QueryStateMachine")}]
    service_dim = [{"Name": "service", "Value": "yizhengtongcha"}]
    out = {
        "FailedExecutionsAlarm": alarm("A query workflow failed: its reply may be missing (redrive it).", 1,
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
                                                 *(throttled(i, env[v]) for i, v in enumerate(TABLE_VARS))]),
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
    functions = {}
    for function in FUNCTION_ACCESS:
        functions[function] = {"Properties": {
            "Role": get_att(f"{function}Role"),
            "Environment": {"Variables": {
                "STATE_MACHINE_ARN": ref("QueryStateMachine"), "START_QUEUE_URL": ref("StartQueue")}}}}
    # Chalice names the queue from START_QUEUE_NAME at package time (make package sets it from the
    # stage config); the env reference to StartQueue orders the event source after the queue.
    partner_paths = sub("execute-api:/*/POST/v1/partners/*")
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
        "StartDeadLetterQueue": {"Type": "AWS::SQS::Queue", "Properties": {
            "QueueName": env["START_QUEUE_NAME"] + "-dlq", "MessageRetentionPeriod": 1209600,
            "SqsManagedSseEnabled": True}},
        "StartQueue": {"Type": "AWS::SQS::Queue", "Properties": {
            "QueueName": env["START_QUEUE_NAME"], "VisibilityTimeout": 180, "MessageRetentionPeriod": 1209600,
            "SqsManagedSseEnabled": True,
            # A refused start comes back every 3 minutes for 3 days before it needs an operator.
            "RedrivePolicy": {"deadLetterTargetArn": get_att("StartDeadLetterQueue"), "maxReceiveCount": 1440}}},
        **state_machine(env, stage),
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
            # The callback route answers only partners' networks; the rest of the API is public.
            "DefinitionBody": {"x-amazon-apigateway-policy": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke",
                 "Resource": sub("execute-api:/*")},
                {"Effect": "Deny", "Principal": "*", "Action": "execute-api:Invoke", "Resource": partner_paths,
                 "Condition": {"NotIpAddress": {"aws:SourceIp": ref("PartnerCidrs")}}},
            ]}}}},
    }
    from infra import disputes  # SPEC §8: the dispute workflow, its tables, roles, dashboard row and alarms

    return disputes.extend({
        "Parameters": {
            "SmsMonthlySpendLimit": {"Type": "Number", "Default": 5000,
                                     "Description": "SNS SMS monthly spend limit (USD)"},
            "ApiRateLimit": {"Type": "Number", "Default": 2000, "Description": "API steady requests per second"},
            "ApiBurstLimit": {"Type": "Number", "Default": 4000, "Description": "API burst"},
            "PartnerCidrs": {"Type": "CommaDelimitedList", "Default": "203.0.113.0/24",
                             "Description": "Networks partners call back from"},
            "PartnerAnswerRateThreshold": {"Type": "Number", "Default": 0.8,
                                           "Description": "Alarm when a company answers fewer lookups (0-1)"},
            "OpenExecutionsAlarmThreshold": {"Type": "Number", "Default": 800000,
                                             "Description": "Alarm before the 1,000,000 open-execution quota"},
        },
        "Resources": resources,
        "Outputs": {"StateMachineArn": {"Value": ref("QueryStateMachine")},
                    "OperatorTopicArn": {"Value": ref("OperatorTopic")},
                    "DashboardName": {"Value": ref("Dashboard")}},
    }, env, stage)


def main(argv: list[str]) -> int:
    stage, out = argv[1], argv[2]
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(template(stage), fh, ensure_ascii=False, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

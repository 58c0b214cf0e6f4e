"""Create the service's AWS resources on moto (tests and the local stack alike)."""
from __future__ import annotations

import base64
import copy
import functools
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from chalicelib import clients
from chalicelib.storage.tables import table_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASL_FILE = os.path.join(ROOT, "stepfunctions", "query.asl.json")
DISPUTE_ASL_FILE = os.path.join(ROOT, "stepfunctions", "dispute.asl.json")
DEADLINE_ASL_FILE = os.path.join(ROOT, "stepfunctions", "deadline.asl.json")
# A reply that fails this many times goes to the dead-letter queue (infra/generate.py uses the same).
REPLY_MAX_RECEIVES = 5
ACCOUNT = "123456789012"


def base_environment(prefix: str = "yztc") -> dict[str, str]:
    """The names every component reads (chalicelib/config.py); set before importing it."""
    return {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        **table_names(prefix),
        "KMS_KEY_ID": f"alias/{prefix}",
        "PEPPER_SECRET_NAME": f"{prefix}/pepper",
        "ALTCHA_SECRET_NAME": f"{prefix}/altcha",
        "START_QUEUE_NAME": f"{prefix}-query-starts",
        "RETRY_QUEUE_NAME": f"{prefix}-lookup-retries",
        "REPLY_QUEUE_NAME": f"{prefix}-replies",
        "REPLY_DLQ_NAME": f"{prefix}-replies-dead",
        "POWERTOOLS_SERVICE_NAME": "yizhengtongcha",
        "POWERTOOLS_METRICS_NAMESPACE": "YiZhengTongCha",
    }


def substitute(definition: str, substitutions: dict[str, str]) -> str:
    for name, value in substitutions.items():
        definition = definition.replace("${" + name + "}", value)
    return definition


def with_local_functions(definition: str) -> str:
    """The ASL with its placeholders pointing at the in-process functions (local/lambdas.py) and tables."""
    from chalicelib.contracts import (
        DEADLINE_WORKFLOW_FUNCTIONS,
        DISPUTE_WORKFLOW_FUNCTIONS,
        WORKFLOW_FUNCTIONS,
        WORKFLOW_QUEUES,
    )

    return substitute(definition, {
        **{fn.placeholder: f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{fn.name}"
           for fn in (*WORKFLOW_FUNCTIONS, *DISPUTE_WORKFLOW_FUNCTIONS, *DEADLINE_WORKFLOW_FUNCTIONS)
           if fn.placeholder},
        **{placeholder: os.environ[var] for placeholder, var in WORKFLOW_QUEUES.items() if var in os.environ}})


def state_machine_definition(path: str = ASL_FILE) -> str:
    with open(path, encoding="utf-8") as fh:
        return with_local_functions(fh.read())


def create_dispute_machine(role_arn: str) -> str:
    """The dispute workflow (stepfunctions/dispute.asl.json), substituted like the query one."""
    machine = clients.client("stepfunctions").create_state_machine(
        name="yztc-dispute", definition=state_machine_definition(DISPUTE_ASL_FILE), roleArn=role_arn,
        type="STANDARD")
    return str(machine["stateMachineArn"])


def create_deadline_machine(role_arn: str) -> str:
    """The deadline workflow (stepfunctions/deadline.asl.json)."""
    machine = clients.client("stepfunctions").create_state_machine(
        name="yztc-deadline", definition=state_machine_definition(DEADLINE_ASL_FILE), roleArn=role_arn,
        type="STANDARD")
    return str(machine["stateMachineArn"])


def create_reply_queues(env: dict[str, str]) -> dict[str, str]:
    """The reply queue and its dead-letter queue (what infra/generate.py deploys), URLs set in os.environ
    before the query workflow is created: its definition names the reply queue."""
    sqs = clients.client("sqs")
    dlq_url = sqs.create_queue(QueueName=env["REPLY_DLQ_NAME"], Attributes={"VisibilityTimeout": "5"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName=env["REPLY_QUEUE_NAME"], Attributes={
        "VisibilityTimeout": "2", "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(REPLY_MAX_RECEIVES)})})["QueueUrl"]
    added = {"REPLY_QUEUE_URL": url, "REPLY_DLQ_URL": dlq_url}
    os.environ.update(added)
    return added


@dataclass
class Resources:
    env: dict[str, str]
    secrets: dict[str, str] = field(default_factory=dict)  # secret name -> value


_SERIALIZED = threading.RLock()


def make_dynamodb_serializable() -> None:
    """Give moto's DynamoDB the isolation the real one has.

    moto applies a transaction item by item and, on a failed condition, restores
    a deep copy of the tables taken before: concurrent requests then interleave
    and overwrite each other, which DynamoDB never does (transactions are
    serializable, single-item writes atomic). moto also serialises an item to JSON for its
    response after the write returns, while another thread may be changing that item (a map
    attribute written by 132 operator callbacks at once: "dictionary changed size during
    iteration"). One lock around each whole DynamoDB request restores DynamoDB's isolation,
    so concurrency tests exercise our conditions, not moto's races.
    """
    from moto.dynamodb.responses import DynamoHandler

    if getattr(DynamoHandler, "_yztc_serialized", False):
        return
    original = DynamoHandler.call_action

    def locked(self: Any) -> Any:
        with _SERIALIZED:
            return original(self)

    DynamoHandler.call_action = locked  # type: ignore[method-assign]
    DynamoHandler._yztc_serialized = True  # type: ignore[attr-defined]


# The DynamoDB operations whose results are items (and keys, counts, capacity): already DynamoDB's wire JSON.
_ITEM_OPERATIONS = frozenset({"GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "BatchGetItem",
                              "BatchWriteItem", "TransactGetItems", "TransactWriteItems"})


def make_dynamodb_responses_fast() -> None:
    """Answer moto's item operations with json.dumps, as DynamoDB's JSON protocol is.

    moto 5 serialises every response by walking botocore's shape model value by value: about 25 ms for a
    card query's record (132 operators' results), under the lock above. 132 operator callbacks at once
    each rewrite that record, so on a loaded machine they queued past the operators' 10 s timeout and a
    callback could be given up (a card query answered 另有1家企业暂未返回 in make test). The results of
    item operations are already wire JSON (binary values as bytes: base64, as the serialiser writes them);
    anything else, errors included, keeps moto's serialiser.
    """
    from moto.dynamodb.responses import DynamoResult

    if getattr(DynamoResult, "_yztc_fast", False):
        return
    original = DynamoResult.execute_result

    def execute_result(self: Any, context: Any) -> Any:
        if context.operation_model.name not in _ITEM_OPERATIONS or isinstance(self.result, Exception):
            return original(self, context)
        body = json.dumps(self.result, default=lambda value: base64.b64encode(value).decode())
        return 200, {"Content-Type": "application/x-amz-json-1.0"}, body

    DynamoResult.execute_result = execute_result  # type: ignore[method-assign]
    DynamoResult._yztc_fast = True  # type: ignore[attr-defined]


def make_state_machines_parse_once() -> None:
    """Parse each state machine definition once, not at every execution start.

    moto parses the ASL with an ANTLR parser written in Python each time an execution starts: 19 ms for
    query.asl.json, 8 ms for deadline.asl.json, whose executions start every slot for every kind (a second in the
    tests): 13 % of an idle stack's CPU. The parsed program holds no execution's state (that is the execution's
    Environment and its heap), so executions can share it, except Map and Parallel states, whose workers keep
    theirs on the program: a definition with either is parsed afresh every time, as moto does.
    """
    from moto.stepfunctions.parser.asl.component.component import Component
    from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    if getattr(AmazonStateLanguageParser, "_yztc_once", False):
        return
    original = AmazonStateLanguageParser.parse
    parsed: dict[str, Any] = {}
    lock = threading.Lock()

    def fix_heap_keys(node: Any, seen: set[int]) -> None:
        # A component names its slot in an execution's heap on first use (a fresh uid): named now, before any
        # two executions can race to name it differently.
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, EvalComponent):
            _ = node.heap_key
        children = (node.values() if isinstance(node, dict) else node if isinstance(node, (list, tuple))
                    else vars(node).values())
        for child in children:
            if isinstance(child, (Component, dict, list, tuple)):
                fix_heap_keys(child, seen)

    def parse(definition: str) -> Any:
        if '"Map"' in definition or '"Parallel"' in definition:
            return original(definition)
        with lock:
            if definition not in parsed:
                result = original(definition)
                fix_heap_keys(result[0], set())
                parsed[definition] = result
            return parsed[definition]

    AmazonStateLanguageParser.parse = staticmethod(parse)  # type: ignore[method-assign]
    AmazonStateLanguageParser._yztc_once = True  # type: ignore[attr-defined]


def make_moto_dispatch_list_actions_once() -> None:
    """moto finds the method of every request's action by listing its responder class's functions with
    inspect.getmembers, each time: 2 % of a stack test's CPU. A class's functions do not change: listed once."""
    from moto.core import responses

    if getattr(responses, "_yztc_listed_once", False):
        return
    responses.method_names_from_class = functools.cache(responses.method_names_from_class)  # type: ignore[assignment]
    responses._yztc_listed_once = True  # type: ignore[attr-defined]


def make_json_paths_parse_once() -> None:
    """Parse each JSONPath of a state machine once, not at every use.

    moto's Step Functions interpreter calls jsonpath_ng's parse() for every path it evaluates ("kind.$": "$.kind",
    ResultPath…), and each call builds a new PLY parser and its LALR table: 0.3 ms a path, 7 % of make test's busy
    CPU (py-spy), mostly the deadline executions every slot. A parsed path is immutable (find and update_or_create
    change the data, not the path), so executions share it; a path that fails to parse is not cached and fails
    again, as before."""
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import json_path

    for module in (json_path, result_path):
        if not hasattr(module.parse, "cache_info"):
            module.parse = functools.lru_cache(maxsize=4096)(module.parse)  # type: ignore[attr-defined]


def make_update_expressions_parse_once() -> None:
    """Parse each DynamoDB update expression once, not twice a write.

    moto tokenizes and parses an UpdateExpression when the request arrives and again in the backend, for every
    update and every update of a transaction; the tests' expressions are a few fixed shapes with placeholders.
    The parsed tree is only read: the validator that fills in the values works on its own deep copy of it.
    An update_item and a one-update transaction took 0.86× the CPU (median of six alternating pairs)."""
    from moto.dynamodb.models import UpdateExpressionParser

    if not hasattr(UpdateExpressionParser.make, "cache_info"):
        UpdateExpressionParser.make = functools.lru_cache(maxsize=1024)(UpdateExpressionParser.make)


def make_dynamodb_transactions_copy_items_not_tables() -> None:
    """Roll a failed transaction back from copies of the items it names, not of whole tables.

    moto deep-copies every table a transaction touches before applying it, to restore on failure: the whole
    table, once for each of its items in the transaction. So a transaction's cost grew with what the test had
    written (each of the code route's 2500 fuzzed requests copied every code stored before it). DynamoDB's
    outcome is the same either way: a transaction changes only the items it names, so copies of those, taken
    first, restore everything it could have changed. Runs under the lock above, as every DynamoDB request does."""
    from moto.dynamodb import models
    from moto.dynamodb.models.table import Table

    if getattr(models.DynamoDBBackend, "_yztc_item_rollback", False):
        return
    original = models.DynamoDBBackend.transact_write_items
    real_deepcopy = copy.deepcopy

    class _TablesUncopied:
        """moto.dynamodb.models' `copy`: a table is "copied" as itself (so moto's own rollback is a no-op)."""

        @staticmethod
        def deepcopy(value: Any, memo: Any = None) -> Any:
            return value if isinstance(value, Table) else real_deepcopy(value, memo)

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        before: dict[tuple[str, Any, Any], Any] = {}
        for entry in transact_items:
            _, op = next(iter(entry.items()))
            table = self.tables.get(op.get("TableName"))
            keys = op.get("Key") or op.get("Item")
            if table is None or not isinstance(keys, dict) or table.hash_key_attr not in keys or (
                    table.range_key_attr and table.range_key_attr not in keys):
                continue  # moto refuses it before writing anything
            hash_key, range_key = self.get_keys_value(table, keys)
            before.setdefault((op["TableName"], hash_key, range_key),
                              real_deepcopy(table.get_item(hash_key, range_key)))
        try:
            original(self, transact_items)
        except BaseException:
            for (name, hash_key, range_key), item in before.items():
                # Table.items: {hash: item}, or {hash: {range: item}} with a range key.
                items = self.tables[name].items if range_key is None else self.tables[name].items[hash_key]
                at = hash_key if range_key is None else range_key
                if item is None:
                    items.pop(at, None)
                else:
                    items[at] = item
            raise

    models.copy = _TablesUncopied  # type: ignore[assignment]
    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    models.DynamoDBBackend._yztc_item_rollback = True  # type: ignore[attr-defined]


class _RetryClock:
    """The `time` module as moto's Step Functions retrier sees it: its sleep is `scale` times the Retry interval."""

    scale = 1.0

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds * self.scale)


RETRY_CLOCK = _RetryClock()


def make_state_machine_retries_scalable() -> None:
    """Let a stack shorten the ASL's Retry intervals (RETRY_CLOCK.scale; 1: as written).

    moto's interpreter sleeps each interval for real: a fan-out failing all three of its retries spends 14 s
    asleep (2 s, 4 s, 8 s), a carrier down for two checks 6 s. The definition, its retriers, their counts and their
    order stay as deployed; only the sleeps between the tries are shorter. Wait states keep real seconds."""
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    retrier_decl.time = RETRY_CLOCK  # type: ignore[assignment]


def tune_moto() -> None:
    """Every adjustment above, as the local stack (tests and `make run`) runs moto; each is idempotent."""
    for adjust in (make_dynamodb_serializable, make_dynamodb_responses_fast, make_state_machines_parse_once,
                   make_moto_dispatch_list_actions_once, make_json_paths_parse_once,
                   make_update_expressions_parse_once, make_dynamodb_transactions_copy_items_not_tables,
                   make_state_machine_retries_scalable):
        adjust()


def create(env: dict[str, str], secret_names: list[str]) -> Resources:
    """Tables, KMS key, pepper and partner secrets, start queue, state machine.

    Returns the environment additions (ARNs, URLs) and the secrets' values,
    which the simulators need to sign as partners and carriers do.
    """
    from chalicelib.storage.models import create_all

    create_all()
    kms = clients.client("kms")
    key_id = kms.create_key(Description="yztc personal data")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName=env["KMS_KEY_ID"], TargetKeyId=key_id)
    values = fill_secrets([env["PEPPER_SECRET_NAME"], env["ALTCHA_SECRET_NAME"], *secret_names])
    sqs = clients.client("sqs")
    queue_url = sqs.create_queue(QueueName=env["START_QUEUE_NAME"], Attributes={"VisibilityTimeout": "5"})["QueueUrl"]
    retry_url = sqs.create_queue(QueueName=env["RETRY_QUEUE_NAME"], Attributes={"VisibilityTimeout": "5"})["QueueUrl"]
    replies = create_reply_queues(env)
    iam = clients.client("iam")
    role_arn = iam.create_role(
        RoleName="yztc-states", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    machine = clients.client("stepfunctions").create_state_machine(
        name="yztc-query", definition=state_machine_definition(), roleArn=role_arn, type="STANDARD")
    added = {"STATE_MACHINE_ARN": machine["stateMachineArn"], "START_QUEUE_URL": queue_url,
             "RETRY_QUEUE_URL": retry_url, "DISPUTE_STATE_MACHINE_ARN": create_dispute_machine(role_arn),
             "DEADLINE_STATE_MACHINE_ARN": create_deadline_machine(role_arn), **replies}
    return Resources(env=added, secrets=values)


def empty() -> None:
    """Every table and queue emptied and every execution forgotten, straight in moto's in-process backend:
    a test then starts on the world the previous one built (tables, queues, state machines, keys, secrets)
    as on a new one, for a fraction of building it (the tests' reused stack; never a deployed stage)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends
    from moto.sqs.models import sqs_backends
    from moto.stepfunctions.responses import get_backend

    region = os.environ["AWS_DEFAULT_REGION"]
    for table in dynamodb_backends[DEFAULT_ACCOUNT_ID][region].tables.values():
        table.items.clear()
    for queue in sqs_backends[DEFAULT_ACCOUNT_ID][region].queues.values():
        queue._messages = []
        queue._pending_messages = set()
    for machine in get_backend(DEFAULT_ACCOUNT_ID, region).state_machines:
        machine.executions.clear()  # stopped already: their names (deadline slots) are free again


def fill_secrets(names: list[str]) -> dict[str, str]:
    """A random value per secret, as an operator sets the pepper and exchanges partner secrets."""
    values = {name: secrets.token_hex(32) for name in names}
    if os.environ.get("AWS_ENDPOINT_URL"):
        sm = clients.client("secretsmanager")
        for name, value in values.items():
            sm.create_secret(Name=name, SecretString=value)
    else:
        # moto in-process (the tests): straight into its backend, as CreateSecret would
        # store them: 144 API round trips through botocore cost 0.7 s per test. The service still reads them
        # through GetSecretValue like any deployed secret.
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.secretsmanager.models import secretsmanager_backends

        backend = secretsmanager_backends[DEFAULT_ACCOUNT_ID][os.environ["AWS_DEFAULT_REGION"]]
        for name, value in values.items():
            backend.create_secret(name=name, secret_string=value, secret_binary=None, description=None, tags=None,
                                  kms_key_id=None, client_request_token=None, replica_regions=[],
                                  force_overwrite=False)
    return values


def registry_secret_names(*registry_files: str) -> list[str]:
    names: list[str] = []
    for path in registry_files:
        with open(path, encoding="utf-8") as fh:
            data: dict[str, Any] = json.load(fh)
        for entries in data.values():
            names += [entry["secret_name"] for entry in entries]
    return names


# What moto's CloudFormation can create of the merge template (no SAM, no custom resources).
CFN_DEPLOYABLE = {"AWS::DynamoDB::Table", "AWS::KMS::Key", "AWS::KMS::Alias", "AWS::SQS::Queue",
                  "AWS::StepFunctions::StateMachine", "AWS::Logs::LogGroup", "AWS::SNS::Topic",
                  "AWS::SecretsManager::Secret"}


def deploy_with_cloudformation(env: dict[str, str], secret_names: list[str]) -> Resources:
    """Deploy infra/generate.py's template (its non-SAM part) into moto's CloudFormation.

    Three moto gaps are bridged here, and only here: moto ignores DefinitionSubstitutions (the
    Lambda ARNs are substituted into the definition before deploying), its CloudFormation
    creates state machines in the backend that does not execute them (routed to the one that
    does), and it has no Secrets Manager resource (secrets are filled in as an operator would).
    """
    from moto.stepfunctions import models as sfn_models
    from moto.stepfunctions.responses import get_backend

    from infra import generate

    class _ExecutingBackends:
        def __getitem__(self, account: str) -> Any:
            return {"us-east-1": get_backend(account, "us-east-1")}

    original_backends = sfn_models.stepfunctions_backends
    sfn_models.stepfunctions_backends = _ExecutingBackends()  # type: ignore[assignment]
    try:
        return _deploy(env, secret_names, generate.template(
            "local", {**env, "STATE_MACHINE_NAME": "yztc-query", "DEADLINE_STATE_MACHINE_NAME": "yztc-deadline",
                      "SMS_SENDER_ID": "10699000"}))
    finally:
        sfn_models.stepfunctions_backends = original_backends


def _deploy(env: dict[str, str], secret_names: list[str], template: dict[str, Any]) -> Resources:
    resources = {name: resource for name, resource in template["Resources"].items()
                 if resource.get("Type") in CFN_DEPLOYABLE}
    # moto ignores DefinitionSubstitutions: the reply queue's URL (moto reads the name off its end) goes
    # into the query workflow's definition before the stack creates the queue.
    os.environ["REPLY_QUEUE_URL"] = f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/{env['REPLY_QUEUE_NAME']}"
    for resource in resources.values():  # the query workflow, and the dispute workflow (infra/disputes.py)
        if resource["Type"] == "AWS::StepFunctions::StateMachine":
            machine = resource["Properties"]
            machine.pop("DefinitionSubstitutions")
            machine["DefinitionString"] = with_local_functions(machine["DefinitionString"])
            machine["RoleArn"] = f"arn:aws:iam::{ACCOUNT}:role/yztc-states"  # roles name SAM functions
    outputs_wanted = {"StateMachineArn": {"Value": {"Ref": "QueryStateMachine"}},
                      "StartQueueUrl": {"Value": {"Ref": "StartQueue"}},
                      "RetryQueueUrl": {"Value": {"Ref": "RetryQueue"}},
                      "ReplyQueueUrl": {"Value": {"Ref": "ReplyQueue"}},
                      "ReplyDeadLetterQueueUrl": {"Value": {"Ref": "ReplyDeadLetterQueue"}},
                      "DeadlineStateMachineArn": {"Value": {"Ref": "DeadlineStateMachine"}}}
    if "DisputeStateMachine" in resources:
        outputs_wanted["DisputeStateMachineArn"] = {"Value": {"Ref": "DisputeStateMachine"}}
    cfn = clients.client("cloudformation")
    cfn.create_stack(StackName="yztc", TemplateBody=json.dumps({"Resources": resources, "Outputs": outputs_wanted}))
    stack = cfn.describe_stacks(StackName="yztc")["Stacks"][0]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        raise RuntimeError(f"stack {stack['StackStatus']}")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    values = fill_secrets([env["PEPPER_SECRET_NAME"], env["ALTCHA_SECRET_NAME"], *secret_names])
    dispute_machine = outputs.get("DisputeStateMachineArn") or _dispute_resources_not_in_template()
    return Resources(env={"STATE_MACHINE_ARN": outputs["StateMachineArn"],
                          "START_QUEUE_URL": outputs["StartQueueUrl"],
                          "RETRY_QUEUE_URL": outputs["RetryQueueUrl"],
                          "REPLY_QUEUE_URL": outputs["ReplyQueueUrl"],
                          "REPLY_DLQ_URL": outputs["ReplyDeadLetterQueueUrl"],
                          "DEADLINE_STATE_MACHINE_ARN": outputs["DeadlineStateMachineArn"],
                          "DISPUTE_STATE_MACHINE_ARN": dispute_machine}, secrets=values)


def _dispute_resources_not_in_template() -> str:
    """Until infra/ defines the dispute workflow and its tables, they are created here directly."""
    from chalicelib.storage.models import create_all

    create_all()  # only the tables the template lacks
    return create_dispute_machine(f"arn:aws:iam::{ACCOUNT}:role/yztc-states")

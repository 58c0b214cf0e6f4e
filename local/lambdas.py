"""Route moto's Lambda invocations to the app's own functions, in-process.

moto's Step Functions interpreter invokes Lambda through its Lambda backend;
with `use_docker: False` that is LambdaSimpleBackend.invoke, the seam replaced
here. A raised exception becomes a function error whose errorType is the
exception's class name, as the Python Lambda runtime reports it, so the ASL's
Retry/Catch match on our exception names.
"""
from __future__ import annotations

import contextlib
import json
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from moto.awslambda_simple.models import LambdaSimpleBackend

Handler = Callable[[dict[str, Any], Any], Any]

# Which deployed function the current thread is standing in for (tests attribute AWS calls by it).
CURRENT = threading.local()


@contextlib.contextmanager
def acting_as(function: str) -> Iterator[None]:
    previous = getattr(CURRENT, "function", None)
    CURRENT.function = function
    try:
        yield
    finally:
        CURRENT.function = previous




class FakeContext:
    def __init__(self, name: str, timeout_ms: int = 60_000) -> None:
        self.function_name = name
        self.aws_request_id = "local"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        self.memory_limit_in_mb = 256
        self._timeout_ms = timeout_ms

    def get_remaining_time_in_millis(self) -> int:
        return self._timeout_ms


class Dispatcher:
    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.calls: list[str] = []
        # name -> how many more successful invocations to report as lost
        # (the function ran, the caller saw Lambda.ServiceException): tests only.
        self.lose_results: dict[str, int] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0

    def wait_idle(self, timeout: float) -> bool:
        """True once no invocation runs (a stopped execution's Task finishes the call it is in)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def invoke(self, function_name: str, body: bytes | str | None, response_headers: dict[str, str]) -> bytes:
        name = function_name.split(":function:")[-1].split(":")[0]  # ARN or bare name
        with self._lock:
            self.calls.append(name)
            self._in_flight += 1
        try:
            return self._run(name, body, response_headers)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _run(self, name: str, body: bytes | str | None, response_headers: dict[str, str]) -> bytes:
        handler = self.handlers[name]
        event = json.loads(body or "{}")
        try:
            with acting_as(logical_id(name)):
                result = handler(event, FakeContext(name))
        except Exception as exc:  # the Lambda runtime reports any exception this way
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc),
                               "stackTrace": traceback.format_tb(exc.__traceback__)[-3:]}).encode()
        with self._lock:
            if self.lose_results.get(name, 0) > 0:
                self.lose_results[name] -= 1
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": "Lambda.ServiceException",
                                   "errorMessage": "result lost (injected)"}).encode()
        return json.dumps(result, ensure_ascii=False).encode()


def logical_id(name: str) -> str:
    from chalicelib.contracts import FUNCTIONS

    return next(fn.logical_id for fn in FUNCTIONS if fn.name == name)


def install(app_module: Any) -> Dispatcher:
    """Workflow steps are app.py's functions of the same name (chalicelib/contracts.py)."""
    from chalicelib.contracts import DEADLINE_WORKFLOW_FUNCTIONS, DISPUTE_WORKFLOW_FUNCTIONS, WORKFLOW_FUNCTIONS

    steps = (*WORKFLOW_FUNCTIONS, *DISPUTE_WORKFLOW_FUNCTIONS, *DEADLINE_WORKFLOW_FUNCTIONS)
    dispatcher = Dispatcher({fn.name: getattr(app_module, fn.name) for fn in steps})

    def invoke(self: LambdaSimpleBackend, function_name: str, qualifier: str | None, body: Any,
               headers: Any, response_headers: Any) -> bytes:
        return dispatcher.invoke(function_name, body, response_headers)

    LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]
    _reuse_the_interpreters_lambda_client()
    _a_scope_stack_per_parse()
    return dispatcher


def _a_scope_stack_per_parse() -> None:
    """moto's ASL Preprocessor keeps its query-language scope stack in a class attribute, so every execution
    parsing its definition at the same moment shares it: two executions starting together corrupt each other's
    parse, and an IndexError kills one's thread, leaving it RUNNING for ever (seen in make test). Each
    Preprocessor gets a stack of its own."""
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    if getattr(Preprocessor, "_yztc_own_scope", False):
        return
    original = Preprocessor.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._query_language_per_scope = []

    Preprocessor.__init__ = init  # type: ignore[method-assign]
    Preprocessor._yztc_own_scope = True  # type: ignore[attr-defined]


def _reuse_the_interpreters_lambda_client() -> None:
    """moto's Step Functions interpreter builds a new boto3 Lambda client for every Task it runs (6 ms of CPU
    with botocore's caches warm, more when it reloads the service model from disk, which py-spy caught it doing
    on an idle test stack running its once-a-second deadline executions). A client is thread-safe and these are
    all alike (fake keys, no retries), so one per region and endpoint serves them all, for the process's life:
    a stack test's clients, not just the first's (one client a test was 1 % of make test's CPU)."""
    from moto.core.models import botocore_stubber
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    if hasattr(lambda_eval_utils.boto_client_for, "__wrapped__"):
        return
    original = lambda_eval_utils.boto_client_for
    clients: dict[tuple[str, str, bool], Any] = {}
    lock = threading.Lock()

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        key = (region, service, bool(botocore_stubber.enabled))  # moto's ignores the state's credentials
        with lock:
            if key not in clients:
                clients[key] = original(region=region, service=service, state_credentials=state_credentials)
            return clients[key]

    boto_client_for.__wrapped__ = original  # type: ignore[attr-defined]
    lambda_eval_utils.boto_client_for = boto_client_for


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": m.get("Attributes", {}), "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
        "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": "us-east-1",
    } for m in messages]}


def scheduled_event() -> dict[str, Any]:
    """What EventBridge sends a scheduled function."""
    import datetime as dt

    return {"version": "0", "id": "local", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": "us-east-1", "resources": [], "detail": {}}


def pump_queue(app_module: Any, sqs: Any, queue_url: str, *, function: str = "start_queries",
               wait_seconds: int = 0, visibility_on_failure: int | None = None,
               stopped: threading.Event | None = None) -> int:
    """One receive -> handler -> delete round, as Lambda's SQS poller does.

    Returns how many messages were handled. On failure the messages stay in the
    queue and come back after their visibility timeout (or `visibility_on_failure`);
    likewise when `stopped` is set by the time the receive returns (a poller shutting down).
    """
    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds)
    messages = received.get("Messages", [])
    if not messages or (stopped is not None and stopped.is_set()):
        return 0
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    try:
        with acting_as(logical_id(function)):
            getattr(app_module, function)(sqs_event(messages, arn), FakeContext(function))
    except Exception:
        if visibility_on_failure is not None:
            for m in messages:
                sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"],
                                              VisibilityTimeout=visibility_on_failure)
        raise
    sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
    return len(messages)

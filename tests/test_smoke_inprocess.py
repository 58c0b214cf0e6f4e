from tests.conftest import post_json


def test_code_then_query_is_accepted(stack, api):
    r = post_json(api, "/v1/verification-codes", {"phone": "13812345678"})
    assert r.status_code == 202, r.body
    code = stack.read_outbox()[-1]["message"].split("验证码为")[1][:6]
    r = post_json(api, "/v1/queries", {"phone": "13812345678", "id_last6": "12345x", "code": code})
    assert r.status_code == 202, r.body


def test_full_query_replies_by_sms(stack, api):
    import boto3
    from tests.conftest import wait_for
    r = post_json(api, "/v1/verification-codes", {"phone": "13812345678"})
    code = stack.read_outbox()[-1]["message"].split("验证码为")[1][:6]
    r = post_json(api, "/v1/queries", {"phone": "13812345678", "id_last6": "12345x", "code": code})
    qid = r.json_body["query_id"]
    assert stack.pump_once() == 1
    sfn = boto3.client("stepfunctions")
    arn = stack.env["STATE_MACHINE_ARN"].replace(":stateMachine:", ":execution:") + ":" + qid
    desc = wait_for(lambda: (d := sfn.describe_execution(executionArn=arn))["status"] != "RUNNING" and d, 60)
    print(desc)
    for e in sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]:
        print(e["type"], {k: v for k, v in e.items() if k.endswith("Details")})
    print(stack.read_outbox())
    assert desc["status"] == "SUCCEEDED"
    print({c: p.callbacks for c, p in stack.partners.items()})

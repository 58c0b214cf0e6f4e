"""openapi.json describes the API as it is: valid OpenAPI 3.1, served at /v1/openapi.json, every route and
every error status; and Schemathesis, driving the local stack over HTTP from it, finds nothing."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from openapi_spec_validator import validate

import app as app_module
from chalicelib import errors
from chalicelib.api.responses import STATUS_BY_ERROR
from tests.conftest import PRODUCERS, SUBPROCESSES, produced_once, run_to_the_end
from tests.helpers import make_run

if TYPE_CHECKING:
    from pathlib import Path

    from chalice.test import Client

    from local.stack import LocalStack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPENAPI_FILE = os.path.join(ROOT, "chalicelib", "api", "openapi.json")
# Routes the app registers only to answer 405 (chalicelib/api/middleware.py, refuse_other_methods) are not operations.
SERVED = {(path, method) for path, methods in app_module.app.routes.items() for method, entry in methods.items()
          if not entry.view_name.startswith("refuse")}


@pytest.fixture(scope="module")
def description() -> dict[str, Any]:
    with open(OPENAPI_FILE, encoding="utf-8") as fh:
        return dict(json.load(fh))


def test_the_description_is_valid_openapi_3_1(description: dict[str, Any]) -> None:
    assert description["openapi"].startswith("3.1.")
    validate(description)


def test_every_route_is_described_and_nothing_else(description: dict[str, Any]) -> None:
    described = {(path, method.upper()) for path, item in description["paths"].items() for method in item}
    assert described == SERVED


def test_the_api_serves_the_bundled_description(stack: LocalStack, api: Client) -> None:
    response = api.http.get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    with open(OPENAPI_FILE, encoding="utf-8") as fh:
        assert response.json_body == json.load(fh)


def _documented_errors(description: dict[str, Any]) -> Iterator[tuple[str, str, int, str, str]]:
    """(path, method, status, error code, JSON pointer to the body's schema) for every documented error."""
    shared = description["components"]["responses"]
    for path, item in description["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                pointer = f"/paths/{path.replace('/', '~1')}/{method}/responses/{status}"
                if "$ref" in response:
                    pointer = response["$ref"].removeprefix("#")
                    response = shared[response["$ref"].rsplit("/", 1)[1]]
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                for part in schema.get("allOf", []):
                    for code in part.get("properties", {}).get("error", {}).get("properties", {}).get(
                            "code", {}).get("enum", []):
                        yield path, method, int(status), code, f"{pointer}/content/application~1json/schema"


def test_each_documented_error_code_has_the_status_the_code_gives_it(description: dict[str, Any]) -> None:
    status_of = {cls.code: status for cls, status in STATUS_BY_ERROR.items()}
    documented = list(_documented_errors(description))
    assert documented
    for path, method, status, code, _ in documented:
        assert status_of[code] == status, (path, method, code)


def test_every_error_the_api_can_answer_is_documented_somewhere(description: dict[str, Any]) -> None:
    documented = {code for *_, code, _ in _documented_errors(description)}
    assert {cls.code for cls in STATUS_BY_ERROR} - documented == set()
    assert errors.ServiceError.code not in documented  # a 500 is a defect, never a documented answer


def test_every_error_body_the_code_answers_is_valid_against_its_documented_schema(
        description: dict[str, Any]) -> None:
    """The body `error_response` builds for each documented error, 428's fresh challenge included, is one the
    description admits: a client generated from it accepts what the API sends."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    from chalicelib.api.responses import error_response
    from chalicelib.challenges import ProofOfWork

    registry = Registry().with_resource("urn:openapi", Resource.from_contents(description, DRAFT202012))
    classes = {cls.code: cls for cls in STATUS_BY_ERROR}
    problems = []
    for path, method, status, code, pointer in _documented_errors(description):
        cls = classes[code]
        exc = (errors.ChallengeRequired(ProofOfWork(key=lambda: "k" * 32).challenge())
               if cls is errors.ChallengeRequired else cls(retry_after=60))
        response = error_response(exc)
        validator = Draft202012Validator({"$ref": f"urn:openapi#{pointer}"}, registry=registry)
        body = json.loads(response.body)
        problems += [(path, method, status, error.message) for error in validator.iter_errors(body)]
    assert problems == []


def test_every_error_response_documents_the_spec_shape(description: dict[str, Any]) -> None:
    error = description["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and error["properties"]["error"]["required"] == ["code", "message"]
    for item in description["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if int(status) in (429, 503) and "$ref" not in response:
                    assert "Retry-After" in response["headers"], (operation["operationId"], status)


# -- Schemathesis against the local stack (`python -m local.run`, as `make run` starts it) ----------
def _run_schemathesis(product: Path) -> None:
    """Run once per run, beside the tests (tests/conftest.py, PRODUCERS): its worker used to wait 85 s for it."""
    workdir = product.parent / "schemathesis"
    workdir.mkdir(exist_ok=True)
    with make_run(workdir, QUERY_DEADLINE_SECONDS="8") as running:
        SUBPROCESSES.append(running["process"])
        command = [os.path.join(os.path.dirname(sys.executable), "schemathesis"), "run",
                   f"{running['base']}/v1/openapi.json",
                   "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                               "response_schema_conformance",
                   "--max-examples", "50", "--seed", "9", "--generation-database", "none", "--no-color",
                   "--request-timeout", "10",
                   # Operations side by side: the run mostly waits on the stack's answers (30 CPU-s in 97 s alone);
                   # four workers took it to 61 s, with about the same CPU.
                   "--workers", "4"]
        status, stdout, stderr = run_to_the_end(command, workdir, 300)
    product.write_text(json.dumps({"status": status, "stdout": stdout, "stderr": stderr}), encoding="utf-8")


PRODUCERS["schemathesis_run"] = _run_schemathesis


@pytest.fixture
def schemathesis_run(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Schemathesis's exit status and output."""
    return dict(json.loads(produced_once(request.config, "schemathesis_run").read_text(encoding="utf-8")))


def test_schemathesis_finds_no_server_error_and_no_departure_from_the_description(
        schemathesis_run: dict[str, Any]) -> None:
    assert schemathesis_run["status"] == 0, schemathesis_run["stdout"][-6000:] + schemathesis_run["stderr"][-2000:]
    assert " passed" in schemathesis_run["stdout"]

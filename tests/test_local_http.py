"""The local API server (local/http.py) as Lambda behaves: each request handled reads its own request."""
from __future__ import annotations

import threading
from typing import Any

from chalice import Chalice
from chalice.test import Client

from local.http import serve_requests_concurrently
from tests.conftest import CLIENT_PROJECT


def _two_requests_at_once(app: Chalice) -> dict[str, Any]:
    """GIVEN a route that waits until both requests are inside their handlers, WHEN two threads call it at once,
    THEN each answers what it read from `app.current_request` once both had begun."""
    both_inside = threading.Barrier(2, timeout=10)

    @app.route("/whoami")
    def whoami() -> dict[str, Any]:
        both_inside.wait()  # each request has been set on the app by now
        request = app.current_request
        assert request is not None
        return {"caller": request.headers["x-caller"]}

    answers: dict[str, Any] = {}

    def call(caller: str) -> None:
        with Client(app, project_dir=CLIENT_PROJECT) as client:
            response = client.http.get("/whoami", headers={"X-Caller": caller})
            answers[caller] = (response.status_code, response.json_body)

    threads = [threading.Thread(target=call, args=(caller,)) for caller in ("cmcc-gd", "cucc-bj")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert all(status == 200 for status, _ in answers.values()) and len(answers) == 2, answers
    return {caller: body["caller"] for caller, (_, body) in answers.items()}


def test_two_requests_at_once_each_read_their_own_request() -> None:
    app = Chalice("concurrent")
    serve_requests_concurrently(app)
    assert _two_requests_at_once(app) == {"cmcc-gd": "cmcc-gd", "cucc-bj": "cucc-bj"}


def test_chalice_alone_hands_both_requests_the_later_one() -> None:
    """Why the local server needs it (aws/chalice#759): if Chalice ever keeps the request per thread itself, this
    fails, and serve_requests_concurrently can go."""
    answers = _two_requests_at_once(Chalice("as-chalice-ships"))
    assert len(set(answers.values())) == 1, answers


def test_serving_concurrently_twice_changes_nothing() -> None:
    app = Chalice("twice")
    serve_requests_concurrently(app)
    kind = type(app)
    serve_requests_concurrently(app)
    assert type(app) is kind

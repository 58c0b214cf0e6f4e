"""Fixtures: fake credentials and the environment first, then moto, then our code.

Every stack test gets emptied moto resources (in-process, executing the real ASL; built once per worker,
see _World), fresh simulators on free ports, and the API served over HTTP on the session's port,
assembled by the same local/stack.py that `make run` uses.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from chalice.test import Client
    from playwright.sync_api import Browser, Page

    from local.stack import LocalStack


_HANDED_OUT: set[int] = set()
_HANDING_OUT = threading.Lock()  # a producer's `make run` and a test's may start at once


def unshared_port() -> int:
    """A free port below the kernel's ephemeral range (32768-60999), for a port bound later or again and again:
    the session's API between two stacks, a `make run` subprocess's API and moto while it starts. A port from
    bind(0) could meanwhile be handed to any other bind(0): this session's simulators, another xdist worker's,
    another process's. Each call in a process gives another port, and processes start far apart (pid × 97), so
    two workers' ports do not meet while neither has bound its own."""
    first = os.getpid() * 97 % 10000
    with _HANDING_OUT:
        for offset in range(10000):
            port = 20000 + (first + offset) % 10000
            if port in _HANDED_OUT:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port in 20000-29999")


# The shell's environment, before the tests set theirs: what `make run` sees on a newcomer's machine.
# (Partner and operator modes are each test's choice, never the shell's.)
NEWCOMER_ENV = {k: v for k, v in os.environ.items()
                if not k.startswith(("AWS_", "MOTO")) and k not in ("PARTNER_MODES", "OPERATOR_MODES")}
WORKDIR = tempfile.mkdtemp(prefix="yztc-tests-")
API_PORT = unshared_port()

from local.stack import StackOptions, configure_environment  # noqa: E402

# Tests pump the start queue and run the delivery job themselves; lookup retries flow on their own, after
# 1 s, 2 s, 4 s… of backoff rather than the deployed 2 s, 4 s, 8 s…: a query with a flaky partner (douyin in
# the fixtures fails twice) is answered 3 s sooner, in most stack tests.
# The fixtures' partners and operators call back five times sooner (jd after 0.6 s, not 3 s): a query's answers
# keep their order, and a test waits for them a fifth as long.
# Every test speaks from 127.0.0.1 and many ask codes for one number: no proof of work unless a test
# asks for the deployed thresholds (SPEC §3: 2 codes per number a day, 20 per client an hour).
NO_CHALLENGES: dict[str, Any] = {"code_free_per_number": 1000, "code_free_per_client": 100_000}
BASE_OPTIONS = StackOptions(workdir=WORKDIR, api_port=API_PORT, deadline_seconds=30, pump=False, schedule_seconds=0,
                            first_backoff_seconds=1, callback_delay_scale=0.2, retry_interval_scale=0.25,
                            **NO_CHALLENGES)
configure_environment(BASE_OPTIONS)
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("PARTNER_MODES", None)

from moto import mock_aws  # noqa: E402

MOTO_CONFIG: Any = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}


def reset_caches() -> None:
    from chalicelib import clients, registry, wiring
    from chalicelib.config import settings

    for cached in (settings, registry.companies, registry.carriers, *wiring.GETTERS):  # app.py re-exports these
        cached.cache_clear()
    registry.operators.cache_clear()
    clients.reset()  # tests hook events on the clients (an SNS refusal…): each test starts with fresh ones


# The test pyramid, read from the fixtures a test asks for (first match wins), so a new test is placed by
# what it uses: `pytest -m unit` runs the pure rules in seconds, `-m "not e2e"` everything in-process.
LAYERS = (("browser", "e2e"), ("local_run", "e2e"), ("schemathesis_run", "e2e"), ("stack", "stack"),
          ("packaged", "template"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        layer = next((layer for fixture, layer in LAYERS if fixture in fixtures), "unit")
        item.add_marker(getattr(pytest.mark, layer))


# -- checks produced once per run, beside the tests ---------------------------------------------------------------
# Two checks spend a minute in subprocesses: the packaged template (chalice package, cfn-lint, checkov) and
# Schemathesis against `make run`. The worker that ran one sat waiting for them (75 s and 85 s in a loaded make test).
# Each is produced once per run, by whichever process of the run asks first, under a lock in the run's shared
# directory; and it starts as soon as the tests are collected, in a thread beside them, so the test that reads it
# waits only for what is left. A producer that fails leaves nothing: the test's own call produces it again and fails
# with the error.
PRODUCERS: dict[str, Callable[[Path], None]] = {}  # fixture name -> writes that fixture's product to the path
SUBPROCESSES: list[subprocess.Popen[Any]] = []  # what producers started: killed if the run is stopped (-x, Ctrl-C)
_PRODUCING: list[threading.Thread] = []


def produced_once(config: pytest.Config, fixture: str) -> Path:
    """The product of PRODUCERS[fixture] for this run: made now, or by another process of the run."""
    basetemp = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]  # the tmp_path_factory fixture
    # The same directory for every xdist worker of this run (without xdist, the run's own).
    shared = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
    product = shared / f"{fixture}.product"
    with open(shared / f"{fixture}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not product.exists():
            PRODUCERS[fixture](product)
    return product


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:  # `--collect-only` runs no test: nothing to produce, nor to wait for
        return
    wanted = {name for item in session.items for name in getattr(item, "fixturenames", ()) if name in PRODUCERS}
    for fixture in sorted(wanted):
        def produce(fixture: str = fixture) -> None:
            with contextlib.suppress(Exception):  # the test produces it again and fails with the error
                produced_once(session.config, fixture)

        thread = threading.Thread(target=produce, daemon=True, name=f"produce-{fixture}")
        thread.start()
        _PRODUCING.append(thread)


def run_to_the_end(command: list[str], cwd: str | Path, timeout: float) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a producer's subprocess, which the run kills if it ends first."""
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        SUBPROCESSES.append(process)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()  # not left running on, nor waited for without end
            raise
    return process.returncode, stdout, stderr


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    WORLD.close()
    # A worker out of tests may be producing for another one, which waits for it: it finishes first. A stopped run
    # (-x, Ctrl-C) leaves nothing running on.
    if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and not (session.shouldstop
                                                                                  or session.shouldfail):
        for thread in _PRODUCING:
            thread.join()
    for process in SUBPROCESSES:
        if process.poll() is None:
            process.kill()


@pytest.fixture
def stack_options() -> StackOptions:
    """Override in a test module (or parametrize) to change partner modes or the deadline."""
    return dataclasses.replace(BASE_OPTIONS)


def routes_only(options: StackOptions) -> StackOptions:
    """`options` for tests of the routes' own answers (input rules, codes, limits, hostile bodies, callbacks): the
    API, in-process and over HTTP, on moto and the simulators, without the pollers of the retry and reply queues and
    without the deadline timer. Those start deadline executions every second and long-poll three queues, and on a
    test that only asks the API they cost more than its body: a validation test took 224 ms of CPU with them and
    102 ms without (setup, call and teardown). A query on it is never answered (no deadline sweeps it, no poller
    sends its reply): nothing that waits for a reply, or asserts that none came, belongs here.

    A test or module marked `routes_only` gets its stack_options so."""
    return dataclasses.replace(options, retries=False, replies=False, deadlines=False)


class _World:
    """One moto per worker, kept from test to test while they ask for the same registries: building the
    tables, queues, state machines, key and 144 secrets cost each stack test about a second. Between tests
    it is stopped and emptied (local/aws.empty), so each test still starts on a world nobody has used."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.mock: Any = None
        self.resources: Any = None

    def enter(self, options: StackOptions) -> Any:
        """The resources to reuse for a stack with `options` (None: build them, in a fresh moto)."""
        key = json.dumps([options.provision, options.company_changes, options.extra_companies,
                          options.operator_changes, options.extra_operators], sort_keys=True)
        if key != self.key:
            self.close()
            self.mock = mock_aws(config=MOTO_CONFIG)
            self.mock.start()
            self.key = key
        return self.resources

    def keep(self, resources: Any) -> None:
        self.resources = resources

    def close(self) -> None:
        if self.mock is not None:
            self.mock.stop()
        self.key = self.mock = self.resources = None


WORLD = _World()


def pytest_runtest_setup(item: pytest.Item) -> None:
    # A test without the stack may start its own moto: it gets a fresh one, not this worker's world.
    if "stack" not in getattr(item, "fixturenames", ()):
        WORLD.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed stack test says what each simulator was asked and how each of its callbacks ended (the HTTP
    status, 0: never got through): a missing answer then shows whether it was never sent, refused, or lost."""
    report = yield
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.when == "call" and report.failed and stack is not None:
        report.sections.append(("simulators", simulator_report(stack)))
    return report


def simulator_report(stack: LocalStack) -> str:
    from local.simulators import pending_callbacks

    lines = [f"{company}: {len(sim.requests)} requests, callbacks {sim.callbacks}"
             for company, sim in sorted(stack.partners.items())]
    sim = stack.operators
    if sim is not None:
        operators = sorted({r["operator"] for r in sim.requests} | set(sim.callbacks))
        lines += [f"{op}: {len(sim.requests_to(op))} requests, callbacks {sim.callbacks.get(op)}" for op in operators]
    lines.append(f"callbacks scheduled and not finished: {pending_callbacks()}")
    return "\n".join(lines)


@pytest.fixture
def stack(stack_options: StackOptions, monkeypatch: pytest.MonkeyPatch,
          request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    from local.stack import LocalStack

    if request.node.get_closest_marker("routes_only"):
        stack_options = routes_only(stack_options)
    monkeypatch.setenv("QUERY_DEADLINE_SECONDS", str(stack_options.deadline_seconds))
    provisioned = WORLD.enter(stack_options)
    reset_caches()
    open(os.path.join(WORKDIR, "sms-outbox.jsonl"), "w").close()
    local = LocalStack(stack_options, provisioned)
    local.env["QUERY_DEADLINE_SECONDS"] = str(stack_options.deadline_seconds)
    try:
        local.start()
    except BaseException:
        local.stop()
        WORLD.close()  # a stack that failed to start leaves nothing to reuse
        reset_caches()
        raise
    WORLD.keep(local.provisioned)
    try:
        yield local
    finally:
        local.stop()  # its timers first: no deadline execution starts after this
        try:
            _quiesce(local)
        except BaseException:
            WORLD.close()
            raise
        finally:
            reset_caches()


def _quiesce(local: LocalStack) -> None:
    """Nothing of this test runs on into the next one: executions stopped, their Lambda calls finished, every
    table and queue emptied. A world that does not come to rest is dropped instead (the next test builds one)."""
    from local import aws

    if not _stop_executions() or not local.dispatcher.wait_idle(timeout=15):
        WORLD.close()
        return
    aws.empty()


def _stop_executions() -> bool:
    """False when one could not be stopped (its worker thread had not begun on a loaded machine)."""
    from chalicelib import clients

    sfn = clients.client("stepfunctions")
    stopped = True
    for machine in sfn.list_state_machines()["stateMachines"]:
        for execution in sfn.list_executions(stateMachineArn=machine["stateMachineArn"],
                                             statusFilter="RUNNING")["executions"]:
            arn = execution["executionArn"]
            # An execution whose worker thread has not begun cannot be stopped yet.
            try:
                wait_for(lambda arn=arn: _try_stop(sfn, arn), 10, f"stopping {arn}")  # type: ignore[misc]
            except AssertionError:
                stopped = False
    return stopped


def _try_stop(sfn: Any, arn: str) -> bool:
    try:
        sfn.stop_execution(executionArn=arn)
    except AttributeError:
        return False
    return True


# Chalice's test client applies a stage's environment from <project_dir>/.chalice/config.json to
# each request; the deployed stages name deployed resources, so it gets a project with no env.
CLIENT_PROJECT = os.path.join(WORKDIR, "chalice-test-project")
os.makedirs(os.path.join(CLIENT_PROJECT, ".chalice"), exist_ok=True)
with open(os.path.join(CLIENT_PROJECT, ".chalice", "config.json"), "w") as _fh:
    json.dump({"version": "2.0", "app_name": "yizhengtongcha", "stages": {"dev": {}}}, _fh)


@pytest.fixture
def api(stack: LocalStack) -> Iterator[Client]:
    """Chalice's in-process test client on the same app and the same moto."""
    from chalice.test import Client

    with Client(stack.app_module.app, project_dir=CLIENT_PROJECT) as client:
        yield client


def post_json(client: Any, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.http.post(path, headers={"Content-Type": "application/json", **(headers or {})}, body=raw)


def wait_for(condition: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll until condition() is truthy (the workflow runs on moto's threads)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def bundled_registries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The registries chalicelib/data ships, not the files a stack test on this worker may have written (unit
    tests of texts and rules that read the registry)."""
    from chalicelib import registry
    from chalicelib.config import settings

    data = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chalicelib", "data")
    monkeypatch.setenv("COMPANY_REGISTRY_FILE", os.path.join(data, "companies.json"))
    monkeypatch.setenv("OPERATOR_REGISTRY_FILE", os.path.join(data, "operators.json"))
    caches = (settings, registry.companies, registry.operators)
    for cached in caches:
        cached.cache_clear()
    yield
    for cached in caches:
        cached.cache_clear()


@pytest.fixture
def codes_without_resend_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flows that need a fresh code right after another one (a dispute after its query, a query after a release):
    the 60 s resend gap is not under test there (tests/test_codes.py tests it)."""
    monkeypatch.setenv("CODE_RESEND_SECONDS", "0")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium headless shell (Blink and V8 without the desktop browser around them, as Playwright runs
    headless Chromium), driven by Playwright (make test installs it; no browser download)."""
    import shutil

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium-headless-shell") or "/usr/bin/chromium-headless-shell",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


@pytest.fixture
def page(stack: LocalStack, browser: Browser) -> Iterator[Page]:
    """The service's page on the stack, in a phone's 360 px viewport; `requests_seen` lists every URL it fetched
    (nothing may come from another origin)."""
    context = browser.new_context(viewport={"width": 360, "height": 780}, locale="zh-CN")
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    requests_seen: list[str] = []
    tab.on("request", lambda request: requests_seen.append(request.url))
    tab.requests_seen = requests_seen  # type: ignore[attr-defined]  # read by the pages' screenshot checks
    tab.goto(f"http://127.0.0.1:{API_PORT}/")
    tab.wait_for_selector(".company")
    yield tab
    context.close()

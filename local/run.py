"""`make run`: the whole service on this machine until Ctrl-C or SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading

MOTO_PORT = int(os.environ.get("MOTO_PORT", "5000"))


def main() -> int:
    os.environ["MOTO_PORT"] = str(MOTO_PORT)  # moto's Step Functions calls Lambda here
    from moto.core.config import default_user_config
    from moto.server import ThreadedMotoServer

    default_user_config["stepfunctions"] = {"execute_state_machine": True}
    default_user_config["lambda"] = {"use_docker": False}
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per AWS call otherwise
    # Before anything starts: a stop asked for while the stack comes up (the API answers before the last
    # line below is printed) is kept, and honoured once it is up, instead of killing the process half-way.
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=MOTO_PORT, verbose=False)
    moto.start()

    from local.stack import ROOT, LocalStack, StackOptions

    with open(os.path.join(ROOT, "chalicelib", "data", "companies.json"), encoding="utf-8") as fh:
        companies = [entry["id"] for entry in json.load(fh)["companies"]]
    options = StackOptions(
        workdir=os.environ.get("LOCAL_WORKDIR", StackOptions.workdir),
        api_port=int(os.environ.get("API_PORT", "8000")),
        deadline_seconds=int(os.environ.get("QUERY_DEADLINE_SECONDS", "60")),
        dispute_deadline_seconds=int(os.environ.get("DISPUTE_DEADLINE_SECONDS", "120")),
        release_deadline_seconds=int(os.environ.get("RELEASE_DEADLINE_SECONDS", "120")),
        partner_modes=os.environ.get("PARTNER_MODES", ""),
        carrier_port=int(os.environ.get("CARRIER_PORT", "8100")),
        # Partners on 8101, 8102, … in registry order; each answers GET /stats.
        partner_ports={} if os.environ.get("SIMULATOR_PORTS") == "any" else {
            c: 8101 + i for i, c in enumerate(companies)},
        schedule_seconds=int(os.environ.get("DELIVERY_SCHEDULE_SECONDS", "60")),
        # Every operator (SPEC §9) under one simulator: http://127.0.0.1:8200/{operator}, GET …/stats.
        operator_port=int(os.environ.get("OPERATOR_PORT", "8200")),
        operator_modes=os.environ.get("OPERATOR_MODES", ""),
        print_sms=True,
        # Deadlines kept in 5-second slots instead of minutes, so the deadline path runs in seconds.
        deadline_slot_seconds=int(os.environ.get("DEADLINE_SLOT_SECONDS", "5")),
        aws_endpoint=f"http://127.0.0.1:{MOTO_PORT}",
    )
    if os.environ.get("SIMULATOR_PORTS") == "any":
        options.carrier_port = 0
        options.operator_port = 0
    stack = LocalStack(options).start()
    api = f"http://127.0.0.1:{options.api_port}"
    print(f"一证通查 is running: {api}  (query page {api}/ , SMS outbox {api}/local/sms)", flush=True)
    print(f"AWS (moto): http://127.0.0.1:{MOTO_PORT}  region us-east-1; SMS also in {stack.outbox}", flush=True)
    print(f"Partner deadline: {options.deadline_seconds}s; partner modes: "
          + ", ".join(f"{c}={p.mode}" for c, p in stack.partners.items()), flush=True)
    print("Partners (GET /stats shows what each received): "
          + ", ".join(f"{c} {p.url}" for c, p in stack.partners.items()), flush=True)
    unusual = {o: m for o, (m, _) in stack.operators.modes.items() if m != "callback"}
    print(f"Operators ({len(stack.operators.secrets)}, GET {stack.operators.url}/<operator>/stats): callback unless "
          + ", ".join(f"{o}={m}" for o, m in unusual.items()), flush=True)

    # Not a bare wait(): the kernel may hand SIGTERM to any of moto's or the pumps' threads, and then Python runs the
    # handler only when the main thread next runs bytecode; blocked in wait() it never would (a test saw SIGTERM
    # ignored for 20 s). Waking twice a second lets the handler run.
    while not stopped.wait(timeout=0.5):
        pass
    print("stopping…", flush=True)
    stack.stop()
    moto.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    # Everything that holds state has stopped above; what is left are daemon threads (moto's executions,
    # a Lambda caught mid-call) that race the interpreter's teardown for the GIL: 2 s on an idle machine,
    # over 20 s on a loaded one. Nothing is lost by skipping it, and Ctrl-C should stop at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

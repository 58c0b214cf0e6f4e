"""一证通查: the Chalice app and its Lambda entry points. Registration only.

Routes and functions live in blueprints per area (chalicelib/api/), their collaborators in chalicelib/wiring.py,
built on first use and kept for the life of the Lambda container. Importing this module loads no domain module:
that import is every function's cold start (bench/cold_start.py).
"""
from __future__ import annotations

from chalice import Chalice

from chalicelib.api import callbacks, cards, functions, public, queries, releases
from chalicelib.api import disputes as dispute_routes  # `disputes` is the getter below

# The deployed template's handlers are "app.<function>": these names (also what tests and the local stack call
# and patch). The getters are the collaborators' caches, which they clear to get a fresh container.
from chalicelib.api.functions import (  # noqa: F401
    ask_companies,
    deadline_step,
    deliver_backlog,
    forward_dispute,
    replies_failed,
    retry_lookups,
    send_replies,
    start_deadlines,
    start_queries,
    verify_carrier,
)
from chalicelib.api.middleware import refuse_other_methods, spec_errors
from chalicelib.wiring import (  # noqa: F401
    carrier_check,
    code_service,
    deadlines,
    delivery,
    dispute_intake,
    dispute_notifier,
    disputes,
    hasher,
    intake,
    lookups,
    reply_sender,
    vault,
)

app = Chalice(app_name="yizhengtongcha", configure_logs=False)  # Powertools Logger owns logging (wiring.logger)
app.register_middleware(spec_errors, "http")
app.register_blueprint(public.bp)
app.register_blueprint(queries.bp)
app.register_blueprint(cards.bp)
app.register_blueprint(dispute_routes.bp)
app.register_blueprint(releases.bp)
app.register_blueprint(callbacks.bp)
app.register_blueprint(functions.bp)
refuse_other_methods(app)  # last: it reads every route registered above

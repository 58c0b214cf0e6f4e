"""The service's collaborators, each built on first use and kept for the life of the Lambda container.

Each getter imports its domain modules itself: `import app` (what every function's container pays before its
first event) loads none of them, and a function loads only what its own getters need. Tests and the local stack
clear the caches (`cache_clear`) to get what a fresh container has.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

if TYPE_CHECKING:  # annotations only: importing these at run time is what the getters put off
    from chalicelib.codes import CodeService
    from chalicelib.disputes.desk import DisputeDesk
    from chalicelib.disputes.intake import DisputeIntake
    from chalicelib.disputes.notify import DisputeNotifier
    from chalicelib.engine.deadlines import Deadlines
    from chalicelib.engine.delivery import Delivery
    from chalicelib.partners.lookups import LookupDesk
    from chalicelib.privacy import Hasher, Vault
    from chalicelib.queries import QueryIntake
    from chalicelib.workflow.carrier import CarrierCheck
    from chalicelib.workflow.reply import ReplySender

# The service's parent logger, built at import rather than on first use: the domain modules' child loggers
# (Logger(child=True)) write through its handler and format, so it must exist before any of them logs.
logger = Logger(service="yizhengtongcha")


@functools.cache
def hasher() -> Hasher:
    from chalicelib.privacy import Hasher

    return Hasher()


@functools.cache
def vault() -> Vault:
    from chalicelib.privacy import Vault

    return Vault()


@functools.cache
def code_service() -> CodeService:
    from chalicelib.codes import CodeService
    from chalicelib.sms import SmsSender

    return CodeService(hasher(), SmsSender())


@functools.cache
def intake() -> QueryIntake:
    from chalicelib.queries import QueryIntake

    return QueryIntake(code_service(), hasher(), vault())


@functools.cache
def deadlines() -> Deadlines:
    from chalicelib.engine.deadlines import Deadlines

    return Deadlines()


@functools.cache
def lookups() -> LookupDesk:
    from chalicelib.config import settings
    from chalicelib.partners.circuit import Circuits
    from chalicelib.partners.lookups import LookupDesk, PartnerClient

    config = settings()
    return LookupDesk(hasher(), vault(), Circuits(config.circuit_failure_threshold, config.circuit_probe_seconds),
                      PartnerClient(config), deadlines())


@functools.cache
def delivery() -> Delivery:
    from chalicelib.disputes.desk import DisputeTasks
    from chalicelib.engine.delivery import Delivery
    from chalicelib.partners.delivery import LookupTasks, partner_groups

    return Delivery([LookupTasks(lookups()), DisputeTasks(disputes())], lookups().circuits, partner_groups)


def _idempotency_store() -> Any:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    from chalicelib import clients
    from chalicelib.config import settings

    return DynamoDBPersistenceLayer(table_name=settings().idempotency_table, boto3_client=clients.client("dynamodb"))


@functools.cache
def dispute_notifier() -> DisputeNotifier:
    from chalicelib.disputes.notify import DisputeNotifier
    from chalicelib.sms import SmsSender

    return DisputeNotifier(vault(), SmsSender(), persistence=_idempotency_store())


@functools.cache
def disputes() -> DisputeDesk:
    from chalicelib.config import settings
    from chalicelib.disputes.desk import DisputeClient, DisputeDesk

    return DisputeDesk(vault(), lookups().circuits, DisputeClient(settings()), dispute_notifier(), deadlines())


@functools.cache
def dispute_intake() -> DisputeIntake:
    from chalicelib.disputes.intake import DisputeIntake

    return DisputeIntake(code_service(), vault(), hasher())


@functools.cache
def carrier_check() -> CarrierCheck:
    from chalicelib.workflow.carrier import CarrierCheck

    return CarrierCheck(vault(), deadlines())


@functools.cache
def reply_sender() -> ReplySender:
    from chalicelib.sms import SmsSender
    from chalicelib.workflow.reply import ReplySender

    return ReplySender(vault(), SmsSender(), persistence=_idempotency_store(), hasher=hasher())


# Every cached getter above, for whoever needs a fresh container's state (tests, the local stack, the bench).
GETTERS = (hasher, vault, code_service, intake, deadlines, lookups, delivery, dispute_notifier, disputes,
           dispute_intake, carrier_check, reply_sender)

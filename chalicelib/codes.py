"""Verification codes (SPEC §3): issued by SMS, stored only as keyed hashes, single use, up to 3 live per number."""
from __future__ import annotations

import hmac
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynamodb.exceptions import TransactWriteError, UpdateError

from chalicelib import errors, sms, telemetry
from chalicelib.challenges import ProofOfWork
from chalicelib.config import Settings, settings
from chalicelib.privacy import Hasher
from chalicelib.storage.models import Throttle, VerificationCode, at, condition_failed, transaction
from chalicelib.throttle import ConflictRetry, Counter, Lock, china_day_window, first_refused, hour_window

# SPEC §3: a new code cancels none of the number's earlier ones, up to this many live at once.
LIVE_CODES = 3
# Wrong tries: this many from one client refuse that client until a new code is sent; this many in all,
# from any clients, cancel every live code. So from one address a stranger can neither cancel the owner's
# code nor replace it, and guessing stays below 20 × 3 / 10^6 ≈ 1 in 16,700 per code window.
CLIENT_WRONG_TRIES = 5
TOTAL_WRONG_TRIES = 20


@dataclass(frozen=True)
class IssuedCode:
    expires_in: int
    resend_after: int


class _Changed(Exception):
    """The number's live codes changed between our read and our write: read again."""


class CodeService:
    def __init__(self, hasher: Hasher, sender: sms.SmsSender, proof: ProofOfWork | None = None,
                 config: Settings | None = None, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, retry: ConflictRetry | None = None) -> None:
        self._hasher = hasher
        self._sender = sender
        self._config = config or settings()
        self._clock = clock
        self._proof = proof or ProofOfWork(config=self._config, clock=clock)
        self._rng = rng or random.Random()
        self._retry = retry or ConflictRetry(self._config.conflict_retries)

    def phone_key(self, phone: str) -> str:
        return self._hasher.digest("phone", phone)

    def _code_hash(self, phone_key: str, code: str) -> str:
        return self._hasher.digest("code", phone_key, code)

    def challenge(self) -> dict[str, Any]:
        return self._proof.challenge()

    # -- issuing --------------------------------------------------------------------------------
    def issue(self, phone: str, client_ip: str, altcha: Any = None) -> IssuedCode:
        """Store a fresh code beside the live ones and send it.

        Checks in SPEC §3's order: the challenge (ChallengeRequired), the limits (TooManyRequests),
        the SMS channel (ServiceBusy). A solution is spent only by a request that sends a code: its
        accepted-once record is written in the same transaction as the code.
        """
        cfg = self._config
        now = int(self._clock())
        key = self.phone_key(phone)
        day, day_end = china_day_window(now)
        hour, hour_end = hour_window(now)
        per_number = Counter(f"code-day#{key}#{day}", cfg.code_daily_limit, day_end)
        per_client = Counter(f"code-ip#{self._hasher.digest('ip', client_ip)}#{hour}",
                             cfg.code_ip_hourly_limit, hour_end)
        once = self._solution_needed(per_number, per_client, altcha)
        code = f"{secrets.randbelow(1_000_000):06d}"
        code_hash = self._code_hash(key, code)
        limits: list[Counter | Lock] = [
            *([once] if once else []),
            Lock(f"code-gap#{key}", cfg.code_resend_seconds),
            per_number,
            per_client,
        ]
        # Over the SMS channel's rate a code would arrive late or never: refuse it now (503). The
        # per-second count is sharded so concurrent requests do not all write one item; a full shard
        # sends the request on to the next, so it is refused only once every shard of this second is
        # full, i.e. only above the configured rate.
        shards = max(1, cfg.sms_rate_shards)
        first = self._rng.randrange(shards)
        for attempt in range(shards):
            channel = Counter(f"sms-rate#{now}#{(first + attempt) % shards}",
                              max(1, cfg.sms_codes_per_second // shards), now + 1)
            refused = self._store(key, code_hash, now, [*limits, channel])
            if refused is None:
                break
            if refused is once:
                raise errors.ChallengeRequired(self._proof.challenge())  # used already (a replay)
            if refused is not channel:
                raise errors.TooManyRequests(retry_after=refused.retry_after(now))
        else:
            telemetry.count("SmsChannelFull")
            raise errors.SmsChannelFull(retry_after=1)
        try:
            self._sender.send(phone, sms.code_text(code))
        except sms.SmsChannelBusy as exc:
            telemetry.count("SmsFailed")
            raise errors.ServiceBusy(retry_after=cfg.code_resend_seconds) from exc
        except sms.SmsRejected as exc:  # opted out, or a number SNS will never reach: say so, not 500
            telemetry.count("SmsRejected")
            raise errors.InvalidPhone("该号码无法接收短信，请使用可接收短信的手机号码。") from exc
        return IssuedCode(expires_in=cfg.code_ttl_seconds, resend_after=cfg.code_resend_seconds)

    def _solution_needed(self, per_number: Counter, per_client: Counter, altcha: Any) -> Lock | None:
        """None when this request is within the free codes; else the solution's accepted-once record,
        or ChallengeRequired (no solution, or a wrong or expired one)."""
        cfg = self._config
        used = {c.key: int(c.hits or 0) for c in Throttle.batch_get([per_number.key, per_client.key],
                                                                   consistent_read=True)}
        if used.get(per_number.key, 0) < cfg.code_free_per_number \
                and used.get(per_client.key, 0) < cfg.code_free_per_client:
            return None
        solution = self._proof.verify(altcha)
        if solution is None:
            telemetry.count("ChallengeRequired")
            raise errors.ChallengeRequired(self._proof.challenge())
        return self._proof.once(solution)

    def _store(self, key: str, code_hash: str, now: int, guards: list[Counter | Lock]) -> Counter | Lock | None:
        """Write the code with every guard in one transaction: the guard that refused it, or None."""
        cfg = self._config
        result: list[Counter | Lock | None] = [None]

        def write() -> None:
            try:
                stored = VerificationCode.get(key, consistent_read=True)
            except VerificationCode.DoesNotExist:
                stored = None
            live = _live(stored, now)
            kept = dict(sorted(live.items(), key=lambda item: item[1])[-(LIVE_CODES - 1):])
            codes = {**kept, code_hash: now + cfg.code_ttl_seconds}
            try:
                with transaction() as tx:
                    # Before the guards: their reasons must be the transaction's last ones (first_refused).
                    if stored is None:
                        tx.save(VerificationCode(key, codes=codes, issue_id=secrets.token_hex(8), wrong=0,
                                                 version=1, ttl=at(now + 2 * cfg.code_ttl_seconds)),
                                condition=VerificationCode.phone_key.does_not_exist())
                    else:
                        tx.update(VerificationCode(key), actions=[
                            VerificationCode.codes.set(codes), VerificationCode.issue_id.set(secrets.token_hex(8)),
                            VerificationCode.version.add(1),
                            VerificationCode.ttl.set(at(now + 2 * cfg.code_ttl_seconds))],
                            condition=_unchanged(stored))
                    for guard in guards:
                        guard.add_to(tx, now)
            except TransactWriteError as exc:
                refused = first_refused(exc.cancellation_reasons, guards)
                if refused is not None:
                    result[0] = refused
                    return
                if _code_write_refused(exc):
                    raise _Changed() from exc  # a code used, cancelled or issued meanwhile
                raise  # a conflict (tried again) or not ours at all

        for _ in range(cfg.conflict_retries + 1):
            try:
                self._retry.run(write)
                return result[0]
            except _Changed:
                telemetry.count("TransactionConflict")
        raise errors.ServiceBusy("系统繁忙，请稍后再试。", retry_after=1)

    # -- checking -------------------------------------------------------------------------------
    def check(self, phone: str, code: str, client_ip: str) -> CodeCheck:
        """A live code that matches (not yet consumed), or WrongCode; counts wrong tries per client and in all."""
        now = int(self._clock())
        key = self.phone_key(phone)
        try:
            stored = VerificationCode.get(key, consistent_read=True)
        except VerificationCode.DoesNotExist as exc:
            raise errors.WrongCode() from exc
        live = _live(stored, now)
        if not live:
            raise errors.WrongCode()
        client_key = f"code-wrong#{key}#{self._hasher.digest('ip', client_ip)}#{stored.issue_id}"
        try:
            client_tries = int(Throttle.get(client_key, consistent_read=True).hits or 0)
        except Throttle.DoesNotExist:
            client_tries = 0
        if client_tries >= CLIENT_WRONG_TRIES:
            raise errors.WrongCode()  # this client is refused until a new code is sent; not counted again
        offered = self._code_hash(key, code)
        if any(hmac.compare_digest(offered, known) for known in live):
            return CodeCheck(key, offered, now)
        self._count_wrong(stored, client_key, now)
        raise errors.WrongCode()

    def _count_wrong(self, stored: VerificationCode, client_key: str, now: int) -> None:
        ttl = at(now + 2 * self._config.code_ttl_seconds)
        Throttle(client_key).update(actions=[Throttle.hits.add(1), Throttle.ttl.set(ttl)])
        try:  # the new total comes back in `stored`
            stored.update(actions=[VerificationCode.wrong.add(1)], condition=VerificationCode.phone_key.exists())
        except UpdateError as exc:
            if not condition_failed(exc):
                raise
            return  # gone by TTL meanwhile: nothing left to guess
        if int(stored.wrong or 0) < TOTAL_WRONG_TRIES:
            return
        telemetry.count("CodesCancelled")
        try:
            stored.update(actions=[VerificationCode.codes.set({}), VerificationCode.wrong.set(0),
                                   VerificationCode.version.add(1)],
                          condition=VerificationCode.wrong >= TOTAL_WRONG_TRIES)
        except UpdateError as exc:
            if not condition_failed(exc):
                raise  # else: another wrong try cancelled them first


def _unchanged(stored: VerificationCode) -> Any:
    """The item is as we read it (an item written before `version` existed counts as version 0)."""
    if not stored.version:
        return VerificationCode.version.does_not_exist() | (VerificationCode.version == 0)
    return VerificationCode.version == stored.version


def _live(stored: VerificationCode | None, now: int) -> dict[str, int]:
    if stored is None:
        return {}
    return {str(h): int(exp) for h, exp in (stored.codes.as_dict() if stored.codes else {}).items() if int(exp) > now}


def _code_write_refused(exc: TransactWriteError) -> bool:
    """The code item's own condition failed (it is the transaction's first item)."""
    reasons = exc.cancellation_reasons or []
    return bool(reasons) and reasons[0] is not None and reasons[0].code == "ConditionalCheckFailed"


@dataclass(frozen=True)
class CodeCheck:
    phone_key: str
    code_hash: str
    now: int

    def consume_in(self, tx: Any) -> None:
        """Use the code: only if it is still one of the number's live codes (not used, expired or cancelled)."""
        entry = VerificationCode.codes[self.code_hash]
        tx.update(
            VerificationCode(self.phone_key),
            actions=[entry.remove(), VerificationCode.version.add(1)],
            condition=entry > self.now,
        )

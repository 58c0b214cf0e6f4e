"""Verification codes: issued by SMS, stored only as a keyed hash, single use."""
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
from chalicelib.config import Settings, settings
from chalicelib.privacy import Hasher
from chalicelib.storage.models import VerificationCode, at, transaction
from chalicelib.throttle import ConflictRetry, Counter, Lock, china_day_window, first_refused, hour_window

MAX_WRONG_TRIES = 5


@dataclass(frozen=True)
class IssuedCode:
    expires_in: int
    resend_after: int


class CodeService:
    def __init__(self, hasher: Hasher, sender: sms.SmsSender,
                 config: Settings | None = None, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, retry: ConflictRetry | None = None) -> None:
        self._hasher = hasher
        self._sender = sender
        self._config = config or settings()
        self._clock = clock
        self._rng = rng or random.Random()
        self._retry = retry or ConflictRetry(self._config.conflict_retries)

    def phone_key(self, phone: str) -> str:
        return self._hasher.digest("phone", phone)

    def _code_hash(self, phone_key: str, code: str) -> str:
        return self._hasher.digest("code", phone_key, code)

    def issue(self, phone: str, client_ip: str) -> IssuedCode:
        """Store a fresh code and send it; TooManyRequests or ServiceBusy otherwise."""
        cfg = self._config
        now = int(self._clock())
        key = self.phone_key(phone)
        day, day_end = china_day_window(now)
        hour, hour_end = hour_window(now)
        code = f"{secrets.randbelow(1_000_000):06d}"

        def write() -> None:
            # Over the SMS channel's rate a code would arrive late or never: refuse it now (503).
            # The per-second count is sharded: one item written by every code request would make
            # concurrent requests cancel each other. A fresh shard on every try.
            shards = max(1, cfg.sms_rate_shards)
            channel = Counter(f"sms-rate#{now}#{self._rng.randrange(shards)}",
                              max(1, cfg.sms_codes_per_second // shards), now + 1)
            guards: list[Counter | Lock] = [
                Lock(f"code-gap#{key}", cfg.code_resend_seconds),
                Counter(f"code-day#{key}#{day}", cfg.code_daily_limit, day_end),
                Counter(f"code-ip#{self._hasher.digest('ip', client_ip)}#{hour}",
                        cfg.code_ip_hourly_limit, hour_end),
                channel,
            ]
            try:
                with transaction() as tx:
                    for guard in guards:
                        guard.add_to(tx, now)
                    tx.save(VerificationCode(
                        key, code_hash=self._code_hash(key, code), expires_at=now + cfg.code_ttl_seconds,
                        attempts=0, used=False, ttl=at(now + 2 * cfg.code_ttl_seconds)))
            except TransactWriteError as exc:
                refused = first_refused(exc.cancellation_reasons, guards)
                if refused is None:
                    raise  # a conflict (tried again) or not ours at all
                if refused is channel:
                    telemetry.count("SmsChannelFull")
                    raise errors.ServiceBusy(retry_after=1) from exc
                raise errors.TooManyRequests(retry_after=refused.retry_after(now)) from exc

        self._retry.run(write)
        try:
            self._sender.send(phone, sms.code_text(code))
        except sms.SmsChannelBusy as exc:
            telemetry.count("SmsFailed")
            raise errors.ServiceBusy(retry_after=cfg.code_resend_seconds) from exc
        except sms.SmsRejected as exc:  # opted out, or a number SNS will never reach: say so, not 500
            telemetry.count("SmsRejected")
            raise errors.InvalidPhone("该号码无法接收短信，请使用可接收短信的手机号码。") from exc
        return IssuedCode(expires_in=cfg.code_ttl_seconds, resend_after=cfg.code_resend_seconds)

    def check(self, phone: str, code: str) -> CodeCheck:
        """A code that matches now (not yet consumed), or WrongCode; counts wrong tries."""
        now = int(self._clock())
        key = self.phone_key(phone)
        try:
            stored = VerificationCode.get(key, consistent_read=True)
        except VerificationCode.DoesNotExist as exc:
            raise errors.WrongCode() from exc
        if stored.used or stored.expires_at <= now or stored.attempts >= MAX_WRONG_TRIES:
            raise errors.WrongCode()
        offered = self._code_hash(key, code)
        if not hmac.compare_digest(stored.code_hash, offered):
            try:
                stored.update(
                    actions=[VerificationCode.attempts.add(1)],
                    condition=(VerificationCode.code_hash == stored.code_hash)
                    & (VerificationCode.attempts < MAX_WRONG_TRIES),
                )
            except UpdateError:
                pass  # a newer code replaced it, or it is already dead: wrong either way
            raise errors.WrongCode()
        return CodeCheck(key, offered, now)


@dataclass(frozen=True)
class CodeCheck:
    phone_key: str
    code_hash: str
    now: int

    def consume_in(self, tx: Any) -> None:
        """Mark the code used, only if it is still the same live, unused code."""
        tx.update(
            VerificationCode(self.phone_key),
            actions=[VerificationCode.used.set(True)],
            condition=(VerificationCode.code_hash == self.code_hash)
            & (VerificationCode.used == False)  # noqa: E712 (a PynamoDB condition, not a bool)
            & (VerificationCode.attempts < MAX_WRONG_TRIES)
            & (VerificationCode.expires_at > self.now),
        )

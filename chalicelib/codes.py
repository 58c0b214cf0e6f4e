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
from chalicelib.network import client_network
from chalicelib.privacy import Hasher
from chalicelib.storage.models import Throttle, VerificationCode, at, condition_failed, transaction
from chalicelib.throttle import ConflictRetry, Counter, Lock, china_day_window, first_refused, hour_window

# SPEC §3: a new code cancels none of the number's earlier ones, up to this many live at once. A request for
# another one while as many are live is refused (429 until the oldest expires) rather than dropping the oldest:
# otherwise a stranger's requests would push the owner's code out. Every live code is on the owner's phone.
LIVE_CODES = 3
# Wrong tries, counted within a code window (from a code sent to a number with none live until its last live
# code expires): this many from one client refuse that client until a code is sent at its own request, which
# lifts a client's refusal CLIENT_RESETS times a window; this many in all cancel every live code. So one address
# compares at most 5 × (1 + 1) = 10 guesses a window and can neither cancel the owner's code (it takes 20) nor
# replace it (a fourth live code is refused), and guessing stays below 20 × 3 / 10^6 ≈ 1 in 16,700 per window.
CLIENT_WRONG_TRIES = 5
CLIENT_RESETS = 1
TOTAL_WRONG_TRIES = 20
# The per-client tries items are named by their window (never reused): kept a day, past any window's end.
TRIES_KEPT_SECONDS = 86400


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
        client = self._hasher.digest("ip", client_ip)
        day, day_end = china_day_window(now)
        hour, hour_end = hour_window(now)
        per_number = Counter(f"code-day#{key}#{day}", cfg.code_daily_limit, day_end)
        per_client = Counter(f"code-ip#{client}#{hour}", cfg.code_ip_hourly_limit, hour_end)
        once = self._solution_needed(per_number, per_client, altcha)
        # Within the free codes the same two counters stop at the free thresholds, in the transaction: a burst of
        # requests read as free all at once cannot go past them (the one that would is 428, as if it came later).
        counters = [per_number, per_client]
        if once is None:
            counters = [Counter(c.key, min(c.limit, threshold), c.window_end)
                        for c, threshold in zip(counters, (cfg.code_free_per_number, cfg.code_free_per_client),
                                                strict=True)]
        lowered = [c for c, full in zip(counters, (per_number, per_client), strict=True) if c.limit < full.limit]
        code = f"{secrets.randbelow(1_000_000):06d}"
        code_hash = self._code_hash(key, code)
        limits: list[Counter | Lock] = [  # in SPEC §3's order: the first refusal answers
            *([once] if once else []),
            *lowered,
            Lock(f"code-gap#{key}", cfg.code_resend_seconds),
            *[c for c in counters if c not in lowered],
        ]
        # Over the SMS channel's rate a code would arrive late or never: refuse it now (503). The
        # per-second count is sharded so concurrent requests do not all write one item; a full shard
        # sends the request on to the next, so it is refused only once every shard of this second is
        # full, i.e. only above the configured rate.
        channels = channel_counters(now, cfg.sms_codes_per_second, cfg.sms_rate_shards)
        first = self._rng.randrange(len(channels))
        for attempt in range(len(channels)):
            channel = channels[(first + attempt) % len(channels)]
            refused, window = self._store(key, code_hash, now, once, [*limits, channel])
            if refused is None:
                break
            if refused is once:
                raise errors.ChallengeRequired(self._proof.challenge())  # used already (a replay)
            if any(refused is c for c in lowered):  # past a free threshold, not a limit
                telemetry.count("ChallengeRequired")
                raise errors.ChallengeRequired(self._proof.challenge())
            if refused is not channel:
                raise errors.TooManyRequests(retry_after=refused.retry_after(now))
        else:
            telemetry.count("SmsChannelFull")
            raise errors.SmsChannelFull(retry_after=1)
        try:
            self._sender.send(phone, sms.code_text(code))
        except sms.SmsChannelBusy as exc:
            telemetry.count("SmsFailed")
            self._withdraw(key, code_hash, once)
            raise errors.ServiceBusy(retry_after=cfg.code_resend_seconds) from exc
        except sms.SmsRejected as exc:  # opted out, or a number SNS will never reach: say so, not 500
            telemetry.count("SmsRejected")
            self._withdraw(key, code_hash, once)
            raise errors.InvalidPhone("该号码无法接收短信，请使用可接收短信的手机号码。") from exc
        if window is not None:
            self._lift_refusal(self._tries_key(key, client_ip, window))
        return IssuedCode(expires_in=cfg.code_ttl_seconds, resend_after=cfg.code_resend_seconds)

    def _tries_key(self, key: str, client_ip: str, window: str) -> str:
        """One client's wrong tries against a number's code window: what a wrong try takes and a code at that
        client's request lifts (the same client for both: an IPv6 client by its /48)."""
        return f"code-wrong#{key}#{self._hasher.digest('ip', wrong_try_client(client_ip))}#{window}"

    def _withdraw(self, key: str, code_hash: str, once: Lock | None) -> None:
        """A code SNS did not take was never sent: it leaves the live set (it would hold one of the three
        places) and gives its solution back (spent only by a request that sends a code)."""
        self._retry.run(lambda: VerificationCode(key).update(actions=[VerificationCode.codes[code_hash].remove(),
                                                                      VerificationCode.version.add(1)]))
        if once is not None:
            self._retry.run(lambda: Throttle(once.key).delete())

    def _lift_refusal(self, tries_key: str) -> None:
        """A code sent at this client's request lifts its refusal (SPEC §3), nobody else's, and only
        CLIENT_RESETS times a window: otherwise each code it asks for would buy it five more guesses."""
        try:
            self._retry.run(lambda: Throttle(tries_key).update(
                actions=[Throttle.hits.set(0), Throttle.resets.add(1)],
                condition=(Throttle.hits > 0) & (Throttle.resets.does_not_exist()
                                                 | (Throttle.resets < CLIENT_RESETS))))
        except UpdateError as exc:
            if not condition_failed(exc):
                raise  # else: no tries to lift (or none of its own), or its lifts used up

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

    def _store(self, key: str, code_hash: str, now: int, once: Lock | None,
               guards: list[Counter | Lock]) -> tuple[Counter | Lock | None, str | None]:
        """Write the code with every guard in one transaction: the guard that refused it, or None; and the
        code window it joined when it joined live codes (None: it opened a new one). TooManyRequests while
        LIVE_CODES are live (ChallengeRequired first, for a replayed solution)."""
        cfg = self._config
        result: list[Counter | Lock | None] = [None]
        joined: list[str | None] = [None]

        def write() -> None:
            try:
                stored = VerificationCode.get(key, consistent_read=True)
            except VerificationCode.DoesNotExist:
                stored = None
            live = _live(stored, now)
            if len(live) >= LIVE_CODES:
                if once is not None and once.held(now):
                    raise errors.ChallengeRequired(self._proof.challenge())  # SPEC §3: 428 before 429
                # Whole minutes: to the second, the wait would date the owner's code for whoever filled the rest.
                raise errors.TooManyRequests(
                    "该号码已有多个有效验证码，请使用已收到的验证码，或稍后再试。",
                    retry_after=60 * -(-(min(live.values()) - now) // 60))
            codes = {**live, code_hash: now + cfg.code_ttl_seconds}
            ttl = at(now + 2 * cfg.code_ttl_seconds)
            try:
                with transaction() as tx:
                    # Before the guards: their reasons must be the transaction's last ones (first_refused).
                    if stored is None:
                        tx.save(VerificationCode(key, codes=codes, issue_id=secrets.token_hex(8), wrong=0,
                                                 version=1, ttl=ttl),
                                condition=VerificationCode.phone_key.does_not_exist())
                    elif not live:  # a new code window: its wrong tries start from none
                        tx.update(VerificationCode(key), actions=[
                            VerificationCode.codes.set(codes), VerificationCode.issue_id.set(secrets.token_hex(8)),
                            VerificationCode.wrong.set(0), VerificationCode.version.add(1),
                            VerificationCode.ttl.set(ttl)],
                            condition=_unchanged(stored))
                    else:
                        tx.update(VerificationCode(key), actions=[
                            VerificationCode.codes.set(codes), VerificationCode.version.add(1),
                            VerificationCode.ttl.set(ttl)],
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
            joined[0] = str(stored.issue_id) if stored is not None and live else None

        for _ in range(cfg.conflict_retries + 1):
            try:
                self._retry.run(write)
                return result[0], joined[0]
            except _Changed:
                telemetry.count("TransactionConflict")
        raise errors.ServiceBusy("系统繁忙，请稍后再试。", retry_after=1)

    # -- checking -------------------------------------------------------------------------------
    def check(self, phone: str, code: str, client_ip: str) -> CodeCheck:
        """A live code that matches (not yet consumed), or WrongCode; counts wrong tries per client and in all.

        A client's try is taken (atomically, at most CLIENT_WRONG_TRIES) before the code is compared, so
        simultaneous guesses from one address cannot compare more than that; a right code gives it back."""
        now = int(self._clock())
        key = self.phone_key(phone)
        try:
            stored = VerificationCode.get(key, consistent_read=True)
        except VerificationCode.DoesNotExist as exc:
            raise errors.WrongCode() from exc
        live = _live(stored, now)
        if not live:
            raise errors.WrongCode()
        tries = Throttle(self._tries_key(key, client_ip, str(stored.issue_id)))
        kept = at(now + TRIES_KEPT_SECONDS)
        try:
            self._retry.run(lambda: tries.update(
                actions=[Throttle.hits.add(1), Throttle.ttl.set(kept)],
                condition=Throttle.hits.does_not_exist() | (Throttle.hits < CLIENT_WRONG_TRIES)))
        except UpdateError as exc:
            if not condition_failed(exc):
                raise
            raise errors.WrongCode() from exc  # refused until a code is sent at its request; not counted again
        offered = self._code_hash(key, code)
        if any(hmac.compare_digest(offered, known) for known in live):
            try:  # a right code was no wrong try (and a lift in between may already have cleared it)
                self._retry.run(lambda: tries.update(actions=[Throttle.hits.add(-1), Throttle.ttl.set(kept)],
                                                     condition=Throttle.hits > 0))
            except UpdateError as exc:
                if not condition_failed(exc):
                    raise
            return CodeCheck(key, offered, now)
        self._count_wrong(stored)
        raise errors.WrongCode()

    def _count_wrong(self, stored: VerificationCode) -> None:
        """One more wrong try against the number's live codes; the twentieth cancels them."""
        try:  # the new total comes back in `stored`
            self._retry.run(lambda: stored.update(actions=[VerificationCode.wrong.add(1)],
                                                  condition=VerificationCode.phone_key.exists()))
        except UpdateError as exc:
            if not condition_failed(exc):
                raise
            return  # gone by TTL meanwhile: nothing left to guess
        if int(stored.wrong or 0) < TOTAL_WRONG_TRIES:
            return
        telemetry.count("CodesCancelled")
        try:
            cancel: list[Any] = [VerificationCode.codes.set({}), VerificationCode.wrong.set(0),
                                 VerificationCode.version.add(1)]
            still_due = VerificationCode.wrong >= TOTAL_WRONG_TRIES
            self._retry.run(lambda: stored.update(actions=cancel, condition=still_due))
        except UpdateError as exc:
            if not condition_failed(exc):
                raise  # else: another wrong try cancelled them first


def channel_counters(now: int, per_second: int, shards: int) -> list[Counter]:
    """This second's SMS-channel counter in shards whose limits add up to the configured rate exactly
    (the remainder on the first shards; never more shards than codes a second)."""
    shards = max(1, min(shards, per_second))
    base, extra = divmod(per_second, shards)
    return [Counter(f"sms-rate#{now}#{i}", base + (i < extra), now + 1) for i in range(shards)]


def wrong_try_client(client: str) -> str:
    """Who a wrong try is counted against: the client (an IPv4 address), but an IPv6 client by its /48, not the
    /64 other per-client limits use. One home line (a /56 or /60), a VPC (/56) or a free tunnel broker (/48)
    holds many /64s, and two clients' tries (ten each a window) cancel a number's codes; the keys are per
    number, so honest users sharing a /48 never meet."""
    return client_network(client, 48)


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

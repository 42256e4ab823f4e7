"""Real-time quota checks and reservations against the Redis mirror, atomic in one Lua script.

App code calls `check_quota(org_id, user_id=None)` or `reserve(org_id, estimate)` before an LLM call and
publishes the call's usage event with the reservation's id (`reservation_id`, wire format v1) after it;
the worker counts the event, refreshes the mirror with absolute totals and then removes the reservation,
so usage is never counted both as reserved and as used (for a moment it may be both: conservative).
An abandoned reservation expires after its ttl (purged inside the script on the next call).

A hard limit denies when used + active reservations + estimate would exceed it; concurrent callers
cannot overshoot it, because the check and the reservation are one script. A soft limit never denies.
When Redis is unreachable (or the mirror is not built yet), soft limits fail open; hard limits fail
closed unless `hard_fail_open` (USAGEBILL_QUOTA_HARD_FAIL_OPEN=1) says otherwise. An org with no hard
limit known to this process is treated as soft.

Money lives in Redis as integer nano-units (10^-9 of the org's currency): Lua numbers are doubles,
exact up to 2^53 nano-units (about 9 million currency units per org and month), then accurate to a
few nano-units. Keys start with `usagebill:quota:` (never rq's `rq:`):
- `usagebill:quota:ready`                  set by the rebuilder once the mirror is whole
- `usagebill:quota:limits:{org}`           hash: `t`/`n` (org) and `t:{user}`/`n:{user}` -> "H<limit>"|"S<limit>"
- `usagebill:quota:used:{YYYY-MM}:{org}`   hash: the same fields -> absolute totals, and `stamp`
- `usagebill:quota:resv:{YYYY-MM}:{org}`   sorted set: reservation id -> expiry (ms)
- `usagebill:quota:resvd:{YYYY-MM}:{org}`  hash: reservation id -> "<tokens> <nanos> <user>"
- `usagebill:quota:resvsum:{YYYY-MM}:{org}` hash: the fields above -> tokens / nanos reserved
- `usagebill:quota:rid:{id}`               "{YYYY-MM}\\n{org}": where a reservation lives, for settling
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger("usagebill.producer.quota")

PREFIX = "usagebill:quota:"
READY_KEY = PREFIX + "ready"
NANOS = Decimal(1_000_000_000)
#: month keys outlive their month: a key is re-written at each event, so only quiet months expire
MONTH_KEY_TTL_MS = 70 * 24 * 3600 * 1000
#: a reservation's index key outlives the reservation by this much, so a late event still settles it
RID_GRACE_MS = 24 * 3600 * 1000
DEFAULT_TTL_SECONDS = 300


def limits_key(org_id: str) -> str:
    return f"{PREFIX}limits:{org_id}"


def used_key(month: str, org_id: str) -> str:
    return f"{PREFIX}used:{month}:{org_id}"


def resv_keys(month: str, org_id: str) -> tuple[str, str, str]:
    """(sorted set by expiry, data hash, sums hash) of an org's reservations in a month."""
    return (f"{PREFIX}resv:{month}:{org_id}", f"{PREFIX}resvd:{month}:{org_id}", f"{PREFIX}resvsum:{month}:{org_id}")


def rid_key(reservation_id: str) -> str:
    return f"{PREFIX}rid:{reservation_id}"


def field(kind: str, user_id: str | None) -> str:
    """The hash field of a kind ('t' tokens, 'n' nano-units) for the org (user None) or one of its users."""
    return kind if not user_id else f"{kind}:{user_id}"


def month_of(moment: datetime) -> str:
    """The UTC calendar month of a moment, as YYYY-MM (the mirror's month keys)."""
    return moment.astimezone(UTC).strftime("%Y-%m")


def to_nanos(amount: Decimal) -> int:
    """Money to integer nano-units, rounded up (an estimate or usage is never under-counted)."""
    return int((amount * NANOS).to_integral_value(rounding=ROUND_CEILING))


# Shared by check and reserve: purge expired reservations, compare each limit of the org and the user with
# used + reserved + estimate, and (reserve) record the reservation. One script: atomic.
# KEYS: ready, limits, used, resv, resvd, resvsum, rid.  ARGV: user, est_t, est_n, ttl_ms, rid, rid_value,
# month_ttl_ms, rid_grace_ms.  Returns {status, rem_t|false, rem_n|false, hard, reason|false, soft_over}
# with status 1 allowed, 0 denied, -1 mirror not ready.
_CHECK_RESERVE = """
-- counts travel as decimal strings: Redis formats a Lua number argument with %.14g (1e+15 breaks HINCRBY)
local function take(key, scope, tok, nan)
  if tok ~= '0' then redis.call('HINCRBY', key, 't' .. scope, '-' .. tok) end
  if nan ~= '0' then redis.call('HINCRBY', key, 'n' .. scope, '-' .. nan) end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function unreserve(id)
  local d = redis.call('HGET', KEYS[5], id)
  if d then
    local tok, nan, user = string.match(d, '^(%S+) (%S+) ?(.*)$')
    take(KEYS[6], '', tok, nan)
    if user ~= '' then take(KEYS[6], ':' .. user, tok, nan) end
    redis.call('HDEL', KEYS[5], id)
  end
  redis.call('ZREM', KEYS[4], id)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', string.format('%.0f', now), 'LIMIT', 0, 500)
for _, id in ipairs(expired) do unreserve(id) end
local user = ARGV[1]
local est = {t = tonumber(ARGV[2]), n = tonumber(ARGV[3])}
local rem = {}
local hard, denied, soft_over = 0, false, 0
local scopes = {''}
if user ~= '' then scopes[2] = ':' .. user end
local fields = {}
for _, scope in ipairs(scopes) do
  fields[#fields + 1] = 't' .. scope
  fields[#fields + 1] = 'n' .. scope
end
local lims = redis.call('HMGET', KEYS[2], unpack(fields))
local any = false
for i = 1, #fields do if lims[i] then any = true end end
if any then
  local useds = redis.call('HMGET', KEYS[3], unpack(fields))
  local held = redis.call('HMGET', KEYS[6], unpack(fields))
  for i, f in ipairs(fields) do
    local lim = lims[i]
    if lim then
      local kind = string.sub(f, 1, 1)
      local mode = string.sub(lim, 1, 1)
      local r = tonumber(string.sub(lim, 2)) - (tonumber(useds[i]) or 0) - (tonumber(held[i]) or 0)
      if rem[kind] == nil or r < rem[kind] then rem[kind] = r end
      local over = (est[kind] > 0 and est[kind] > r) or (est[kind] == 0 and r <= 0)
      if mode == 'H' then
        hard = 1
        if over and not denied then denied = f end
      elseif over then
        soft_over = 1
      end
    end
  end
end
local function num(x) if x == nil then return false end return string.format('%.0f', x) end
if denied then return {0, num(rem.t), num(rem.n), hard, denied, soft_over} end
if ARGV[5] ~= '' then
  local ttl = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[4], string.format('%.0f', now + ttl), ARGV[5])
  redis.call('HSET', KEYS[5], ARGV[5], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. user)
  for _, scope in ipairs(scopes) do
    redis.call('HINCRBY', KEYS[6], 't' .. scope, ARGV[2])
    redis.call('HINCRBY', KEYS[6], 'n' .. scope, ARGV[3])
  end
  redis.call('SET', KEYS[7], ARGV[6], 'PX', string.format('%.0f', ttl + tonumber(ARGV[8])))
  for i = 4, 6 do redis.call('PEXPIRE', KEYS[i], ARGV[7]) end
  if rem.t then rem.t = rem.t - est.t end
  if rem.n then rem.n = rem.n - est.n end
end
return {1, num(rem.t), num(rem.n), hard, false, soft_over}
"""

# Remove reservations (settled by their event, or released). KEYS: resv, resvd, resvsum. ARGV: ids.
_UNRESERVE = """
-- counts travel as decimal strings: Redis formats a Lua number argument with %.14g (1e+15 breaks HINCRBY)
local function take(key, scope, tok, nan)
  if tok ~= '0' then redis.call('HINCRBY', key, 't' .. scope, '-' .. tok) end
  if nan ~= '0' then redis.call('HINCRBY', key, 'n' .. scope, '-' .. nan) end
end
local n = 0
for _, id in ipairs(ARGV) do
  local d = redis.call('HGET', KEYS[2], id)
  if d then
    local tok, nan, user = string.match(d, '^(%S+) (%S+) ?(.*)$')
    take(KEYS[3], '', tok, nan)
    if user ~= '' then take(KEYS[3], ':' .. user, tok, nan) end
    redis.call('HDEL', KEYS[2], id)
    n = n + 1
  end
  redis.call('ZREM', KEYS[1], id)
end
return n
"""


@dataclass(frozen=True)
class Estimate:
    """What a call is expected to use: tokens (input + output) and/or money in the org's currency."""

    tokens: int = 0
    money: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if self.tokens < 0 or self.money < 0:
            raise ValueError("an estimate cannot be negative")


@dataclass(frozen=True)
class QuotaCheck:
    """The answer of `check_quota`. remaining_* is None when no limit of that kind applies; it may be
    negative past a soft limit. `degraded` means Redis (or its mirror) could not answer: the decision
    followed the fail-open/closed rule."""

    allowed: bool
    remaining_tokens: int | None
    remaining_money: Decimal | None
    hard: bool = False
    reason: str | None = None
    soft_exceeded: bool = False
    degraded: bool = False


@dataclass(frozen=True)
class Reservation(QuotaCheck):
    """The answer of `reserve`: `id` (None when denied or degraded) goes into the event's reservation_id."""

    id: str | None = None


class QuotaConfig(BaseSettings):
    """How quota checks reach Redis and fail. Each field reads its environment variable."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", alias="REDIS_URL", description="Redis of the quota mirror.")
    hard_fail_open: bool = Field(
        False,
        alias="USAGEBILL_QUOTA_HARD_FAIL_OPEN",
        description="Allow calls under a hard limit when Redis cannot answer (default: deny).",
    )
    timeout: float = Field(0.25, alias="USAGEBILL_QUOTA_TIMEOUT", gt=0, description="Redis socket timeout (s).")
    reservation_ttl: float = Field(
        DEFAULT_TTL_SECONDS, alias="USAGEBILL_QUOTA_RESERVATION_TTL", gt=0, description="Seconds a reservation lives."
    )


class QuotaClient:
    """Quota checks and reservations on one Redis client. Thread-safe (redis-py pools connections)."""

    def __init__(
        self,
        redis_client: Redis | None = None,
        *,
        config: QuotaConfig | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config or QuotaConfig()
        self.redis = redis_client or Redis.from_url(
            self.config.redis_url, socket_timeout=self.config.timeout, socket_connect_timeout=self.config.timeout
        )
        self._clock = clock or (lambda: datetime.now(UTC))
        self._script = self.redis.register_script(_CHECK_RESERVE)
        self._unreserve = self.redis.register_script(_UNRESERVE)
        # whether a hard limit applied at the last answer, per (org, user): what decides when Redis is away
        self._hard: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()

    def check(self, org_id: str, user_id: str | None = None) -> QuotaCheck:
        """Whether a call may start now, and what remains (tokens and money) of the tightest limits."""
        return self._run(org_id, user_id, Estimate(), None, None)

    def reserve(
        self, org_id: str, estimate: Estimate | int | Decimal, user_id: str | None = None, ttl: float | None = None
    ) -> Reservation:
        """Reserve an estimate against the limits, atomically; denied (id None) past a hard limit."""
        est = _as_estimate(estimate)
        rid = f"rsv_{uuid.uuid4().hex}"
        result = self._run(org_id, user_id, est, rid, ttl or self.config.reservation_ttl)
        assert isinstance(result, Reservation)
        return result

    def release(self, reservation_id: str) -> bool:
        """Give a reservation back (the call was not made). False when unknown, settled or Redis is away."""
        try:
            return settle(self.redis, [reservation_id], script=self._unreserve) > 0
        except RedisError as exc:
            logger.warning("quota release of %s failed: %s", reservation_id, exc)
            return False

    def _run(self, org_id: str, user_id: str | None, est: Estimate, rid: str | None, ttl: float | None) -> QuotaCheck:
        month = month_of(self._clock())
        resv, resvd, resvsum = resv_keys(month, org_id)
        keys = [READY_KEY, limits_key(org_id), used_key(month, org_id), resv, resvd, resvsum, rid_key(rid or "-")]
        args: list[Any] = [
            user_id or "",
            est.tokens,
            to_nanos(est.money),
            int((ttl or 0) * 1000),
            rid or "",
            f"{month}\n{org_id}",
            MONTH_KEY_TTL_MS,
            RID_GRACE_MS,
        ]
        try:
            reply = self._script(keys=keys, args=args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            logger.warning("quota check for org %s: Redis unreachable (%s)", org_id, exc)
            return self._degraded(org_id, user_id, rid is not None, "redis unreachable")
        status = int(reply[0])
        if status == -1:
            return self._degraded(org_id, user_id, rid is not None, "quota mirror not ready")
        hard = bool(int(reply[3]))
        with self._lock:
            if len(self._hard) > 100_000:
                self._hard.clear()
            self._hard[(org_id, user_id or "")] = hard
        fields: dict[str, Any] = {
            "allowed": status == 1,
            "remaining_tokens": None if reply[1] is None else int(reply[1]),
            "remaining_money": None if reply[2] is None else Decimal(int(reply[2])) / NANOS,
            "hard": hard,
            "reason": None if reply[4] is None else f"hard limit reached ({_describe(reply[4])})",
            "soft_exceeded": bool(int(reply[5])),
        }
        if rid is None:
            return QuotaCheck(**fields)
        return Reservation(**fields, id=rid if status == 1 else None)

    def _degraded(self, org_id: str, user_id: str | None, reserving: bool, why: str) -> QuotaCheck:
        with self._lock:
            hard = self._hard.get((org_id, user_id or ""))
        # no hard limit known for this scope: soft limits fail open; otherwise the configured rule
        allowed = hard is False or self.config.hard_fail_open
        fields: dict[str, Any] = {
            "allowed": allowed,
            "remaining_tokens": None,
            "remaining_money": None,
            "hard": bool(hard),
            "reason": None if allowed else f"{why}: hard limits fail closed",
            "degraded": True,
        }
        return Reservation(**fields) if reserving else QuotaCheck(**fields)


def settle(redis_client: Redis, reservation_ids: Iterable[str], *, script: Any = None) -> int:
    """Remove reservations by id (their usage is now counted as used, or the call was not made).

    Two round trips for any number of ids: where each lives, then one script per org-month. Unknown or
    already settled ids are skipped. Returns how many were removed.
    """
    ids = sorted({r for r in reservation_ids if r})
    if not ids:
        return 0
    where = redis_client.mget([rid_key(r) for r in ids])
    groups: dict[tuple[str, str], list[str]] = {}
    for rid, loc in zip(ids, where, strict=True):
        if loc is None:
            continue
        month, _, org_id = (loc.decode() if isinstance(loc, bytes) else str(loc)).partition("\n")
        groups.setdefault((month, org_id), []).append(rid)
    if not groups:
        return 0
    unreserve = script or redis_client.register_script(_UNRESERVE)
    pipe = redis_client.pipeline(transaction=False)
    for (month, org_id), rids in groups.items():
        unreserve(keys=list(resv_keys(month, org_id)), args=rids, client=pipe)
    pipe.delete(*[rid_key(r) for rids in groups.values() for r in rids])
    results = pipe.execute()
    return sum(int(n) for n in results[:-1])


def _as_estimate(estimate: Estimate | int | Decimal) -> Estimate:
    if isinstance(estimate, Estimate):
        return estimate
    if isinstance(estimate, bool):
        raise TypeError("an estimate is tokens (int), money (Decimal) or an Estimate")
    if isinstance(estimate, int):
        return Estimate(tokens=estimate)
    if isinstance(estimate, Decimal):
        return Estimate(money=estimate)
    raise TypeError("an estimate is tokens (int), money (Decimal) or an Estimate, never a float")


def _describe(f: Any) -> str:
    text = f.decode() if isinstance(f, bytes) else str(f)
    kind, _, user = text.partition(":")
    what = "tokens" if kind == "t" else "money"
    return f"{what}, user {user}" if user else f"{what}, org"


_default: QuotaClient | None = None
_default_lock = threading.Lock()


def configure(client: QuotaClient | None) -> None:
    """Set (or with None, forget) the client behind the module-level functions."""
    global _default  # noqa: PLW0603
    with _default_lock:
        _default = client


def default_client() -> QuotaClient:
    """The client behind `check_quota`/`reserve`/`release`, made from the environment on first use."""
    global _default  # noqa: PLW0603
    with _default_lock:
        if _default is None:
            _default = QuotaClient()
        return _default


def check_quota(org_id: str, user_id: str | None = None) -> QuotaCheck:
    """Whether an LLM call for this org (and user) may start now, and what remains."""
    return default_client().check(org_id, user_id)


def reserve(
    org_id: str, estimate: Estimate | int | Decimal, user_id: str | None = None, ttl: float | None = None
) -> Reservation:
    """Reserve an estimate before an LLM call; publish the event with `reservation_id=reservation.id`."""
    return default_client().reserve(org_id, estimate, user_id=user_id, ttl=ttl)


def release(reservation_id: str) -> bool:
    """Give back a reservation whose call was not made (an event with its id settles it otherwise)."""
    return default_client().release(reservation_id)

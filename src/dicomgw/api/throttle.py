"""The one throttling mechanism of the API (it owns the tables ``throttle_events``
and ``login_addresses``): events counted per key in a sliding window, shared by
every worker and node through PostgreSQL. Two uses:

Rate limits (:func:`spend`): uploads created and chunks written, per account and
per address; past a limit the request is answered 429 with Retry-After.

Login throttling slows guessing without letting anyone lock an account's owner out:

- per account and address: the first failures are free, then each attempt waits
  a delay that doubles with every failure (``pair_free``, up to ``pair_max_s``);
- per address, whatever the account: ``per_ip`` failures in the window;
- per account, from anywhere, and across all accounts (``per_user``,
  ``global_limit``): these two refuse only addresses the account has not logged
  in from before (a *known address*, kept ``known_days``), so an attacker who
  hammers ``admin`` from elsewhere slows himself, not the admin at his desk.

Counting is atomic: an attempt is counted as a failure when it starts (under a
lock on the account), and the count is taken back if the password was right, so
parallel attempts cannot all pass the check before any of them is counted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, slots=True)
class Throttle:
    window_s: int = 900
    pair_free: int = 3
    """Failures of one account from one address before attempts wait."""
    pair_max_s: int = 300
    per_ip: int = 20
    per_user: int = 10
    global_limit: int = 500
    known_days: int = 90


def _keys(username: str, ip: str | None) -> dict[str, str]:
    user = username.lower()
    keys = {"user": f"user:{user}", "global": "global"}
    if ip:
        keys |= {"ip": f"ip:{ip}", "pair": f"pair:{user}|{ip}"}
    return keys


COUNTS = """
SELECT key, sum(n) AS n, min(at) AS oldest, max(at) AS newest FROM throttle_events
WHERE key = ANY($1::text[]) AND at > now() - make_interval(secs => $2) GROUP BY key
"""
FORGET_OLD = """
DELETE FROM throttle_events
WHERE key = ANY($1::text[]) AND at < now() - make_interval(secs => $2)
"""


BUCKETS = 60
"""A rate limit's window in this many buckets: one counter row per key and bucket."""
COUNT = """
WITH bucket AS (
    SELECT to_timestamp(floor(extract(epoch FROM now()) / $2) * $2) AS at
), counted AS (
    UPDATE throttle_events t SET n = t.n + 1 FROM bucket
    WHERE t.key = ANY($1::text[]) AND t.at = bucket.at RETURNING t.key
)
INSERT INTO throttle_events (key, at)
SELECT k, bucket.at FROM unnest($1::text[]) AS k, bucket
WHERE k NOT IN (SELECT key FROM counted)
"""


async def spend(conn: asyncpg.Connection, limits: dict[str, int], window_s: int) -> int | None:
    """Count one event against each key of ``limits`` (key → most events in the
    window); or, if a key is at its limit, count nothing and return the seconds
    until its oldest bucket leaves the window (the Retry-After).

    PERF: a counter per key and 1/BUCKETS of the window, so a check reads at most
    BUCKETS rows a key whatever the rate (a row per event cost a scan of
    thousands at a few hundred chunks a second).
    """
    keys = list(limits)
    async with conn.transaction():
        rows = await conn.fetch(COUNTS, keys, window_s)
        now = dt.datetime.now(dt.UTC)
        waits = [
            r["oldest"] + dt.timedelta(seconds=window_s) for r in rows if r["n"] >= limits[r["key"]]
        ]
        if waits:
            return max(1, int((max(waits) - now).total_seconds()) + 1)
        await conn.execute(FORGET_OLD, keys, window_s)
        await conn.execute(COUNT, keys, max(1, window_s // BUCKETS))
    return None


KNOWN = """
SELECT EXISTS (SELECT 1 FROM login_addresses a JOIN users u ON u.id = a.user_id
               WHERE lower(u.username) = lower($1) AND a.address = $2::inet
                 AND a.last_success_at > now() - make_interval(days => $3))
"""


@dataclass(frozen=True, slots=True)
class Attempt:
    """A login attempt let through, counted as a failure until :func:`succeeded`."""

    ids: list[int]


async def begin_attempt(
    conn: asyncpg.Connection, throttle: Throttle, username: str, ip: str | None
) -> Attempt | int:
    """The attempt (counted), or the seconds to wait before the next one."""
    keys = _keys(username, ip)
    async with conn.transaction():
        # One attempt of an account at a time through the check: parallel ones
        # see each other's count.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", keys["user"])
        rows = {
            r["key"]: r for r in await conn.fetch(COUNTS, list(keys.values()), throttle.window_s)
        }
        known = bool(ip) and bool(await conn.fetchval(KNOWN, username, ip, throttle.known_days))
        now = dt.datetime.now(dt.UTC)
        waits = []
        pair = rows.get(keys.get("pair", ""))
        if pair is not None and pair["n"] >= throttle.pair_free:
            delay = min(2 ** (pair["n"] - throttle.pair_free), throttle.pair_max_s)
            waits.append(pair["newest"] + dt.timedelta(seconds=delay))
        limits = [("ip", throttle.per_ip)]
        if not known:
            limits += [("user", throttle.per_user), ("global", throttle.global_limit)]
        for name, limit in limits:
            row = rows.get(keys.get(name, ""))
            if row is not None and row["n"] >= limit:
                waits.append(row["oldest"] + dt.timedelta(seconds=throttle.window_s))
        until = max(waits, default=None)
        if until is not None and until > now:
            return int((until - now).total_seconds()) + 1
        # Failures older than the window count for nothing: gone.
        await conn.execute(FORGET_OLD, list(keys.values()), throttle.window_s)
        ids = await conn.fetch(
            "INSERT INTO throttle_events (key) SELECT unnest($1::text[]) RETURNING id",
            list(keys.values()),
        )
    return Attempt([r["id"] for r in ids])


async def succeeded(
    conn: asyncpg.Connection, attempt: Attempt, user_id: int, username: str, ip: str | None
) -> None:
    """The password was right: the attempt is no failure, the account's and this
    address's failures are forgiven, and the address becomes known."""
    keys = _keys(username, ip)
    await conn.execute(
        "DELETE FROM throttle_events WHERE id = ANY($1::bigint[]) OR key = ANY($2::text[])",
        attempt.ids,
        [keys["user"], *([keys["pair"]] if "pair" in keys else [])],
    )
    if ip:
        await conn.execute(
            "INSERT INTO login_addresses (user_id, address) VALUES ($1, $2::inet) "
            "ON CONFLICT (user_id, address) DO UPDATE SET last_success_at = now()",
            user_id,
            ip,
        )


async def withdraw(conn: asyncpg.Connection, attempt: Attempt) -> None:
    """The password was right but a second factor is still to come: the attempt
    is no failure, and nothing else is forgiven yet."""
    await conn.execute("DELETE FROM throttle_events WHERE id = ANY($1::bigint[])", attempt.ids)


async def record_failure(conn: asyncpg.Connection, username: str, ip: str | None) -> None:
    """A failure outside a password attempt (a wrong second factor)."""
    await conn.executemany(
        "INSERT INTO throttle_events (key) VALUES ($1)",
        [(k,) for k in _keys(username, ip).values()],
    )


async def unlock(conn: asyncpg.Connection, username: str) -> int:
    """Forget an account's failures, from every address (``dicom-gw user unlock``)."""
    user = username.lower()
    pattern = user.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    done = await conn.execute(
        "DELETE FROM throttle_events WHERE key = $1 OR key LIKE $2",
        f"user:{user}",
        f"pair:{pattern}|%",
    )
    return int(done.split()[-1])

"""Second factor: TOTP (RFC 6238) codes, each good once, and single-use recovery codes.

The TOTP secret is stored encrypted with the state directory's key (like
destination secrets); recovery codes are random and high-entropy, so a SHA-256
hash is enough to store them (no password-grade hashing needed).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import time

import asyncpg
import pyotp
import segno

from dicomgw.send.secrets import SecretBox

ISSUER = "dicom-gw"
RECOVERY_CODES = 10
WINDOW_STEPS = 1
"""Codes of the previous and next 30 s step are accepted too (clock drift)."""


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning(secret: str, username: str) -> tuple[str, str]:
    """(otpauth URI, the same as an SVG QR code) for an authenticator app."""
    uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)
    svg = io.BytesIO()
    segno.make(uri, error="m").save(svg, kind="svg", scale=4, xmldecl=False)
    return uri, svg.getvalue().decode()


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step ``code`` belongs to within the window, or None."""
    if not (len(code) == 6 and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    step = int((now if now is not None else time.time()) // totp.interval)
    for candidate in range(step - WINDOW_STEPS, step + WINDOW_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(candidate), code):
            return candidate
    return None


async def check_totp(conn: asyncpg.Connection, box: SecretBox, user_id: int, code: str) -> bool:
    """A current code not used before; records its step so it cannot be replayed."""
    row = await conn.fetchrow(
        "SELECT totp_secret, totp_last_step FROM users WHERE id = $1 FOR UPDATE", user_id
    )
    if row is None or row["totp_secret"] is None:
        return False
    secret = box.unseal(row["totp_secret"])["totp"]
    step = matching_step(secret, code)
    if step is None or (row["totp_last_step"] is not None and step <= row["totp_last_step"]):
        return False
    await conn.execute("UPDATE users SET totp_last_step = $2 WHERE id = $1", user_id, step)
    return True


def _recovery_hash(code: str) -> str:
    return hashlib.sha256(code.replace("-", "").lower().encode()).hexdigest()


async def new_recovery_codes(conn: asyncpg.Connection, user_id: int) -> list[str]:
    """Replace the user's recovery codes; the new ones, shown once."""
    codes = [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(RECOVERY_CODES)]
    await conn.execute("DELETE FROM recovery_codes WHERE user_id = $1", user_id)
    await conn.executemany(
        "INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)",
        [(user_id, _recovery_hash(c)) for c in codes],
    )
    return codes


async def use_recovery_code(conn: asyncpg.Connection, user_id: int, code: str) -> bool:
    used = await conn.fetchval(
        "UPDATE recovery_codes SET used_at = now() "
        "WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL RETURNING id",
        user_id,
        _recovery_hash(code),
    )
    return used is not None


async def second_factor_ok(
    conn: asyncpg.Connection, box: SecretBox, user_id: int, code: str
) -> bool:
    """A TOTP code, or else a recovery code."""
    code = code.strip()
    if await check_totp(conn, box, user_id, code):
        return True
    return await use_recovery_code(conn, user_id, code)

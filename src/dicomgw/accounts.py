"""User accounts: argon2id password hashes, the fixed set of roles."""

from __future__ import annotations

import functools
import secrets

import asyncpg
from argon2 import PasswordHasher

from dicomgw import audit
from dicomgw.errors import DicomGwError

ROLES = ("admin", "operator", "viewer", "auditor", "uploader")
MIN_PASSWORD_LENGTH = 12
"""The default of api.password_min_length."""
MAX_PASSWORD_LENGTH = 1024

# argon2-cffi's defaults are RFC 9106's second recommended (argon2id, 64 MiB, t=3).
_hasher = PasswordHasher()


class AccountError(DicomGwError):
    exit_code = 2


@functools.cache
def _common_passwords() -> frozenset[str]:
    """zxcvbn's 30,000 most common passwords (from leaked password lists)."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def check_new_password(password: str, min_length: int = MIN_PASSWORD_LENGTH) -> None:
    """AccountError saying why ``password`` may not be set."""
    if len(password) < min_length:
        raise AccountError(f"password too short: at least {min_length} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"password too long: at most {MAX_PASSWORD_LENGTH} characters")
    if password.lower() in _common_passwords():
        raise AccountError("password is one of the most common passwords: choose another")


def hash_password(password: str, min_length: int = MIN_PASSWORD_LENGTH) -> str:
    check_new_password(password, min_length)
    return _hasher.hash(password)


def rehashed(password: str, password_hash: str) -> str | None:
    """A new hash of a password just verified, if ``password_hash`` was made with
    other parameters than the current ones (argon2-cffi's defaults move up)."""
    return _hasher.hash(password) if _hasher.check_needs_rehash(password_hash) else None


def validate_new_user(username: str, role: str) -> None:
    if role not in ROLES:
        raise AccountError(f"unknown role '{role}'; roles: {', '.join(ROLES)}")
    if (
        not username
        or len(username) > 64
        or not username.isprintable()
        or username.strip() != username
    ):
        raise AccountError(
            f"invalid user name {username!r}: 1-64 printable characters, no leading/trailing space"
        )


async def add_user(
    conn: asyncpg.Connection,
    username: str,
    role: str,
    password: str,
    *,
    actor: str = "cli",
    min_length: int = MIN_PASSWORD_LENGTH,
) -> int:
    validate_new_user(username, role)
    password_hash = hash_password(password, min_length)
    return await insert_user(conn, username, role, password_hash, actor=actor)


async def insert_user(
    conn: asyncpg.Connection, username: str, role: str, password_hash: str, *, actor: str
) -> int:
    """A validated user with a hashed password, audited; AccountError if it exists."""
    try:
        user_id: int = await conn.fetchval(
            "INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3) RETURNING id",
            username,
            password_hash,
            role,
        )
    except asyncpg.UniqueViolationError:
        raise AccountError(f"user '{username}' already exists") from None
    await audit.record(
        conn, actor=actor, action="user.create", target=username, detail={"role": role}
    )
    return user_id


FIRST_ADMIN = "admin"


async def ensure_first_admin(conn: asyncpg.Connection, password: str | None) -> str | None:
    """On a database with no users, create ``admin`` with ``password`` (or a random
    one); the password when one was created, else None."""
    async with conn.transaction():
        # NOTE: serializes two gateways starting on one new database.
        await conn.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)"):
            return None
        chosen = password or secrets.token_urlsafe(15)
        await add_user(conn, FIRST_ADMIN, "admin", chosen, actor="dicom-gw")
    return chosen

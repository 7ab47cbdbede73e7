"""User accounts: argon2id password hashes, the fixed set of roles."""

from __future__ import annotations

import secrets

import asyncpg
from argon2 import PasswordHasher

from dicomgw import audit
from dicomgw.errors import DicomGwError

ROLES = ("admin", "operator", "viewer", "auditor")
MIN_PASSWORD_LENGTH = 12

# argon2-cffi's defaults are RFC 9106's second recommended (argon2id, 64 MiB, t=3).
_hasher = PasswordHasher()


class AccountError(DicomGwError):
    exit_code = 2


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


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
    conn: asyncpg.Connection, username: str, role: str, password: str, *, actor: str = "cli"
) -> int:
    validate_new_user(username, role)
    return await insert_user(conn, username, role, hash_password(password), actor=actor)


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

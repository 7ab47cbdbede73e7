"""Destination secrets (passwords, tokens) encrypted at rest.

The database holds only ciphertext (Fernet: AES-128-CBC + HMAC-SHA256); the key
is a file in the state directory, outside the database, readable by its owner
only. A database dump or replica therefore does not reveal the secrets. The
same box seals the users' TOTP secrets. ``dicom-gw secrets rotate`` replaces
the key (:func:`rotate`).
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from dicomgw.errors import DicomGwError

KEY_FILE = "secrets.key"


class SecretsError(DicomGwError):
    pass


SEALED_COLUMNS = (("destinations", "secret"), ("users", "totp_secret"))
"""Every column holding SecretBox ciphertext (re-encrypted by :func:`rotate`)."""


class SecretBox:
    """Seals with the key file's first key; opens with any of its keys (one per
    line), so that :func:`rotate` can switch keys under running processes: a
    token none of the keys opens makes the box read the file again first."""

    def __init__(self, keys: list[bytes], path: Path | None = None) -> None:
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        self._path = path
        self._mtime = path.stat().st_mtime_ns if path is not None else 0

    @classmethod
    def open(cls, state_dir: Path) -> SecretBox:
        """The state directory's key, created (0600) on first use."""
        path = state_dir / KEY_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
                f.flush()
                os.fsync(f.fileno())
        return cls(read_keys(path), path)

    def seal(self, secrets: dict[str, str]) -> bytes | None:
        return self._fernet.encrypt(orjson.dumps(secrets)) if secrets else None

    def unseal(self, token: bytes | None) -> dict[str, str]:
        if token is None:
            return {}
        try:
            plain = self._fernet.decrypt(token)
        except InvalidToken:
            if not self._reloaded():
                raise _undecryptable() from None
            try:
                plain = self._fernet.decrypt(token)
            except InvalidToken:
                raise _undecryptable() from None
        data: dict[str, str] = orjson.loads(plain)
        return data

    def _reloaded(self) -> bool:
        """Read the key file again if it changed since (``dicom-gw secrets rotate``)."""
        if self._path is None:
            return False
        try:
            mtime = self._path.stat().st_mtime_ns
        except OSError:
            return False
        if mtime == self._mtime:
            return False
        self._fernet = MultiFernet([Fernet(k) for k in read_keys(self._path)])
        self._mtime = mtime
        return True


def read_keys(path: Path) -> list[bytes]:
    try:
        keys = [line.strip() for line in path.read_bytes().splitlines() if line.strip()]
        for key in keys:
            Fernet(key)
    except (OSError, ValueError) as exc:
        raise SecretsError(f"cannot use the secrets key {path}: {exc}") from None
    if not keys:
        raise SecretsError(f"the secrets key {path} is empty")
    return keys


def _undecryptable() -> SecretsError:
    return SecretsError(
        "a stored secret cannot be decrypted: the secrets key "
        f"({KEY_FILE} in the state directory) is not the one it was encrypted with"
    )


async def rotate(conn: asyncpg.Connection, state_dir: Path) -> int:
    """A new key for every sealed column; returns the number of values re-encrypted.

    1. the key file becomes [new, old...]: every process can open both;
    2. one transaction re-encrypts every value with the new key;
    3. the key file becomes [new].
    A crash between the steps leaves a file that opens everything; run it again.
    """
    path = state_dir / KEY_FILE
    old = read_keys(path)
    new = Fernet.generate_key()
    _write_keys(path, [new, *old])
    both = MultiFernet([Fernet(k) for k in (new, *old)])
    count = 0
    async with conn.transaction():
        for table, column in SEALED_COLUMNS:
            rows = await conn.fetch(
                f"SELECT id, {column} AS token FROM {table} WHERE {column} IS NOT NULL FOR UPDATE"
            )
            for row in rows:
                try:
                    fresh = both.rotate(row["token"])
                except InvalidToken:
                    raise SecretsError(
                        f"{table}.{column} of id {row['id']} cannot be decrypted with the "
                        f"current key: nothing was re-encrypted ({path} still opens everything "
                        "it opened before)"
                    ) from None
                await conn.execute(
                    f"UPDATE {table} SET {column} = $1 WHERE id = $2", fresh, row["id"]
                )
                count += 1
    _write_keys(path, [new])
    return count


def _write_keys(path: Path, keys: list[bytes]) -> None:
    temp = path.with_name(f".{path.name}.new")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"\n".join(keys) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

"""Destination secrets (passwords, tokens) encrypted at rest.

The database holds only ciphertext (Fernet: AES-128-CBC + HMAC-SHA256); the key
is a file in the state directory, outside the database, readable by its owner
only. A database dump or replica therefore does not reveal the secrets.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from cryptography.fernet import Fernet, InvalidToken

from dicomgw.errors import DicomGwError

KEY_FILE = "secrets.key"


class SecretsError(DicomGwError):
    pass


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

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
        try:
            return cls(path.read_bytes().strip())
        except (OSError, ValueError) as exc:
            raise SecretsError(f"cannot use the secrets key {path}: {exc}") from None

    def seal(self, secrets: dict[str, str]) -> bytes | None:
        return self._fernet.encrypt(orjson.dumps(secrets)) if secrets else None

    def unseal(self, token: bytes | None) -> dict[str, str]:
        if token is None:
            return {}
        try:
            data: dict[str, str] = orjson.loads(self._fernet.decrypt(token))
        except InvalidToken:
            raise SecretsError(
                "a destination secret cannot be decrypted: the secrets key "
                f"({KEY_FILE} in the state directory) is not the one it was encrypted with"
            ) from None
        return data

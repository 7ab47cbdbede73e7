"""Where an instance came from (its provenance), as every way in states it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SourceKind = Literal["dimse", "stow", "upload", "retrieve", "reindex"]

NOT_ROUTED: frozenset[str] = frozenset(("retrieve", "reindex"))
"""Kinds that routing rules leave alone unless a rule names the kind (match
``source_kind``): an instance fetched from an archive or re-indexed from the
store must not be sent back to where it came from."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    kind: SourceKind
    ae_title: str | None = None
    """The calling AE title (DIMSE)."""
    user: str | None = None
    """The account that sent it (HTTP)."""
    called_ae: str | None = None
    address: str | None = None
    """The peer's IP address."""
    session: str | None = None
    """The association ID or the request ID, to find the log lines."""

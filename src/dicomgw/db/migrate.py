"""Schema migrations (Alembic, plain SQL) driven from code, not from alembic.ini."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import create_engine, pool
from sqlalchemy.exc import SQLAlchemyError

from dicomgw.errors import DatabaseError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def sqlalchemy_url(dsn: str) -> str:
    """asyncpg-style DSN -> SQLAlchemy URL with the psycopg (v3) driver."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise DatabaseError(f"database.dsn must start with postgresql://, not '{parts.scheme}://'")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def _alembic(dsn: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["dsn"] = dsn
    return cfg


def head() -> str:
    rev = ScriptDirectory.from_config(_alembic("postgresql://")).get_current_head()
    assert rev is not None
    return rev


def current(dsn: str) -> str | None:
    engine = create_engine(sqlalchemy_url(dsn), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot read the schema version: {_reason(exc)}") from None
    finally:
        engine.dispose()


def check_known(revision: str | None) -> None:
    """Refuse a schema a newer dicom-gw migrated: this version cannot upgrade it,
    and running on it (or downgrading it with this version) would be guessing."""
    if revision is None:
        return
    try:
        found = ScriptDirectory.from_config(_alembic("postgresql://")).get_revision(revision)
    except (CommandError, RevisionError):
        found = None
    if found is None:
        raise DatabaseError(
            f"database schema is at revision {revision}, which this version of dicom-gw "
            f"does not know (it knows up to {head()}): a newer dicom-gw migrated it; run "
            "that version again (or restore the database backup taken before the upgrade)"
        )


def upgrade(dsn: str, revision: str = "head") -> None:
    before = current(dsn)
    check_known(before)
    try:
        command.upgrade(_alembic(dsn), revision)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"schema upgrade to {revision} failed: {_reason(exc)}") from None
    after = current(dsn)
    if before != after:
        log.info("schema upgraded", extra={"from": before, "to": after})


def downgrade(dsn: str, revision: str) -> None:
    try:
        command.downgrade(_alembic(dsn), revision)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"schema downgrade to {revision} failed: {_reason(exc)}") from None
    log.info("schema downgraded", extra={"to": current(dsn)})


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]

"""How each instance came in (dimse, stow, upload, retrieve, reindex) and, over
HTTP, which account sent it: the ingest interface's provenance, kept with the
index row.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOTE: a constant default: PostgreSQL adds the column without rewriting the table.
    op.execute(
        "ALTER TABLE instances ADD COLUMN source_kind text NOT NULL DEFAULT 'dimse' "
        "CONSTRAINT instances_source_kind CHECK "
        "(source_kind IN ('dimse', 'stow', 'upload', 'retrieve', 'reindex')), "
        "ADD COLUMN source_user text"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE instances DROP COLUMN source_kind, DROP COLUMN source_user")

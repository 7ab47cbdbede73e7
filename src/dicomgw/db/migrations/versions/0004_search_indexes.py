"""Study search by source AE.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX instances_source_ae ON instances (source_ae)")


def downgrade() -> None:
    op.execute("DROP INDEX instances_source_ae")

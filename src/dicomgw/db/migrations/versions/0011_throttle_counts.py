"""Throttling events carry a count: rate limits keep one row per key and time
bucket (a counter) instead of one row per request, so a check costs the same
at 300 requests a second as at one. Login failures stay one row each (n = 1).

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE throttle_events ADD COLUMN n integer NOT NULL DEFAULT 1")


def downgrade() -> None:
    op.execute("ALTER TABLE throttle_events DROP COLUMN n")

"""Finished jobs by when they finished, for the history purge (queue/jobs.py
purge_history) to find old ones without reading the whole table.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX forward_jobs_finished ON forward_jobs (finished_at) "
        "WHERE state IN ('done', 'cancelled')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX forward_jobs_finished")

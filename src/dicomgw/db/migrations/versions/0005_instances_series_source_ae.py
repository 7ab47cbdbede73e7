"""Study search by source AE: instances by (series, source AE).

The search asks, study by study from the newest, whether any instance of its
series came from the AE. With an index on series_id alone each probe reads
every instance of the series (at 200,000 instances: 8-26 ms a search for a
common AE); with the AE in the key it stops at the first match (1-3 ms). The
index replaces instances_series (series_id leads it), so ingest maintains as
many indexes as before.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
CREATE INDEX instances_series_source_ae ON instances (series_id, source_ae);
DROP INDEX instances_series;
"""
    )


def downgrade() -> None:
    op.execute(
        """
CREATE INDEX instances_series ON instances (series_id);
DROP INDEX instances_series_source_ae;
"""
    )

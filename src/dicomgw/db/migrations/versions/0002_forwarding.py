"""Forwarding: attempt history, study/series hold keys, destination health.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
ALTER TABLE forward_jobs
    -- Rejections count against their own, smaller budget than transient failures.
    ADD COLUMN permanent_failures integer NOT NULL DEFAULT 0,
    -- Rules with series/study granularity: jobs of one series/study and
    -- destination share a key, and each new arrival pushes their due_at on by the
    -- quiet period, so the group leaves together once it is complete.
    ADD COLUMN hold_key text,
    ADD COLUMN warning text,
    ADD COLUMN converted_to text;
CREATE INDEX forward_jobs_hold ON forward_jobs (destination_id, hold_key)
    WHERE state = 'pending' AND hold_key IS NOT NULL;

-- One row per delivery attempt: what the peer said, for the operator.
CREATE TABLE forward_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       bigint NOT NULL REFERENCES forward_jobs (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT now(),
    outcome      text NOT NULL CHECK (outcome IN ('delivered', 'transient', 'permanent')),
    status       integer,
    message      text,
    worker       text
);
CREATE INDEX forward_attempts_job ON forward_attempts (job_id, at);

ALTER TABLE destinations
    ADD COLUMN circuit_state text NOT NULL DEFAULT 'closed'
        CHECK (circuit_state IN ('closed', 'open')),
    ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN last_success_at timestamptz,
    ADD COLUMN last_failure_at timestamptz,
    ADD COLUMN last_error text;
"""
    )


def downgrade() -> None:
    op.execute(
        """
ALTER TABLE destinations
    DROP COLUMN circuit_state,
    DROP COLUMN consecutive_failures,
    DROP COLUMN last_success_at,
    DROP COLUMN last_failure_at,
    DROP COLUMN last_error;
DROP TABLE forward_attempts;
DROP INDEX forward_jobs_hold;
ALTER TABLE forward_jobs
    DROP COLUMN permanent_failures,
    DROP COLUMN hold_key,
    DROP COLUMN warning,
    DROP COLUMN converted_to;
"""
    )

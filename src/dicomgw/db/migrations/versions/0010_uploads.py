"""Resumable uploads (tus and the upload session API on one store), the uploader
role, and one table of throttling events for the whole API (login failures were
its first use).

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
ALTER TABLE login_failures RENAME TO throttle_events;
ALTER INDEX login_failures_key RENAME TO throttle_events_key;

ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check
    CHECK (role IN ('admin', 'operator', 'viewer', 'auditor', 'uploader'));

-- One upload: a study's files with the form that describes them. Created by the
-- session API (POST /upload/init) or, for a file sent with tus alone, with it.
CREATE TABLE upload_batches (
    id                text PRIMARY KEY,
    user_id           bigint REFERENCES users (id) ON DELETE SET NULL,
    username          text NOT NULL,
    source_ip         inet,
    form              jsonb NOT NULL DEFAULT '{}',
    chunk_size        integer NOT NULL,
    state             text NOT NULL DEFAULT 'uploading'
                      CHECK (state IN ('uploading', 'processing', 'received', 'forwarded',
                                       'failed', 'cancelled')),
    auto_complete     boolean NOT NULL DEFAULT false,
    force             boolean NOT NULL DEFAULT false,
    identity          text[] NOT NULL DEFAULT '{}',
    processing_owner  text,
    processing_until  timestamptz,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    processed_at      timestamptz,
    expires_at        timestamptz NOT NULL
);
CREATE INDEX upload_batches_user ON upload_batches (user_id, created_at);
CREATE INDEX upload_batches_identity ON upload_batches USING gin (identity);
CREATE INDEX upload_batches_processing ON upload_batches (processing_until)
    WHERE state = 'processing';

-- One file of an upload, written by tus PATCH (contiguous bytes from "offset")
-- or by the session API's chunks (any order; "chunks" holds their indexes).
CREATE TABLE uploads (
    id             text PRIMARY KEY,
    batch_id       text REFERENCES upload_batches (id) ON DELETE CASCADE,
    file_index     integer,
    user_id        bigint REFERENCES users (id) ON DELETE SET NULL,
    filename       text NOT NULL DEFAULT '',
    length         bigint CHECK (length >= 0),
    "offset"       bigint NOT NULL DEFAULT 0,
    chunks         integer[] NOT NULL DEFAULT '{}',
    metadata       jsonb NOT NULL DEFAULT '{}',
    concat         text CHECK (concat IN ('partial', 'final')),
    state          text NOT NULL DEFAULT 'uploading'
                   CHECK (state IN ('uploading', 'complete', 'ingested', 'failed')),
    result         jsonb,
    writer         text,
    writer_until   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    UNIQUE (batch_id, file_index)
);
CREATE INDEX uploads_user ON uploads (user_id) WHERE state = 'uploading';
CREATE INDEX uploads_expires ON uploads (expires_at) WHERE state = 'uploading';

-- The instances an upload stored (its state follows their forward jobs).
CREATE TABLE upload_instances (
    batch_id          text NOT NULL REFERENCES upload_batches (id) ON DELETE CASCADE,
    sop_instance_uid  text NOT NULL,
    upload_id         text NOT NULL,
    PRIMARY KEY (batch_id, sop_instance_uid)
);
"""
    )


def downgrade() -> None:
    op.execute(
        """
DROP TABLE upload_instances; DROP TABLE uploads; DROP TABLE upload_batches;
DELETE FROM users WHERE role = 'uploader';
ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check
    CHECK (role IN ('admin', 'operator', 'viewer', 'auditor'));
ALTER INDEX throttle_events_key RENAME TO login_failures_key;
ALTER TABLE throttle_events RENAME TO login_failures;
"""
    )

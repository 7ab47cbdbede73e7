"""Initial schema: index, ingest events, destinations, rules, forward queue, users, audit.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
-- The index: one row per study/series/instance. Values are as received (DICOM
-- strings, trailing padding removed); dates that parse are also kept typed.
CREATE TABLE studies (
    id                        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    study_instance_uid        text NOT NULL UNIQUE,
    patient_id                text,
    patient_name              text,
    patient_birth_date        text,
    patient_sex               text,
    study_date                date,
    study_time                text,
    accession_number          text,
    study_description         text,
    referring_physician_name  text,
    modalities                text[] NOT NULL DEFAULT '{}',
    num_series                integer NOT NULL DEFAULT 0,
    num_instances             integer NOT NULL DEFAULT 0,
    size_bytes                bigint NOT NULL DEFAULT 0,
    first_received_at         timestamptz NOT NULL DEFAULT now(),
    last_received_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX studies_patient_id ON studies (patient_id);
-- Prefix search on names, case-insensitive: lower(name) LIKE 'smi%'.
CREATE INDEX studies_patient_name ON studies (lower(patient_name) text_pattern_ops);
CREATE INDEX studies_study_date ON studies (study_date);
CREATE INDEX studies_accession ON studies (accession_number);
CREATE INDEX studies_modalities ON studies USING gin (modalities);
CREATE INDEX studies_last_received ON studies (last_received_at, id);

CREATE TABLE series (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    study_id             bigint NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    series_instance_uid  text NOT NULL UNIQUE,
    modality             text,
    series_number        integer,
    series_description   text,
    num_instances        integer NOT NULL DEFAULT 0,
    first_received_at    timestamptz NOT NULL DEFAULT now(),
    last_received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX series_study ON series (study_id);
CREATE INDEX series_modality ON series (modality);

-- A SOP Instance UID can have more than one version only under the
-- duplicate policy 'keep-both'; file_path is relative to storage.root and is
-- built from internal ids, never from peer-supplied strings.
CREATE TABLE instances (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    series_id            bigint NOT NULL REFERENCES series (id) ON DELETE CASCADE,
    sop_instance_uid     text NOT NULL,
    version              integer NOT NULL DEFAULT 1,
    sop_class_uid        text NOT NULL,
    instance_number      integer,
    number_of_frames     integer,
    transfer_syntax_uid  text NOT NULL,
    file_path            text NOT NULL UNIQUE,
    size_bytes           bigint NOT NULL,
    -- The data set is the file's last dataset_size bytes, as received.
    dataset_size         bigint NOT NULL,
    checksum             text NOT NULL,
    source_ae            text,
    called_ae            text,
    source_ip            inet,
    received_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sop_instance_uid, version)
);
CREATE INDEX instances_series ON instances (series_id);
CREATE INDEX instances_received ON instances (received_at);

CREATE TABLE ingest_events (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                timestamptz NOT NULL DEFAULT now(),
    event             text NOT NULL
                      CHECK (event IN ('stored', 'duplicate', 'rejected', 'recovered', 'replaced')),
    instance_id       bigint REFERENCES instances (id) ON DELETE SET NULL,
    sop_instance_uid  text,
    dimse_status      integer,
    source_ae         text,
    called_ae         text,
    source_ip         inet,
    association_id    text,
    size_bytes        bigint,
    detail            text
);
CREATE INDEX ingest_events_at ON ingest_events (at);
CREATE INDEX ingest_events_instance ON ingest_events (instance_id);

-- Forwarding targets. Secrets (passwords, tokens) are encrypted by the
-- application with a key kept outside the database.
CREATE TABLE destinations (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL UNIQUE,
    kind              text NOT NULL CHECK (kind IN ('dimse', 'stowrs')),
    settings          jsonb NOT NULL DEFAULT '{}',
    secret            bytea,
    enabled           boolean NOT NULL DEFAULT true,
    paused            boolean NOT NULL DEFAULT false,
    max_parallel      integer NOT NULL DEFAULT 2 CHECK (max_parallel > 0),
    from_config       boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE routing_rules (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL UNIQUE,
    position          integer NOT NULL,
    enabled           boolean NOT NULL DEFAULT true,
    match             jsonb NOT NULL DEFAULT '{}',
    granularity       text NOT NULL DEFAULT 'instance'
                      CHECK (granularity IN ('instance', 'series', 'study')),
    quiet_period_s    integer NOT NULL DEFAULT 0 CHECK (quiet_period_s >= 0),
    hits              bigint NOT NULL DEFAULT 0,
    from_config       boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX routing_rules_position ON routing_rules (position);

CREATE TABLE routing_rule_destinations (
    rule_id         bigint NOT NULL REFERENCES routing_rules (id) ON DELETE CASCADE,
    destination_id  bigint NOT NULL REFERENCES destinations (id) ON DELETE RESTRICT,
    PRIMARY KEY (rule_id, destination_id)
);
CREATE INDEX routing_rule_destinations_dest ON routing_rule_destinations (destination_id);

-- The forward queue. Workers claim due 'pending' rows with FOR UPDATE SKIP
-- LOCKED under a lease; an expired lease makes a 'leased' row claimable again.
CREATE TABLE forward_jobs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id       bigint NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    destination_id    bigint NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    rule_id           bigint REFERENCES routing_rules (id) ON DELETE SET NULL,
    state             text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'leased', 'done', 'dead', 'cancelled')),
    attempts          integer NOT NULL DEFAULT 0,
    due_at            timestamptz NOT NULL DEFAULT now(),
    lease_owner       text,
    lease_expires_at  timestamptz,
    last_status       integer,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
CREATE INDEX forward_jobs_claim ON forward_jobs (destination_id, due_at) WHERE state = 'pending';
CREATE INDEX forward_jobs_lease ON forward_jobs (lease_expires_at) WHERE state = 'leased';
CREATE INDEX forward_jobs_state ON forward_jobs (state, destination_id);
CREATE INDEX forward_jobs_instance ON forward_jobs (instance_id);

CREATE TABLE users (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username             text NOT NULL,
    password_hash        text NOT NULL,
    role                 text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer', 'auditor')),
    totp_secret          bytea,
    disabled             boolean NOT NULL DEFAULT false,
    failed_logins        integer NOT NULL DEFAULT 0,
    locked_until         timestamptz,
    password_changed_at  timestamptz NOT NULL DEFAULT now(),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_username ON users (lower(username));

-- Append-only: the trigger refuses UPDATE and DELETE, whoever asks.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    target      text,
    detail      jsonb NOT NULL DEFAULT '{}',
    source_ip   inet,
    request_id  text
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, at);
CREATE INDEX audit_log_action ON audit_log (action, at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Dashboard series: counters summed per hour and per day.
CREATE TABLE metrics_rollup (
    granularity  text NOT NULL CHECK (granularity IN ('hour', 'day')),
    bucket       timestamptz NOT NULL,
    metric       text NOT NULL,
    dimension    text NOT NULL DEFAULT '',
    value        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (granularity, bucket, metric, dimension)
);
"""
    )


def downgrade() -> None:
    op.execute(
        """
DROP TABLE metrics_rollup;
DROP TABLE audit_log;
DROP FUNCTION audit_log_append_only();
DROP TABLE users;
DROP TABLE forward_jobs;
DROP TABLE routing_rule_destinations;
DROP TABLE routing_rules;
DROP TABLE destinations;
DROP TABLE ingest_events;
DROP TABLE instances;
DROP TABLE series;
DROP TABLE studies;
"""
    )

"""API authentication: sessions, API tokens, TOTP state, login throttling, and a
hash-chained audit log.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
-- Browser sessions. Only a hash of the cookie's token is stored, so a read of
-- this table (a backup, a replica) does not give working sessions away.
CREATE TABLE sessions (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash    bytea NOT NULL UNIQUE,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    source_ip     inet,
    user_agent    text
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- API tokens for scripts: shown once at creation, stored hashed.
CREATE TABLE api_tokens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          text NOT NULL,
    token_hash    bytea NOT NULL UNIQUE,
    prefix        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    expires_at    timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

ALTER TABLE users
    ADD COLUMN totp_confirmed boolean NOT NULL DEFAULT false,
    -- The last TOTP time step accepted: a code is good once.
    ADD COLUMN totp_last_step bigint;

CREATE TABLE recovery_codes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  text NOT NULL,
    used_at    timestamptz
);
CREATE INDEX recovery_codes_user ON recovery_codes (user_id);

-- Failed logins per key ('user:<name>' or 'ip:<address>') in a sliding window;
-- shared by every API worker.
CREATE TABLE login_failures (
    key  text NOT NULL,
    at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_key ON login_failures (key, at);

-- The audit log becomes a hash chain: each row's hash covers its content and
-- the previous row's hash, so a changed, removed or inserted row breaks every
-- hash after it ('dicom-gw audit verify'). The trigger computes it, so every
-- writer is chained, and serializes writers on an advisory lock.
ALTER TABLE audit_log
    ADD COLUMN event_id text,
    ADD COLUMN outcome text NOT NULL DEFAULT 'success'
        CHECK (outcome IN ('success', 'failure')),
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash bytea;

CREATE FUNCTION audit_log_canonical(r audit_log) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT convert_to(concat_ws(E'\\x1f',
        r.id::text, to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
        r.actor, r.action, coalesce(r.target, ''), r.detail::text,
        coalesce(host(r.source_ip), ''), coalesce(r.request_id, ''),
        coalesce(r.event_id, ''), r.outcome), 'UTF8')
$$;

CREATE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7349261);
    SELECT hash INTO NEW.prev_hash FROM audit_log ORDER BY id DESC LIMIT 1;
    NEW.prev_hash := coalesce(NEW.prev_hash, '\\x'::bytea);
    NEW.hash := sha256(NEW.prev_hash || audit_log_canonical(NEW));
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_chain();

-- Rows written before the chain existed get their hashes now, in order.
DO $$
DECLARE
    r audit_log;
    prev bytea := '\\x'::bytea;
BEGIN
    ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only;
    FOR r IN SELECT * FROM audit_log ORDER BY id LOOP
        UPDATE audit_log SET prev_hash = prev,
            hash = sha256(prev || audit_log_canonical(r)) WHERE id = r.id
        RETURNING hash INTO prev;
    END LOOP;
    ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only;
END
$$;
"""
    )


def downgrade() -> None:
    op.execute(
        """
DROP TRIGGER audit_log_chain ON audit_log;
DROP FUNCTION audit_log_chain();
DROP FUNCTION audit_log_canonical(audit_log);
ALTER TABLE audit_log
    DROP COLUMN event_id, DROP COLUMN outcome, DROP COLUMN prev_hash, DROP COLUMN hash;
DROP TABLE login_failures;
DROP TABLE recovery_codes;
ALTER TABLE users DROP COLUMN totp_confirmed, DROP COLUMN totp_last_step;
DROP TABLE api_tokens;
DROP TABLE sessions;
"""
    )

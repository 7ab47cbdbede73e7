"""The role the gateway's processes work as: every privilege they use, and on
audit_log only SELECT and INSERT.

Migrations run as the login role (the owner); the pools then take this role at
connect (db/pool.py), so an UPDATE or DELETE of audit_log is refused by the
privileges before the append-only trigger sees it. Creating a role needs
CREATEROLE (the embedded server's superuser has it); a login role without it
leaves the role out, and the pools work as the login role (logged at start),
with the trigger as the only guard.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ROLE = "dicomgw_app"


def upgrade() -> None:
    op.execute(f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
        IF NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user)
        THEN
            RAISE NOTICE 'no CREATEROLE: role {ROLE} not created';
            RETURN;
        END IF;
        CREATE ROLE {ROLE} NOLOGIN;
    END IF;
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO {ROLE}', current_database());
    EXECUTE format('GRANT {ROLE} TO %I', current_user);
    GRANT USAGE ON SCHEMA public TO {ROLE};
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {ROLE};
    REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM {ROLE};
    GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {ROLE};
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {ROLE};
    ALTER DEFAULT PRIVILEGES IN SCHEMA public
        GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {ROLE};
    ALTER DEFAULT PRIVILEGES IN SCHEMA public
        GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {ROLE};
END $$;
""")


def downgrade() -> None:
    # NOTE: the role is the cluster's, and other databases may use it: only this
    # database's grants go.
    op.execute(f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
        RETURN;
    END IF;
    ALTER DEFAULT PRIVILEGES IN SCHEMA public
        REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {ROLE};
    ALTER DEFAULT PRIVILEGES IN SCHEMA public
        REVOKE USAGE, SELECT, UPDATE ON SEQUENCES FROM {ROLE};
    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE};
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {ROLE};
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM {ROLE};
    REVOKE USAGE ON SCHEMA public FROM {ROLE};
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM {ROLE}', current_database());
END $$;
""")

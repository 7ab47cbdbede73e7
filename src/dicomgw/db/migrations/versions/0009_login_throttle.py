"""Login throttling without lockout: failures get ids (an attempt is counted when
it starts and taken back when the password was right), and the addresses each
account logged in from are kept (a known address is not refused for what others
did to the account).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
ALTER TABLE login_failures ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY;
CREATE TABLE login_addresses (
    user_id          bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    address          inet NOT NULL,
    last_success_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, address)
);
"""
    )


def downgrade() -> None:
    op.execute("DROP TABLE login_addresses; ALTER TABLE login_failures DROP COLUMN id;")

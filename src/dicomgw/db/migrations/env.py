"""Alembic environment: plain-SQL migrations run over one psycopg connection.

The DSN comes from ``config.attributes["dsn"]`` (set by dicomgw.db.migrate);
there is no alembic.ini and no ORM metadata.
"""

from alembic import context
from sqlalchemy import create_engine, pool

from dicomgw.db.migrate import sqlalchemy_url

engine = create_engine(sqlalchemy_url(context.config.attributes["dsn"]), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()

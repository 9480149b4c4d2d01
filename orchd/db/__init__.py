"""The database: schema, engine set-up for SQLite and PostgreSQL, migrations, and the one
data-access layer (``Store``) through which the daemons and the CLI reach it."""

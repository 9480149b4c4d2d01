"""The database: schema, engine set-up for SQLite and PostgreSQL, migrations, and the one
data-access layer (``Store``, see ``orchd.db.store``) through which the daemons, the CLI and the
web reach it."""

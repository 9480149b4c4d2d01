"""The database: schema, engine set-up for SQLite and PostgreSQL, migrations, and the one
data-access layer (``Store``, see ``orchd.db.store``) through which the daemons, the CLI and the
web reach it.  The only package of orchd that imports SQLAlchemy or a database driver
(tests/test_layers.py checks it); its errors leave it as orchd's own (``orchd.db.errors``)."""

from orchd.db import migrate


def test_migrated(store):
    assert migrate.current_revision(store.engine) == migrate.head_revision()

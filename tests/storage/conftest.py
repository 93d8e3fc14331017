from collections.abc import AsyncIterator

import pytest

from storage.db import Database
from tests.conftest import OpenDb


@pytest.fixture
async def db(open_db: OpenDb) -> AsyncIterator[Database]:
    """A migrated database, on SQLite and on PostgreSQL (one run each)."""
    yield await open_db()

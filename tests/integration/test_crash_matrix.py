"""The crash matrix (~100k events): workers, publishers, Redis and Postgres killed; nothing lost or doubled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import crash_matrix
from tests.publish_support import RedisServer

#: events published in the CI run (the bench runs the same scenario at 1M)
EVENTS = int(os.environ.get("USAGEBILL_CRASH_MATRIX_EVENTS", "100000"))


@pytest.mark.slow
def test_crash_matrix(database_url: str, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        fig = crash_matrix.run(database_url, server, tmp_path, EVENTS)
    finally:
        server.stop()
    print(json.dumps(fig.as_dict()))
    assert fig.lost == 0 and fig.doubled == 0
    assert fig.worker_kills >= 3 and fig.publisher_kills == 2
    assert fig.redis_restarts == 2 and fig.postgres_restarts == 1
    assert fig.texts_published >= EVENTS * 0.99
    assert 0 < fig.not_accepted < fig.texts_published // 4

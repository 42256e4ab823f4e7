"""Fixtures of the worker tests: the worker process's resources, made on this test's services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from billing.settings import Settings
from tests.integration.ingest_util import worker_resources
from worker import worker as proc


@pytest.fixture
def res(settings: Settings) -> Iterator[proc.Resources]:
    """The worker's pool, Redis client and settings for this test (closed after it)."""
    with worker_resources(settings) as made:
        yield made

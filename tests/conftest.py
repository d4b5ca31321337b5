"""Shared fixtures: a real PostgreSQL cluster for the session, a fresh database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgcluster import PostgresCluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster.create()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_database(pg_cluster: PostgresCluster) -> str:
    """Name of a new empty database in the session cluster."""
    return pg_cluster.create_database()

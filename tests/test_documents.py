"""search_documents over the seeded tenants, as the tenant role with row-level security."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from aio_agent.db import connect_tenant
from aio_agent.documents import search_documents
from tests.pgcluster import PostgresCluster
from tests.tenant_support import make_init_db_database, tenant_dsn


@pytest.fixture(scope="module")
def seeded_db(pg_cluster: PostgresCluster) -> str:
    return make_init_db_database(pg_cluster)


@pytest.fixture
async def hr(pg_cluster: PostgresCluster, seeded_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_tenant(tenant_dsn(pg_cluster, "hr", seeded_db), "hr")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def accounting(
    pg_cluster: PostgresCluster, seeded_db: str
) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_tenant(tenant_dsn(pg_cluster, "accounting", seeded_db), "accounting")
    try:
        yield conn
    finally:
        await conn.close()


async def test_finds_the_matching_document_of_its_own_department(hr: asyncpg.Connection) -> None:
    results = await search_documents(hr, "how many vacation days do I get?")

    assert results[0]["drive_file_id"] == "hr-vacation-policy"
    assert results[0]["title"] == "Vacation Policy"
    assert "vacation" in results[0]["snippet"].lower()
    assert results[0]["rank"] > 0
    assert set(results[0]) == {"drive_file_id", "title", "snippet", "rank"}


async def test_never_returns_another_departments_documents(
    hr: asyncpg.Connection, accounting: asyncpg.Connection
) -> None:
    query = "expense invoice travel reimbursement receipt"

    assert await search_documents(hr, query) == []
    found = await search_documents(accounting, query)
    assert {r["drive_file_id"] for r in found} == {
        "acc-expense-policy",
        "acc-invoice-approval",
        "acc-travel-reimbursement",
    }


async def test_results_are_best_first_and_a_title_match_outranks_a_passing_mention(
    hr: asyncpg.Connection,
) -> None:
    transaction = hr.transaction()
    await transaction.start()
    try:
        await hr.execute(
            "INSERT INTO drive_documents (drive_file_id, title, content) VALUES"
            " ('hr-onboarding', 'Onboarding Checklist', 'Collect your laptop on day one.'),"
            " ('hr-laptop', 'Laptop Policy', 'Company laptops are encrypted. Report a lost"
            " laptop to IT within one hour.')"
        )
        results = await search_documents(hr, "laptop")
    finally:
        await transaction.rollback()

    assert [r["drive_file_id"] for r in results] == ["hr-laptop", "hr-onboarding"]
    assert results[0]["rank"] > results[1]["rank"]


async def test_limit_caps_the_number_of_results(hr: asyncpg.Connection) -> None:
    assert len(await search_documents(hr, "leave OR vacation OR remote", limit=2)) == 2
    assert len(await search_documents(hr, "leave OR vacation OR remote", limit=0)) == 1


@pytest.mark.parametrize(
    "query",
    [
        "",
        "   ",
        "!!!",
        "&|!():*'\"\\<->",
        "the of and",
        "a\x00b",
        "vacation " * 2000,
        "OR OR - -",
        "'; DROP TABLE drive_documents; --",
    ],
)
async def test_empty_or_garbage_queries_return_a_list_without_error(
    hr: asyncpg.Connection, query: str
) -> None:
    results = await search_documents(hr, query)

    assert isinstance(results, list)
    assert await hr.fetchval("SELECT count(*) FROM drive_documents") == 3

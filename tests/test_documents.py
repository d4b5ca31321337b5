"""search_documents over the seeded tenants, as the tenant role with row-level security."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from aio_agent import documents
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


async def test_a_query_of_stop_words_only_finds_nothing(hr: asyncpg.Connection) -> None:
    assert await search_documents(hr, "the of and") == []
    assert await search_documents(hr, "how do I") == []


async def test_search_uses_the_text_index_as_the_tenant_role_under_row_level_security(
    hr: asyncpg.Connection,
) -> None:
    # Enough documents that an index is the cheap plan; a match condition that is not LEAKPROOF
    # can never be an index condition under FORCEd row-level security, whatever the size.
    menu = "The canteen serves soup, salad, bread and a warm dish of the day. " * 20
    transaction = hr.transaction()
    await transaction.start()
    try:
        await hr.executemany(
            "INSERT INTO drive_documents (drive_file_id, title, content) VALUES ($1, $2, $3)",
            [(f"hr-memo-{n}", f"Memo {n}", f"Week {n}. " + menu) for n in range(2000)],
        )
        await hr.execute("ANALYZE drive_documents")
        rows = await hr.fetch(
            "EXPLAIN " + documents.STRICT_SQL,
            "vacation",
            5,
            documents.CANDIDATES,
            documents.HEADLINE_OPTIONS,
            documents.WINDOW_BEFORE,
            documents.WINDOW_CHARS,
        )
        forced = await hr.fetchval(
            "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class"
            " WHERE oid = 'drive_documents'::regclass"
        )
    finally:
        await transaction.rollback()
    plan = "\n".join(r[0] for r in rows)

    assert forced
    assert "Index Cond: (search @@ '''vacat'''::tsquery)" in plan, plan
    assert "Index Cond: (title_search @@ '''vacat'''::tsquery)" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert "current_setting('app.department_id'::text, true)" in plan  # the policy still applies


async def test_the_snippet_comes_from_where_the_words_are_in_a_long_document(
    hr: asyncpg.Connection,
) -> None:
    filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 400  # ~23,000 chars
    transaction = hr.transaction()
    await transaction.start()
    try:
        await hr.execute(
            "INSERT INTO drive_documents (drive_file_id, title, content) VALUES ($1, $2, $3)",
            "hr-handbook",
            "Employee Handbook",
            filler + "Company bicycles may be borrowed for commuting. " + filler,
        )
        results = await search_documents(hr, "bicycle commute")
    finally:
        await transaction.rollback()

    assert [r["drive_file_id"] for r in results] == ["hr-handbook"]
    assert "bicycles may be borrowed for commuting" in results[0]["snippet"]


async def test_a_title_match_wins_even_when_the_word_is_in_hundreds_of_documents(
    hr: asyncpg.Connection,
) -> None:
    mentions = 3 * documents.CANDIDATES  # more than the ranked sample of text-only matches
    transaction = hr.transaction()
    await transaction.start()
    try:
        await hr.executemany(
            "INSERT INTO drive_documents (drive_file_id, title, content) VALUES ($1, $2, $3)",
            [
                (f"hr-note-{n}", f"Team Note {n}", "Bring your badge and your laptop.")
                for n in range(mentions)
            ],
        )
        await hr.execute(
            "INSERT INTO drive_documents (drive_file_id, title, content) VALUES"
            " ('hr-badge', 'Badge Policy', 'Wear your badge visibly at all times.')"
        )
        results = await search_documents(hr, "badge")
    finally:
        await transaction.rollback()

    assert results[0]["drive_file_id"] == "hr-badge"
    assert len(results) == 5

"""tests/init-db.sql: generated from migrations/, equal to a migrate-only database, seeded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from aio_agent import migrate
from aio_agent.db import connect_tenant
from tests.gen_init_db import INIT_DB, SEED_DOCUMENTS, render
from tests.pgcluster import PostgresCluster
from tests.support import render_config
from tests.tenant_support import (
    catalog_dump,
    log_lines,
    make_init_db_database,
    provision,
    run_cli,
    tenant_dsn,
)

DEPARTMENTS = ("hr", "accounting")


@pytest.fixture(scope="module")
def init_db_database(pg_cluster: PostgresCluster) -> str:
    return make_init_db_database(pg_cluster)


def test_checked_in_init_db_is_what_the_generator_writes() -> None:
    assert INIT_DB.read_text(encoding="utf-8") == render(), (
        "tests/init-db.sql drifted from migrations/: run python -m tests.gen_init_db"
    )


def test_init_db_leads_to_the_same_schema_as_migrations_alone(
    pg_cluster: PostgresCluster, init_db_database: str
) -> None:
    migrated = pg_cluster.create_database()
    provision(pg_cluster, migrated, *DEPARTMENTS)
    migrations = migrate.load_migrations(migrate.default_migrations_dir({}))

    async def run(department_id: str) -> None:
        conn = await connect_tenant(tenant_dsn(pg_cluster, department_id, migrated), department_id)
        try:
            await migrate.migrate(conn, department_id, migrations)
        finally:
            await conn.close()

    for department_id in DEPARTMENTS:
        asyncio.run(run(department_id))

    bootstrapped = catalog_dump(pg_cluster, init_db_database, *DEPARTMENTS)
    expected = catalog_dump(pg_cluster, migrated, *DEPARTMENTS)

    assert len(expected["relations"]) >= 2 * 8  # 4 tables, 2 sequences, indexes per tenant
    assert len(expected["policies"]) == 2 * 3
    assert len(expected["hr_tenant.schema_migrations"]) == len(migrations)
    for section, rows in expected.items():
        assert bootstrapped[section] == rows, section


def test_agent_migrate_after_init_db_is_a_noop(
    pg_cluster: PostgresCluster,
    init_db_database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    migrations = migrate.load_migrations(migrate.default_migrations_dir({}))
    # HR exactly as the entrypoint runs it (a process reading the rendered config) ...
    config, _ = render_config(tmp_path, POSTGRES_URL=tenant_dsn(pg_cluster, "hr", init_db_database))
    result = run_cli("aio_agent.migrate", env={"CONFIG_PATH": str(config)})
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = [result.stdout]
    # ... and Accounting through the same main() in this process.
    capsys.readouterr()
    url = tenant_dsn(pg_cluster, "accounting", init_db_database)
    code = migrate.main(["--database-url-env", "U", "--department", "accounting"], env={"U": url})
    assert code == 0
    outputs.append(capsys.readouterr().out)

    for output in outputs:
        lines = log_lines(output)
        assert [line["event"] for line in lines] == ["migrations done"]
        assert (lines[0]["applied"], lines[0]["already_applied"]) == (0, len(migrations))


def test_seeded_documents_are_distinct_and_visible_only_to_their_department(
    pg_cluster: PostgresCluster, init_db_database: str
) -> None:
    async def titles(department_id: str) -> set[str]:
        conn = await asyncpg.connect(tenant_dsn(pg_cluster, department_id, init_db_database))
        try:
            rows = await conn.fetch("SELECT title, department_id FROM drive_documents")
        finally:
            await conn.close()
        assert {r["department_id"] for r in rows} == {department_id}
        return {r["title"] for r in rows}

    seen = {d: asyncio.run(titles(d)) for d in DEPARTMENTS}

    for department_id in DEPARTMENTS:
        assert seen[department_id] == {title for _, title, _ in SEED_DOCUMENTS[department_id]}
    assert not seen["hr"] & seen["accounting"]

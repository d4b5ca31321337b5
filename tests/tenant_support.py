"""Helpers for the tenant database suites: provision tenants, run the CLIs, dump the catalog."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from aio_agent.tenant import create_tenant
from tests.gen_init_db import INIT_DB, TEST_PASSWORDS
from tests.pgcluster import PostgresCluster, _pg_bin
from tests.support import PYTHON, process_env


def password_of(department_id: str) -> str:
    return TEST_PASSWORDS.get(department_id, f"{department_id}-test-password")


def provision(cluster: PostgresCluster, dbname: str, *department_ids: str) -> None:
    """Create role + schema of each department in `dbname` with tenant.py, as the superuser."""

    async def run() -> None:
        conn = await asyncpg.connect(cluster.dsn(dbname=dbname))
        try:
            for department_id in department_ids:
                await create_tenant(conn, department_id, password_of(department_id))
        finally:
            await conn.close()

    asyncio.run(run())


def tenant_dsn(cluster: PostgresCluster, department_id: str, dbname: str) -> str:
    return cluster.dsn(
        user=f"{department_id}_agent", password=password_of(department_id), dbname=dbname
    )


def run_cli(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60):
    """`python -m <module> args...` with the repo on PYTHONPATH; returns CompletedProcess."""
    return subprocess.run(
        [PYTHON, "-m", module, *args],
        check=False,
        env=process_env(env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def migrate_cli(url: str, department_id: str, *args: str, **env: str):
    """Run the migrator the way an operator does (URL from a variable, not the command line)."""
    return run_cli(
        "aio_agent.migrate",
        "--database-url-env",
        "TENANT_URL",
        "--department",
        department_id,
        *args,
        env={"TENANT_URL": url, **env},
    )


def log_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def load_init_db(cluster: PostgresCluster, dbname: str) -> None:
    """Run tests/init-db.sql the way the postgres image does (psql -f, ON_ERROR_STOP)."""
    subprocess.run(
        [_pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(cluster.root),
         "-p", str(cluster.port), "-U", "postgres", "-d", dbname, "-f", str(INIT_DB)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


CATALOG_QUERIES = {
    "schemas": """
        SELECT nspname, pg_get_userbyid(nspowner) AS owner, coalesce(nspacl::text, '') AS acl
        FROM pg_namespace WHERE nspname = ANY($1) ORDER BY 1""",
    "relations": """
        SELECT n.nspname, c.relname, c.relkind::text, pg_get_userbyid(c.relowner) AS owner,
               c.relrowsecurity, c.relforcerowsecurity, coalesce(c.relacl::text, '') AS acl
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY($1) ORDER BY 1, 2""",
    "columns": """
        SELECT table_schema, table_name, ordinal_position, column_name, data_type,
               is_nullable, coalesce(column_default, ''), is_generated,
               coalesce(generation_expression, ''), is_identity
        FROM information_schema.columns WHERE table_schema = ANY($1) ORDER BY 1, 2, 3""",
    "indexes": """
        SELECT schemaname, tablename, indexname, indexdef
        FROM pg_indexes WHERE schemaname = ANY($1) ORDER BY 1, 2, 3""",
    "constraints": """
        SELECT n.nspname, c.conrelid::regclass::text, c.conname, c.contype::text,
               pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = ANY($1) ORDER BY 1, 2, 3""",
    "policies": """
        SELECT schemaname, tablename, policyname, permissive, roles::text, cmd,
               coalesce(qual, ''), coalesce(with_check, '')
        FROM pg_policies WHERE schemaname = ANY($1) ORDER BY 1, 2, 3""",
    "roles": """
        SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, rolbypassrls,
               rolreplication
        FROM pg_roles WHERE rolname = ANY($1) ORDER BY 1""",
}


def catalog_dump(cluster: PostgresCluster, dbname: str, *department_ids: str) -> dict[str, list]:
    """Everything that makes up the tenants' schemas, as comparable lists of tuples."""
    schemas = [f"{d}_tenant" for d in department_ids]
    roles = [f"{d}_agent" for d in department_ids]

    async def run() -> dict[str, list]:
        conn = await asyncpg.connect(cluster.dsn(dbname=dbname))
        try:
            dump: dict[str, list] = {}
            for name, sql in CATALOG_QUERIES.items():
                names = roles if name == "roles" else schemas
                dump[name] = [tuple(r.values()) for r in await conn.fetch(sql, names)]
            for schema in schemas:
                dump[f"{schema}.schema_migrations"] = [
                    tuple(r.values())
                    for r in await conn.fetch(
                        f'SELECT version, name, checksum FROM "{schema}".schema_migrations '
                        "ORDER BY version"
                    )
                ]
            return dump
        finally:
            await conn.close()

    return asyncio.run(run())


def write_password(tmp_path: Path, department_id: str, password: str | None = None) -> Path:
    path = tmp_path / f"{department_id}.password"
    path.write_text((password or password_of(department_id)) + "\n")
    path.chmod(0o600)
    return path


def make_init_db_database(cluster: PostgresCluster) -> str:
    """A new database bootstrapped by tests/init-db.sql, as the postgres image would do it."""
    dbname = cluster.create_database()
    load_init_db(cluster, dbname)
    return dbname


@contextlib.asynccontextmanager
async def table_locked(cluster: PostgresCluster, dbname: str, table: str) -> AsyncIterator[None]:
    """Another session holds `table` (as a migration or VACUUM FULL would): every read and write
    of it waits until the block ends."""
    locker = await asyncpg.connect(cluster.dsn(dbname=dbname))
    try:
        async with locker.transaction():
            await locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await locker.close()

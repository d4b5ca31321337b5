"""Tenant isolation on a real PostgreSQL: roles, schemas, revokes, row-level security, bad ids."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aio_agent import migrate, tenant
from aio_agent.db import connect_tenant
from tests.pgcluster import PostgresCluster
from tests.tenant_support import migrate_cli, provision, run_cli, tenant_dsn, write_password

BAD_IDS = [
    "hr; drop schema x",
    "hr'; drop role postgres; --",
    'hr"; drop schema accounting_tenant cascade; --',
    "HR",
    "a" * 40,
    "",
    "1hr",
    "hr-team",
]


def sql(url: str, statement: str, *args: Any, settings: dict[str, str] | None = None) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(url, server_settings=settings or {})
        try:
            return await conn.fetch(statement, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def tenants_db(pg_cluster: PostgresCluster) -> str:
    """HR and Accounting provisioned and migrated, one row per tenant table each."""
    dbname = pg_cluster.create_database()
    provision(pg_cluster, dbname, "hr", "accounting")
    migrations = migrate.load_migrations(migrate.default_migrations_dir({}))

    async def fill(department_id: str) -> None:
        conn = await connect_tenant(tenant_dsn(pg_cluster, department_id, dbname), department_id)
        try:
            await migrate.migrate(conn, department_id, migrations)
            await conn.execute(
                "INSERT INTO tool_calls (session_id, tool, arguments, status, latency_ms, attempts)"
                " VALUES ('s1', 'lookup_policy', '{}', 'ok', 12.5, 1)"
            )
            await conn.execute(
                "INSERT INTO session_context (caller_id, session_id, context)"
                " VALUES ('+4912345', 's1', '{}')"
            )
            await conn.execute(
                "INSERT INTO drive_documents (drive_file_id, title, content)"
                f" VALUES ('{department_id}-doc', 'Handbook', 'private {department_id} text')"
            )
        finally:
            await conn.close()

    asyncio.run(fill("hr"))
    asyncio.run(fill("accounting"))
    return dbname


TENANT_TABLES = ["tool_calls", "session_context", "drive_documents", "schema_migrations"]
FOREIGN_STATEMENTS = [
    f"{verb} accounting_tenant.{table}{rest}"
    for table in TENANT_TABLES
    for verb, rest in (
        ("SELECT * FROM", ""),
        ("DELETE FROM", ""),
        ("UPDATE", " SET department_id = 'hr'"),
    )
] + [
    "INSERT INTO accounting_tenant.drive_documents (drive_file_id, title) VALUES ('x', 'x')",
    "INSERT INTO accounting_tenant.tool_calls (session_id, tool, arguments, status, latency_ms)"
    " VALUES ('s', 't', '{}', 'ok', 1)",
    "INSERT INTO accounting_tenant.session_context (caller_id, session_id) VALUES ('c', 's')",
    "INSERT INTO accounting_tenant.schema_migrations (version, name, checksum)"
    " VALUES ('9999', 'x', 'x')",
    "CREATE TABLE accounting_tenant.planted (id int)",
]


@pytest.mark.parametrize("statement", FOREIGN_STATEMENTS)
def test_hr_role_cannot_touch_accounting_tenant(
    pg_cluster: PostgresCluster, tenants_db: str, statement: str
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        sql(tenant_dsn(pg_cluster, "hr", tenants_db), statement)


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE public.planted (id int)",
        "CREATE SCHEMA planted",
        "CREATE TABLE accounting_tenant.planted (id int)",
    ],
)
def test_hr_role_cannot_create_outside_its_schema(
    pg_cluster: PostgresCluster, tenants_db: str, statement: str
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        sql(tenant_dsn(pg_cluster, "hr", tenants_db), statement)


def test_public_schema_grants_tenants_nothing(pg_cluster: PostgresCluster, tenants_db: str) -> None:
    # PostgreSQL 15 already withholds CREATE on public from PUBLIC, but still grants USAGE: only
    # the bootstrap's REVOKE ALL takes that away, so this fails without it.
    rows = sql(
        tenant_dsn(pg_cluster, "hr", tenants_db),
        "SELECT has_schema_privilege('public', 'USAGE'), has_schema_privilege('public', 'CREATE'),"
        " has_schema_privilege('accounting_tenant', 'USAGE')",
    )
    assert tuple(rows[0]) == (False, False, False)


@pytest.mark.parametrize("table", ["tool_calls", "session_context", "drive_documents"])
def test_rls_hides_own_rows_when_the_setting_names_another_department(
    pg_cluster: PostgresCluster, tenants_db: str, table: str
) -> None:
    url = tenant_dsn(pg_cluster, "hr", tenants_db)
    own = {"search_path": "hr_tenant", "app.department_id": "hr"}
    other = {"search_path": "hr_tenant", "app.department_id": "accounting"}

    assert sql(url, f"SELECT count(*) FROM {table}", settings=own)[0][0] == 1
    assert sql(url, f"SELECT count(*) FROM {table}", settings=other)[0][0] == 0
    assert sql(url, f"DELETE FROM {table} RETURNING 1", settings=other) == []
    assert sql(url, f"SELECT count(*) FROM {table}", settings=own)[0][0] == 1


def test_rls_cannot_label_a_row_for_another_department(
    pg_cluster: PostgresCluster, tenants_db: str
) -> None:
    url = tenant_dsn(pg_cluster, "hr", tenants_db)
    own = {"search_path": "hr_tenant", "app.department_id": "hr"}
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        sql(
            url,
            "INSERT INTO drive_documents (department_id, drive_file_id, title)"
            " VALUES ('accounting', 'planted', 'planted')",
            settings=own,
        )


def test_a_plain_login_defaults_to_its_own_schema_and_department(
    pg_cluster: PostgresCluster, tenants_db: str
) -> None:
    # What an n8n Postgres node gets when it connects as accounting_agent without settings.
    url = tenant_dsn(pg_cluster, "accounting", tenants_db)
    rows = sql(url, "SELECT drive_file_id FROM drive_documents")
    assert [r[0] for r in rows] == ["accounting-doc"]


def test_tenant_roles_have_no_special_attributes(
    pg_cluster: PostgresCluster, tenants_db: str
) -> None:
    rows = sql(
        pg_cluster.dsn(dbname=tenants_db),
        "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication"
        " FROM pg_roles WHERE rolname IN ('hr_agent', 'accounting_agent') ORDER BY 1",
    )
    assert [tuple(r) for r in rows] == [
        ("accounting_agent", False, False, False, False, False),
        ("hr_agent", False, False, False, False, False),
    ]


# --- tenant create / drop CLI --------------------------------------------------------------------
@pytest.mark.slow
def test_create_is_idempotent_and_a_rerun_only_changes_the_password(
    pg_cluster: PostgresCluster, pg_database: str, tmp_path: Path
) -> None:
    admin = {"ADMIN_DATABASE_URL": pg_cluster.dsn(dbname=pg_database)}
    first = write_password(tmp_path, "payroll", "first-secret-pw")
    result = run_cli(
        "aio_agent.tenant", "create", "payroll", "--password-file", str(first), env=admin
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = json.loads(result.stdout.splitlines()[-1])
    assert (line["event"], line["role_created"], line["schema_created"]) == (
        "tenant ready",
        True,
        True,
    )
    url = pg_cluster.dsn(user="payroll_agent", password="first-secret-pw", dbname=pg_database)
    sql(url, "CREATE TABLE payroll_tenant.kept (id int)")
    sql(url, "INSERT INTO payroll_tenant.kept VALUES (7)")

    second = write_password(tmp_path, "payroll", "second-secret-pw")
    again = run_cli(
        "aio_agent.tenant", "create", "payroll", "--password-file", str(second), env=admin
    )

    assert again.returncode == 0
    line = json.loads(again.stdout.splitlines()[-1])
    assert (line["role_created"], line["schema_created"]) == (False, False)
    for output in (result, again):
        assert "secret-pw" not in output.stdout + output.stderr
    with pytest.raises(asyncpg.InvalidPasswordError):
        sql(url, "SELECT 1")
    new_url = pg_cluster.dsn(user="payroll_agent", password="second-secret-pw", dbname=pg_database)
    assert sql(new_url, "SELECT id FROM payroll_tenant.kept")[0][0] == 7


@pytest.mark.slow
def test_a_createrole_admin_that_is_no_superuser_can_create_a_tenant(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """Managed PostgreSQL gives its admin CREATEROLE and a database of its own, never superuser."""
    superuser = pg_cluster.dsn()
    sql(superuser, "CREATE ROLE managed_admin LOGIN CREATEROLE PASSWORD 'managed-admin-pw'")
    dbname = pg_cluster.create_database()
    sql(superuser, f'ALTER DATABASE "{dbname}" OWNER TO managed_admin')
    admin = {
        "ADMIN_DATABASE_URL": pg_cluster.dsn(
            user="managed_admin", password="managed-admin-pw", dbname=dbname
        )
    }
    password = write_password(tmp_path, "legal", "legal-secret-pw")
    runs = [
        run_cli("aio_agent.tenant", "create", "legal", "--password-file", str(password), env=admin)
        for _ in range(2)  # the second run re-asserts everything: still allowed
    ]
    for result in runs:
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout.splitlines()[-1])["search_indexed"] is False
    assert "cannot mark the full-text match operator LEAKPROOF" in runs[0].stdout

    attributes = sql(
        superuser,
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication"
        " FROM pg_roles WHERE rolname = 'legal_agent'",
    )
    assert tuple(attributes[0]) == (False, False, False, False, False)
    url = pg_cluster.dsn(user="legal_agent", password="legal-secret-pw", dbname=dbname)
    migrated = migrate_cli(url, "legal")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    owner = sql(
        url, "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1", "legal_tenant"
    )
    assert owner[0][0] == "legal_agent"


def test_drop_without_confirmation_exits_64_and_keeps_the_data(
    pg_cluster: PostgresCluster, pg_database: str
) -> None:
    provision(pg_cluster, pg_database, "archive")
    admin = {"ADMIN_DATABASE_URL": pg_cluster.dsn(dbname=pg_database)}

    result = run_cli("aio_agent.tenant", "drop", "archive", env=admin)

    assert result.returncode == 64
    assert "--yes-drop-all-data" in result.stdout
    assert sql(admin["ADMIN_DATABASE_URL"], "SELECT to_regnamespace('archive_tenant') IS NOT NULL")[
        0
    ][0]


def test_drop_with_confirmation_removes_schema_and_role(
    pg_cluster: PostgresCluster, pg_database: str
) -> None:
    provision(pg_cluster, pg_database, "archive2")
    admin = {"ADMIN_DATABASE_URL": pg_cluster.dsn(dbname=pg_database)}

    result = run_cli("aio_agent.tenant", "drop", "archive2", "--yes-drop-all-data", env=admin)

    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout.splitlines()[-1])["role_dropped"] is True
    left = sql(
        admin["ADMIN_DATABASE_URL"],
        "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = 'archive2_agent'),"
        " (SELECT count(*) FROM pg_namespace WHERE nspname = 'archive2_tenant')",
    )
    assert tuple(left[0]) == (0, 0)


# --- department ids carrying SQL -----------------------------------------------------------------
@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port that records whether anyone connected (a database that must not be reached)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def was_contacted(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_bad_department_ids_are_refused_before_any_connection(
    listener: socket.socket,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    bad_id: str,
) -> None:
    url = f"postgresql://postgres:pw@127.0.0.1:{listener.getsockname()[1]}/aio"
    password = write_password(tmp_path, "x", "some-password")

    create = tenant.main(
        ["create", bad_id, "--password-file", str(password)], env={"ADMIN_DATABASE_URL": url}
    )
    drop = tenant.main(["drop", bad_id, "--yes-drop-all-data"], env={"ADMIN_DATABASE_URL": url})
    migrated = migrate.main(
        ["--database-url-env", "U", "--department", bad_id], env={"U": url, "MIGRATIONS_DIR": "/x"}
    )

    assert (create, drop, migrated) == (78, 78, 78)
    assert "^[a-z][a-z0-9_]{1,30}$" in capsys.readouterr().out
    assert not was_contacted(listener)


def test_a_bad_id_leaves_no_trace_in_a_real_cluster(
    pg_cluster: PostgresCluster, pg_database: str, tmp_path: Path
) -> None:
    admin = pg_cluster.dsn(dbname=pg_database)
    password = write_password(tmp_path, "x", "some-password")
    before = sql(admin, "SELECT count(*) FROM pg_roles")[0][0]

    result = run_cli(
        "aio_agent.tenant",
        "create",
        "x; CREATE ROLE planted",
        "--password-file",
        str(password),
        env={"ADMIN_DATABASE_URL": admin},
    )

    assert result.returncode == 78
    assert sql(admin, "SELECT count(*) FROM pg_roles")[0][0] == before
    assert sql(admin, "SELECT count(*) FROM pg_roles WHERE rolname LIKE '%planted%'")[0][0] == 0


# --- indexed full-text search under row-level security -------------------------------------------
LEAKPROOF_SQL = (
    "SELECT proleakproof FROM pg_proc"
    " WHERE oid = 'pg_catalog.ts_match_vq(tsvector, tsquery)'::regprocedure"
)


def test_create_marks_the_text_match_leakproof_in_its_database(
    pg_cluster: PostgresCluster, pg_database: str, tmp_path: Path
) -> None:
    admin = {"ADMIN_DATABASE_URL": pg_cluster.dsn(dbname=pg_database)}
    assert sql(admin["ADMIN_DATABASE_URL"], LEAKPROOF_SQL)[0][0] is False

    result = run_cli(
        "aio_agent.tenant",
        "create",
        "library",
        "--password-file",
        str(write_password(tmp_path, "library")),
        env=admin,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["search_indexed"] is True
    assert sql(admin["ADMIN_DATABASE_URL"], LEAKPROOF_SQL)[0][0] is True


def test_a_server_refusing_the_leakproof_mark_is_tolerated_and_nothing_else_rolls_back(
    pg_cluster: PostgresCluster, tenants_db: str
) -> None:
    # The tenant role stands in for a managed server's admin: not a superuser.
    async def run() -> tuple[bool, int]:
        conn = await connect_tenant(tenant_dsn(pg_cluster, "hr", tenants_db), "hr")
        try:
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE kept (id int)")
                marked = await tenant.mark_search_leakproof(conn, "hr")
                await conn.execute("INSERT INTO kept VALUES (1)")
                return marked, await conn.fetchval("SELECT count(*) FROM kept")
        finally:
            await conn.close()

    assert asyncio.run(run()) == (False, 1)

"""python -m aio_agent.migrate against a real PostgreSQL: fresh, re-run, changed file, races."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psycopg
import pytest

from aio_agent import migrate
from aio_agent.db import advisory_key
from aio_agent.migrate import LOCK_NAMESPACE, default_migrations_dir, load_migrations
from tests.pgcluster import PostgresCluster, free_port
from tests.support import PYTHON, process_env, render_config
from tests.tenant_support import log_lines, provision, run_cli, tenant_dsn

MIGRATIONS = load_migrations(default_migrations_dir({}))


def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def hr_db(pg_cluster: PostgresCluster, pg_database: str) -> str:
    """A fresh database with the HR tenant (role + empty schema), as tenant.py creates it."""
    provision(pg_cluster, pg_database, "hr")
    return pg_database


@pytest.fixture
def hr_url(pg_cluster: PostgresCluster, hr_db: str) -> str:
    return tenant_dsn(pg_cluster, "hr", hr_db)


@dataclass
class Run:
    returncode: int
    stdout: str


@pytest.fixture
def migrate_run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Run aio_agent.migrate.main in this process (fast); the CLI itself is run as a subprocess
    by the config-file and two-process tests."""

    def run(url: str, department_id: str, *args: str) -> Run:
        capsys.readouterr()
        code = migrate.main(
            ["--database-url-env", "TENANT_URL", "--department", department_id, *args],
            env={"TENANT_URL": url},
        )
        return Run(code, capsys.readouterr().out)

    return run


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir({}), target)
    return target


def test_fresh_database_gets_every_migration_from_the_rendered_config(
    tmp_path: Path, hr_url: str
) -> None:
    config, _ = render_config(tmp_path, POSTGRES_URL=hr_url)
    result = run_cli("aio_agent.migrate", env={"CONFIG_PATH": str(config)})

    assert result.returncode == 0, result.stdout + result.stderr
    lines = log_lines(result.stdout)
    applied = [line for line in lines if line["event"] == "migration applied"]
    assert [line["version"] for line in applied] == [m.version for m in MIGRATIONS]
    assert all(line["department_id"] == "hr" and line["duration_ms"] >= 0 for line in applied)
    summary = [line for line in lines if line["event"] == "migrations done"]
    assert len(summary) == 1 and summary[0]["applied"] == len(MIGRATIONS)
    assert "hr-test-password" not in result.stdout + result.stderr

    tables = fetch(
        hr_url,
        "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'hr_tenant' ORDER BY 1",
    )
    assert [(r["tablename"], r["tableowner"]) for r in tables] == [
        ("drive_documents", "hr_agent"),
        ("schema_migrations", "hr_agent"),
        ("session_context", "hr_agent"),
        ("tool_calls", "hr_agent"),
    ]
    recorded = fetch(hr_url, "SELECT version, checksum FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["checksum"]) for r in recorded] == [
        (m.version, m.checksum) for m in MIGRATIONS
    ]


def test_tenant_tables_have_forced_row_level_security_and_the_agent_indexes(
    migrate_run: Callable[..., Run], hr_url: str
) -> None:
    assert migrate_run(hr_url, "hr").returncode == 0
    flags = fetch(
        hr_url,
        "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
        "WHERE relnamespace = 'hr_tenant'::regnamespace AND relkind = 'r' "
        "AND relname <> 'schema_migrations' ORDER BY 1",
    )
    assert [tuple(r.values()) for r in flags] == [
        ("drive_documents", True, True),
        ("session_context", True, True),
        ("tool_calls", True, True),
    ]
    indexes = {r["indexdef"] for r in fetch(hr_url, "SELECT indexdef FROM pg_indexes")}
    assert any("tool_calls USING btree (session_id, created_at DESC)" in i for i in indexes)
    assert any("drive_documents USING gin (search)" in i for i in indexes)
    assert any("session_context USING btree (department_id, caller_id)" in i for i in indexes)


def test_second_run_changes_nothing(migrate_run: Callable[..., Run], hr_url: str) -> None:
    assert migrate_run(hr_url, "hr").returncode == 0
    before = fetch(hr_url, "SELECT version, applied_at FROM schema_migrations ORDER BY 1")

    again = migrate_run(hr_url, "hr")

    assert again.returncode == 0, again.stdout + again.stderr
    events = [line["event"] for line in log_lines(again.stdout)]
    assert events == ["migrations done"]
    assert log_lines(again.stdout)[0]["applied"] == 0
    assert fetch(hr_url, "SELECT version, applied_at FROM schema_migrations ORDER BY 1") == before


def test_changed_applied_file_is_refused_with_exit_65(
    migrate_run: Callable[..., Run], hr_url: str, migrations_copy: Path
) -> None:
    assert migrate_run(hr_url, "hr", "--migrations-dir", str(migrations_copy)).returncode == 0
    changed = migrations_copy / "0002_tool_calls.sql"
    changed.write_text(changed.read_text() + "\nCREATE INDEX sneaky ON tool_calls (tool);\n")
    (migrations_copy / "9001_later.sql").write_text("CREATE TABLE later (id int);\n")
    original = next(m for m in MIGRATIONS if m.version == "0002").checksum
    edited = load_migrations(migrations_copy)[1].checksum

    result = migrate_run(hr_url, "hr", "--migrations-dir", str(migrations_copy))

    assert result.returncode == 65
    message = log_lines(result.stdout)[-1]["event"]
    assert "0002_tool_calls.sql" in message
    assert original in message and edited in message
    assert "add a new migration" in message
    assert fetch(hr_url, "SELECT to_regclass('later') IS NULL AS absent")[0]["absent"]


def test_new_file_is_applied_after_the_existing_ones(
    migrate_run: Callable[..., Run], hr_url: str, migrations_copy: Path
) -> None:
    assert migrate_run(hr_url, "hr", "--migrations-dir", str(migrations_copy)).returncode == 0
    (migrations_copy / "9001_notes.sql").write_text("CREATE TABLE notes (id int);\n")

    result = migrate_run(hr_url, "hr", "--migrations-dir", str(migrations_copy))

    assert result.returncode == 0
    applied = [line["version"] for line in log_lines(result.stdout) if "version" in line]
    assert applied == ["9001"]


def test_failing_migration_is_rolled_back_and_exits_70(
    migrate_run: Callable[..., Run], hr_url: str, migrations_copy: Path
) -> None:
    (migrations_copy / "9001_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n"
    )

    result = migrate_run(hr_url, "hr", "--migrations-dir", str(migrations_copy))

    assert result.returncode == 70
    assert "9001_broken.sql" in log_lines(result.stdout)[-1]["event"]
    versions = [r["version"] for r in fetch(hr_url, "SELECT version FROM schema_migrations")]
    assert "9001" not in versions and len(versions) == len(MIGRATIONS)
    assert fetch(hr_url, "SELECT to_regclass('half_done') IS NULL AS absent")[0]["absent"]


def test_dry_run_lists_pending_files_and_changes_nothing(
    migrate_run: Callable[..., Run], hr_url: str
) -> None:
    result = migrate_run(hr_url, "hr", "--dry-run")

    assert result.returncode == 0
    assert [line.split()[2] for line in result.stdout.splitlines() if "would apply" in line] == [
        m.filename for m in MIGRATIONS
    ]
    assert fetch(hr_url, "SELECT to_regclass('schema_migrations') IS NULL AS absent")[0]["absent"]


def test_status_prints_applied_and_pending(
    migrate_run: Callable[..., Run], hr_url: str, migrations_copy: Path
) -> None:
    assert migrate_run(hr_url, "hr", "--migrations-dir", str(migrations_copy)).returncode == 0
    (migrations_copy / "9001_notes.sql").write_text("CREATE TABLE notes (id int);\n")

    result = migrate_run(hr_url, "hr", "--migrations-dir", str(migrations_copy), "status")

    assert result.returncode == 0
    rows = [line.split()[:3] for line in result.stdout.splitlines()[1:]]
    assert rows == [["applied", m.version, m.name] for m in MIGRATIONS] + [
        ["pending", "9001", "notes"]
    ]


def test_missing_tenant_schema_exits_78_and_says_how_to_create_it(
    migrate_run: Callable[..., Run], pg_cluster: PostgresCluster, hr_db: str
) -> None:
    # hr_agent exists (hr_db), but this other database has no hr_tenant schema.
    other = pg_cluster.create_database()
    result = migrate_run(tenant_dsn(pg_cluster, "hr", other), "hr")

    assert result.returncode == 78
    assert "python -m aio_agent.tenant create hr" in log_lines(result.stdout)[-1]["event"]


def test_unreachable_database_exits_69(migrate_run: Callable[..., Run]) -> None:
    url = f"postgresql://hr_agent:pw@127.0.0.1:{free_port()}/aio"
    result = migrate_run(url, "hr")

    assert result.returncode == 69
    message = log_lines(result.stdout)[-1]["event"]
    assert "127.0.0.1" in message and ":pw@" not in result.stdout


def test_wrong_password_exits_78_without_printing_it(
    migrate_run: Callable[..., Run], pg_cluster: PostgresCluster, hr_db: str
) -> None:
    url = pg_cluster.dsn(user="hr_agent", password="wrong-secret-value", dbname=hr_db)
    result = migrate_run(url, "hr")

    assert result.returncode == 78
    assert "wrong-secret-value" not in result.stdout


def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    result = run_cli("aio_agent.migrate", env={"CONFIG_PATH": str(tmp_path / "absent.yaml")})

    assert result.returncode == 78
    assert "aio_agent.config render" in log_lines(result.stdout)[-1]["event"]


def popen(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def start_queued_on_lock(
    admin_dsn: str, key: int, cmd: list[str], env: dict[str, str]
) -> list[subprocess.Popen]:
    """Hold the schema's advisory lock, start two migrators, wait until both queue on it, then
    release it: both race for the same file at the same instant."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        procs = [popen(cmd, env) for _ in range(2)]
        waiting, deadline = 0, time.monotonic() + 15
        while waiting < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()
            waiting = row[0] if row else 0
        assert waiting == 2, "both migrators should queue on the schema lock"
    return procs


@pytest.mark.slow
def test_two_migrators_started_together_apply_each_file_exactly_once(
    pg_cluster: PostgresCluster,
) -> None:
    """20 rounds, each on a fresh database. Odd rounds: the test holds the schema's advisory
    lock until both processes queue on it, so both race for the same file when it is released;
    even rounds: both simply start at once."""
    key = advisory_key(LOCK_NAMESPACE, "hr_tenant")

    for round_no in range(20):
        dbname = pg_cluster.create_database()
        provision(pg_cluster, dbname, "hr")
        env = process_env({"TENANT_URL": tenant_dsn(pg_cluster, "hr", dbname)})
        cmd = [PYTHON, "-m", "aio_agent.migrate", "--database-url-env", "TENANT_URL",
               "--department", "hr"]  # fmt: skip
        if round_no % 2:
            procs = start_queued_on_lock(pg_cluster.dsn(dbname=dbname), key, cmd, env)
        else:
            procs = [popen(cmd, env) for _ in range(2)]
        outputs = [p.communicate(timeout=30)[0] for p in procs]

        assert [p.returncode for p in procs] == [0, 0], outputs
        applied = [
            line["version"]
            for out in outputs
            for line in log_lines(out)
            if line["event"] == "migration applied"
        ]
        assert sorted(applied) == [m.version for m in MIGRATIONS], f"round {round_no}"
        rows = fetch(
            tenant_dsn(pg_cluster, "hr", dbname),
            "SELECT version, count(*) AS n FROM schema_migrations GROUP BY 1 ORDER BY 1",
        )
        assert [(r["version"], r["n"]) for r in rows] == [(m.version, 1) for m in MIGRATIONS]
        pg_cluster.psql(f'DROP DATABASE "{dbname}"')  # keep the shared cluster small

"""Apply the tenant migrations in `migrations/` to one department's schema.

    python -m aio_agent.migrate [--config PATH] [--dry-run] [status]
    python -m aio_agent.migrate --database-url-env NAME --department ID [--dry-run] [status]

Without options it reads the rendered config ($CONFIG_PATH, default /app/config/config.yaml):
database.url and department.id. Operators may instead give `--database-url URL` (or, to keep the
password off the command line, `--database-url-env NAME`) and `--department ID`.

Migration files (`NNNN_name.sql`) are schema-agnostic: they use unqualified names, and the runner
connects with search_path = `<id>_tenant` and app.department_id = `<id>`, as the tenant role that
owns the schema (no superuser needed). Each pending file runs in its own transaction under
`pg_advisory_xact_lock` keyed by the schema; after taking the lock the runner re-reads
schema_migrations, so when two containers start together one applies a file and the other skips it.
A file whose checksum differs from the one recorded when it was applied is refused (exit 65).

Exit codes: 0 ok, 64 usage, 65 an applied file changed, 69 database unreachable,
70 internal error (including a failing migration), 78 bad configuration or department id.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from aio_agent import logs
from aio_agent.db import (
    EX_CONFIG,
    EX_UNAVAILABLE,
    advisory_key,
    classify_connect_error,
    connect_tenant,
    describe,
    quote_ident,
    where,
)
from aio_agent.exitcodes import EX_DATAERR as EX_CHANGED
from aio_agent.exitcodes import EX_OK, EX_SOFTWARE, EX_USAGE
from aio_agent.naming import (
    InvalidDepartmentIdError,
    role_name,
    schema_name,
    validate_department_id,
)
from aio_agent.rendered import DEFAULT_CONFIG_PATH, load_rendered

MIGRATION_FILE_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
LOCK_NAMESPACE = "aio_agent.migrate"

log = logs.get_logger("aio_agent.migrate")


@dataclass(frozen=True)
class Migration:
    """One file of migrations/: version `NNNN`, name, SQL text and sha256 of its bytes."""

    version: str
    name: str
    path: Path
    sql: str
    checksum: str

    @property
    def filename(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class AppliedRow:
    version: str
    name: str
    checksum: str
    applied_at: Any


@dataclass
class Outcome:
    """What one run did: files it applied (with ms), files it found applied, files left."""

    applied: list[tuple[Migration, float]] = field(default_factory=list)
    already_applied: int = 0
    applied_by_other: int = 0
    pending: list[Migration] = field(default_factory=list)


class MigrateError(Exception):
    """A refusal or failure with the exit code it maps to and structured log fields."""

    def __init__(self, code: int, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields


def default_migrations_dir(env: Mapping[str, str] | None = None) -> Path:
    """$MIGRATIONS_DIR, else the `migrations/` folder next to the package (/app/migrations)."""
    environ = os.environ if env is None else env
    override = environ.get("MIGRATIONS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "migrations"


def load_migrations(directory: Path) -> list[Migration]:
    """Every `NNNN_name.sql` of `directory` in version order; bad names or duplicates refused."""
    if not directory.is_dir():
        raise MigrateError(EX_SOFTWARE, "migrations directory not found", directory=str(directory))
    problems: list[str] = []
    seen: dict[str, str] = {}
    migrations: list[Migration] = []
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = MIGRATION_FILE_RE.match(path.name)
        if not match:
            problems.append(f"{path.name}: name must look like 0001_lowercase_name.sql")
            continue
        version = match["version"]
        if version in seen:
            problems.append(f"{path.name}: version {version} is also used by {seen[version]}")
            continue
        seen[version] = path.name
        data = path.read_bytes()
        migrations.append(
            Migration(
                version=version,
                name=match["name"],
                path=path,
                sql=data.decode("utf-8"),
                checksum=hashlib.sha256(data).hexdigest(),
            )
        )
    if problems:
        raise MigrateError(
            EX_SOFTWARE, "invalid migration files", directory=str(directory), problems=problems
        )
    return sorted(migrations, key=lambda m: m.version)


async def read_applied(conn: asyncpg.Connection) -> dict[str, AppliedRow]:
    """Rows of schema_migrations (empty before 0001 created the table)."""
    # A catalog scan under this statement's snapshot, not to_regclass(): the name lookup may use
    # a catalog snapshot older than the lock we just waited for, and miss a table created by the
    # container that held it.
    exists = await conn.fetchval(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_class WHERE relname = 'schema_migrations'"
        " AND relnamespace = current_schema()::regnamespace)"
    )
    if not exists:
        return {}
    rows = await conn.fetch(
        "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
    )
    return {r["version"]: AppliedRow(**dict(r.items())) for r in rows}


def check_unchanged(applied: Mapping[str, AppliedRow], migrations: Iterable[Migration]) -> None:
    """Refuse (exit 65) when a file that was applied no longer has its recorded checksum."""
    for migration in migrations:
        row = applied.get(migration.version)
        if row is not None and row.checksum != migration.checksum:
            raise MigrateError(
                EX_CHANGED,
                f"migration {migration.filename} was changed after it was applied: "
                f"applied checksum {row.checksum}, file checksum {migration.checksum}. "
                "Restore the file and add a new migration for the change instead.",
                file=migration.filename,
                applied_checksum=row.checksum,
                file_checksum=migration.checksum,
            )


async def prepare(conn: asyncpg.Connection, department_id: str) -> str:
    """Check that the connection works as the tenant role inside its schema; return the schema.

    An operator connecting as an admin gets `SET ROLE <id>_agent`, so tables are still owned by
    the tenant role.
    """
    schema = schema_name(department_id)
    role = role_name(department_id)
    if await conn.fetchval("SELECT current_user") != role:
        try:
            await conn.execute(f"SET ROLE {quote_ident(role)}")
        except asyncpg.PostgresError as exc:
            raise MigrateError(
                EX_CONFIG,
                f"connect as {role} (the role that owns {schema}): "
                f"this login cannot become it ({describe(exc)})",
            ) from exc
    row = await conn.fetchrow(
        "SELECT pg_get_userbyid(nspowner) AS owner, has_schema_privilege(oid, 'CREATE') AS can"
        " FROM pg_namespace WHERE nspname = $1",
        schema,
    )
    if row is None:
        raise MigrateError(
            EX_CONFIG,
            f"schema {schema} does not exist: an operator creates it with "
            f"`python -m aio_agent.tenant create {department_id} --password-file FILE`",
        )
    if not row["can"]:
        raise MigrateError(
            EX_CONFIG, f"role {role} may not create objects in schema {schema}", owner=row["owner"]
        )
    current = await conn.fetchval("SELECT current_schema()")
    if current != schema:
        raise MigrateError(
            EX_CONFIG, f"search_path must start with {schema}, the connection has {current}"
        )
    return schema


async def migrate(
    conn: asyncpg.Connection,
    department_id: str,
    migrations: Sequence[Migration],
    *,
    dry_run: bool = False,
) -> Outcome:
    """Apply pending migrations (or, with dry_run, only report them)."""
    schema = await prepare(conn, department_id)
    applied = await read_applied(conn)
    check_unchanged(applied, migrations)
    outcome = Outcome(
        already_applied=sum(1 for m in migrations if m.version in applied),
        pending=[m for m in migrations if m.version not in applied],
    )
    unknown = sorted(set(applied) - {m.version for m in migrations})
    if unknown:
        log.warning("database has migrations this image does not know", versions=unknown)
    if dry_run:
        return outcome
    key = advisory_key(LOCK_NAMESPACE, schema)
    for migration in list(outcome.pending):
        started = time.perf_counter()
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", key)
            current = await read_applied(conn)  # another container may have applied it
            check_unchanged(current, migrations)
            if migration.version in current:
                outcome.applied_by_other += 1
                outcome.pending.remove(migration)
                continue
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as exc:
                raise MigrateError(
                    EX_SOFTWARE,
                    f"migration {migration.filename} failed: {describe(exc)}",
                    file=migration.filename,
                ) from exc
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        outcome.pending.remove(migration)
        outcome.applied.append((migration, duration_ms))
        log.info(
            "migration applied",
            version=migration.version,
            name=migration.name,
            schema=schema,
            duration_ms=duration_ms,
        )
    return outcome


async def status_lines(conn: asyncpg.Connection, migrations: Sequence[Migration]) -> list[str]:
    """A human table of applied and pending migrations."""
    applied = await read_applied(conn)
    files = {m.version: m for m in migrations}
    lines = []
    for version in sorted(set(applied) | set(files)):
        row = applied.get(version)
        file = files.get(version)
        if row and file and row.checksum != file.checksum:
            state, when = "CHANGED", row.applied_at.isoformat()
        elif row:
            state, when = "applied", row.applied_at.isoformat()
        else:
            state, when = "pending", "-"
        name = file.name if file else (row.name if row else "?")
        lines.append(f"{state:<8} {version}  {name:<28} {when}")
    return lines


# --- command line --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    url: str
    department_id: str
    log_level: str = "INFO"
    log_format: str = "json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aio_agent.migrate",
        description="Apply pending tenant migrations to the department's schema.",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("apply", "status"),
        default="apply",
        help="apply (default) or status: list applied and pending migrations",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would run, change nothing"
    )
    parser.add_argument("--config", help="rendered config file (default $CONFIG_PATH)")
    url = parser.add_mutually_exclusive_group()
    url.add_argument("--database-url", help="tenant role URL (instead of the config file)")
    url.add_argument("--database-url-env", metavar="NAME", help="read the URL from variable NAME")
    parser.add_argument("--department", help="department id (with --database-url[-env])")
    parser.add_argument("--migrations-dir", help="default $MIGRATIONS_DIR or ./migrations")
    return parser


def resolve_target(args: argparse.Namespace, env: Mapping[str, str]) -> Target:
    """Database URL and department from the options or the rendered config file."""
    if args.database_url or args.database_url_env:
        if args.department is None:
            raise MigrateError(EX_USAGE, "--department is required with --database-url[-env]")
        url = args.database_url or env.get(args.database_url_env, "")
        if not url:
            raise MigrateError(EX_CONFIG, f"variable {args.database_url_env} is empty or unset")
        return Target(url=url, department_id=_valid_id(args.department, "--department"))
    if args.department is not None:
        raise MigrateError(EX_USAGE, "--department needs --database-url or --database-url-env")
    path = args.config or env.get("CONFIG_PATH") or DEFAULT_CONFIG_PATH

    try:
        document = load_rendered(path)
    except FileNotFoundError as exc:
        raise MigrateError(
            EX_CONFIG, f"config file {path} not found: run `python -m aio_agent.config render`"
        ) from exc
    except (OSError, ValueError) as exc:
        raise MigrateError(EX_CONFIG, f"config file {path} is unreadable: {exc}") from exc
    department = document.get("department") or {}
    database = document.get("database") or {}
    runtime = document.get("runtime") or {}
    department_id = _valid_id(department.get("id"), f"{path}: department.id")
    if not database.get("url"):
        raise MigrateError(EX_CONFIG, f"{path}: database.url is empty (set POSTGRES_URL)")
    if database.get("schema") not in (None, schema_name(department_id)):
        raise MigrateError(
            EX_CONFIG,
            f"{path}: database.schema is {database.get('schema')}, "
            f"expected {schema_name(department_id)}",
        )
    return Target(
        url=str(database["url"]),
        department_id=department_id,
        log_level=str(runtime.get("log_level") or "INFO"),
        log_format=str(runtime.get("log_format") or "json"),
    )


def _valid_id(value: Any, source: str) -> str:
    try:
        return validate_department_id(value)
    except InvalidDepartmentIdError as exc:
        raise MigrateError(EX_CONFIG, f"{source}: {exc}") from exc


async def _run(args: argparse.Namespace, target: Target, migrations: list[Migration]) -> int:
    try:
        conn = await connect_tenant(target.url, target.department_id)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        code = classify_connect_error(exc) or EX_UNAVAILABLE
        raise MigrateError(
            code,
            f"cannot connect to the database at {where(target.url)}: {describe(exc)}",
        ) from exc
    except ValueError as exc:
        raise MigrateError(EX_CONFIG, f"database URL is invalid: {exc}") from exc
    try:
        if args.command == "status":
            await prepare(conn, target.department_id)
            lines = await status_lines(conn, migrations)
            print(f"schema {schema_name(target.department_id)} at {where(target.url)}")
            print("\n".join(lines) if lines else "no migrations")
            return EX_OK
        started = time.perf_counter()
        outcome = await migrate(conn, target.department_id, migrations, dry_run=args.dry_run)
        if args.dry_run:
            for m in outcome.pending:
                print(f"would apply {m.filename} (sha256 {m.checksum})")
            if not outcome.pending:
                print("nothing to apply")
            return EX_OK
        log.info(
            "migrations done",
            schema=schema_name(target.department_id),
            applied=len(outcome.applied),
            applied_by_other=outcome.applied_by_other,
            already_applied=outcome.already_applied,
            total=len(migrations),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return EX_OK
    except (OSError, asyncpg.ConnectionDoesNotExistError) as exc:
        raise MigrateError(
            EX_UNAVAILABLE, f"lost the database connection: {describe(exc)}"
        ) from exc
    finally:
        await conn.close(timeout=5)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    environ = os.environ if env is None else env
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    logs.configure("INFO", "json")
    department_id = None
    try:
        target = resolve_target(args, environ)
        department_id = target.department_id
        logs.configure(target.log_level, target.log_format, department_id=department_id)
        directory = (
            Path(args.migrations_dir) if args.migrations_dir else default_migrations_dir(environ)
        )
        migrations = load_migrations(directory)
        return asyncio.run(_run(args, target, migrations))
    except MigrateError as exc:
        log.error(exc.message, **exc.fields)
        return exc.code
    except Exception:
        log.exception("migration runner failed", department_id=department_id)
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())

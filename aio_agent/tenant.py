"""Add or remove a department's database tenant: login role `<id>_agent`, schema `<id>_tenant`.

    python -m aio_agent.tenant create <id> --password-file FILE [--admin-url-env ADMIN_DATABASE_URL]
    python -m aio_agent.tenant drop <id> --yes-drop-all-data [--admin-url-env ADMIN_DATABASE_URL]

Run with an admin URL (a superuser, or a role with CREATEROLE and CREATE on the database) in the
variable named by --admin-url-env, so no password sits on a command line. `create` is idempotent:
a re-run sets the password again and re-asserts the same role attributes, schema and grants.
A CREATEROLE admin that is no superuser (managed PostgreSQL) works too: it joins the new role
(CREATE SCHEMA ... AUTHORIZATION needs that) and cannot store the role's default
app.department_id, which is only a warning: the agent sets it on every connection.
The role owns its schema and nothing else; the schema grants nothing to PUBLIC, and
`REVOKE ALL ON SCHEMA public FROM PUBLIC` keeps every tenant out of `public`. Tables come from
`python -m aio_agent.migrate`, run as the tenant role.

Full-text search through the indexes: `create` also marks `pg_catalog.ts_match_vq(tsvector,
tsquery)` (the `@@` operator) LEAKPROOF in the database it runs against. Row-level security is
FORCEd on every tenant table, and PostgreSQL evaluates a condition the policy does not vouch for
(a non-leakproof function) only after the policy's condition: `search @@ query` then cannot be an
index condition, and search_documents reads every document's vector (~100 ms at 10,000
documents, against a 20 ms budget; see aio_agent/documents.py). Why the marking is safe:
ts_match_vq returns only a boolean and raises no error that depends on the row's values (only
stack-depth or out-of-memory errors), so evaluating it before the policy tells a caller nothing
about rows the policy hides. The policy stays ENABLEd and FORCEd; the tenant role stays an
ordinary role. Notes for operators:
- It needs a superuser. A managed server that refuses it (permission denied) gets a warning,
  `create` still succeeds, and search still works, as a sequential scan (slower).
- The mark lives in the database's catalog (pg_proc, per database), which pg_dump and pg_upgrade
  do not carry over: re-run `create` (idempotent) after a restore or a major upgrade.

The password is sent as a SCRAM-SHA-256 verifier computed here (like psql's \\password), so the
server never sees, and never logs, the clear text; this tool never prints it either.

Exit codes: 0 ok, 64 usage (e.g. drop without --yes-drop-all-data), 69 database unreachable,
70 internal error, 78 invalid department id, password file or admin URL.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from aio_agent import logs
from aio_agent.db import (
    EX_CONFIG,
    EX_UNAVAILABLE,
    classify_connect_error,
    describe,
    quote_ident,
    quote_literal,
    where,
)
from aio_agent.exitcodes import EX_OK, EX_SOFTWARE, EX_USAGE
from aio_agent.naming import (
    RLS_SETTING,
    InvalidDepartmentIdError,
    role_name,
    schema_name,
    validate_department_id,
)

# Run by the superuser bootstrap (create_tenant and the generated tests/init-db.sql): lets the
# planner use the GIN indexes of drive_documents under FORCEd row-level security (see above).
SEARCH_LEAKPROOF_STATEMENTS = (
    "ALTER FUNCTION pg_catalog.ts_match_vq(tsvector, tsquery) LEAKPROOF",
)

DEFAULT_ADMIN_URL_ENV = "ADMIN_DATABASE_URL"
SCRAM_ITERATIONS = 4096

log = logs.get_logger("aio_agent.tenant")


class TenantError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def scram_verifier(password: str, *, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / 7677).

    Non-ASCII passwords are NFKC-normalised, the core of SASLprep that clients apply too.
    """
    text = password if password.isascii() else unicodedata.normalize("NFKC", password)
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", text.encode("utf-8"), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def provision_statements(
    department_id: str, password_sql: str, *, rls_default: bool = True
) -> list[str]:
    """Statements that create (or re-assert) the role, its schema and the revokes.

    `password_sql` is an already quoted SQL literal (a SCRAM verifier, or a clear-text test value
    in the generated tests/init-db.sql). Shared by `create` and the init-db.sql generator.
    `rls_default=False` leaves out the role's default RLS setting (a superuser-only statement that
    `create` runs apart, tolerating a refusal).
    """
    department_id = validate_department_id(department_id)
    role, schema = role_name(department_id), schema_name(department_id)
    qrole, qschema = quote_ident(role), quote_ident(schema)
    lrole = quote_literal(role)
    return [
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {lrole}) "
        f"THEN CREATE ROLE {qrole} LOGIN; END IF; END $$",
        # Only a superuser may even name SUPERUSER, REPLICATION or BYPASSRLS in ALTER ROLE, so a
        # managed server's CREATEROLE admin re-asserts them only where a role has one (and is
        # then refused, rightly). CREATE ROLE gives none of them.
        "DO $$ BEGIN "
        f"IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {lrole} "
        "AND (rolsuper OR rolreplication OR rolbypassrls)) "
        f"THEN ALTER ROLE {qrole} NOSUPERUSER NOREPLICATION NOBYPASSRLS; END IF; END $$",
        f"ALTER ROLE {qrole} WITH LOGIN NOCREATEDB NOCREATEROLE PASSWORD {password_sql}",
        # CREATE SCHEMA ... AUTHORIZATION needs a superuser or membership of the role (PostgreSQL
        # 16: the right to SET ROLE to it); a CREATEROLE admin grants itself that membership.
        "DO $$ BEGIN "  # noqa: S608 - the role name is validated and quoted
        "IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) "
        f"THEN EXECUTE format('GRANT %I TO %I', {lrole}, current_user); END IF; END $$",
        f"ALTER ROLE {qrole} SET search_path = {qschema}",
        f"CREATE SCHEMA IF NOT EXISTS {qschema} AUTHORIZATION {qrole}",
        f"REVOKE ALL ON SCHEMA {qschema} FROM PUBLIC",
        "REVOKE ALL ON SCHEMA public FROM PUBLIC",
        *([rls_default_statement(department_id)] if rls_default else []),
    ]


def rls_default_statement(department_id: str) -> str:
    """The role's default RLS setting, so that a plain login (psql) sees its own rows.

    The agent sets it on every connection itself (aio_agent.db.connect_tenant). PostgreSQL 15+
    lets only a superuser store a default for a custom setting such as app.department_id.
    """
    department_id = validate_department_id(department_id)
    qrole = quote_ident(role_name(department_id))
    return f"ALTER ROLE {qrole} SET {RLS_SETTING} = {quote_literal(department_id)}"


def tenant_session_sql(department_id: str) -> list[str]:
    """Inside a transaction opened by a superuser: act as the tenant role, in its schema."""
    department_id = validate_department_id(department_id)
    return [
        f"SET LOCAL ROLE {quote_ident(role_name(department_id))}",
        f"SET LOCAL search_path = {quote_ident(schema_name(department_id))}",
        f"SET LOCAL {RLS_SETTING} = {quote_literal(department_id)}",
    ]


@dataclass(frozen=True)
class CreateResult:
    role: str
    schema: str
    role_created: bool
    schema_created: bool
    search_indexed: bool  # ts_match_vq is LEAKPROOF: searches use the GIN indexes


async def create_tenant(
    conn: asyncpg.Connection, department_id: str, password: str
) -> CreateResult:
    """Create or re-assert the tenant of `department_id` over an admin connection."""
    department_id = validate_department_id(department_id)
    if not password:
        raise TenantError(EX_CONFIG, "the password must not be empty")
    role, schema = role_name(department_id), schema_name(department_id)
    async with conn.transaction():
        role_existed = await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", role)
        schema_owner = await conn.fetchval(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1", schema
        )
        if schema_owner not in (None, role):
            raise TenantError(
                EX_CONFIG, f"schema {schema} exists but is owned by {schema_owner}, not {role}"
            )
        for statement in provision_statements(
            department_id, quote_literal(scram_verifier(password)), rls_default=False
        ):
            await conn.execute(statement)
        await _tolerate_refusal(
            conn,
            [rls_default_statement(department_id)],
            "cannot store the role's default app.department_id (needs a superuser): the agent "
            "sets it on every connection; a plain psql login must SET it itself to see rows",
            department_id,
        )
        search_indexed = await mark_search_leakproof(conn, department_id)
    return CreateResult(
        role=role,
        schema=schema,
        role_created=not role_existed,
        schema_created=schema_owner is None,
        search_indexed=search_indexed,
    )


async def mark_search_leakproof(conn: asyncpg.Connection, department_id: str) -> bool:
    """Mark the full-text match LEAKPROOF; False (and a warning) where the server refuses.

    Runs in a savepoint when called inside a transaction, so a refusal rolls back nothing else.
    """
    return await _tolerate_refusal(
        conn,
        SEARCH_LEAKPROOF_STATEMENTS,
        "cannot mark the full-text match operator LEAKPROOF (needs a superuser): "
        "search_documents works but scans every document instead of using the index",
        department_id,
    )


async def _tolerate_refusal(
    conn: asyncpg.Connection, statements: Iterable[str], warning: str, department_id: str
) -> bool:
    """Run `statements` in a savepoint; False (and `warning`) where the server refuses them."""
    try:
        async with conn.transaction():
            for statement in statements:
                await conn.execute(statement)
    except asyncpg.InsufficientPrivilegeError as exc:
        log.warning(warning, department_id=department_id, reason=describe(exc))
        return False
    return True


async def drop_tenant(conn: asyncpg.Connection, department_id: str) -> dict[str, Any]:
    """Drop the schema (with every table and row) and the role, in this database.

    A role that still owns objects in another database of the server is kept (and said so):
    run the command against that database too.
    """
    department_id = validate_department_id(department_id)
    role, schema = role_name(department_id), schema_name(department_id)
    result: dict[str, Any] = {"schema_dropped": False, "role_dropped": False}
    async with conn.transaction():
        result["schema_dropped"] = bool(
            await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema)
        )
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        if await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", role):
            await conn.execute(f"DROP OWNED BY {quote_ident(role)}")
            try:
                async with conn.transaction():
                    await conn.execute(f"DROP ROLE {quote_ident(role)}")
                result["role_dropped"] = True
            except asyncpg.DependentObjectsStillExistError as exc:
                result["role_kept_because"] = (
                    f"{role} still owns objects in another database of this server; "
                    f"run this command against that database too ({describe(exc)})"
                )
    return result


# --- command line --------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aio_agent.tenant",
        description="Create or drop a department's database role and schema.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser(
        "create", help="create or update role <id>_agent and schema <id>_tenant"
    )
    create.add_argument("department_id")
    create.add_argument("--password-file", required=True, help="file holding the role's password")
    drop = sub.add_parser("drop", help="drop schema <id>_tenant (all its data) and role <id>_agent")
    drop.add_argument("department_id")
    drop.add_argument("--yes-drop-all-data", action="store_true", help="confirm the drop")
    for command in (create, drop):
        command.add_argument(
            "--admin-url-env",
            default=DEFAULT_ADMIN_URL_ENV,
            metavar="NAME",
            help=f"variable holding the admin database URL (default {DEFAULT_ADMIN_URL_ENV})",
        )
    return parser


def _read_password(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TenantError(
            EX_CONFIG, f"--password-file {path}: cannot read it ({type(exc).__name__})"
        ) from exc
    password = text.rstrip("\r\n")
    if not password:
        raise TenantError(EX_CONFIG, f"--password-file {path}: the file is empty")
    return password


async def _with_admin(url: str, action: Any) -> Any:
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        code = classify_connect_error(exc) or EX_UNAVAILABLE
        raise TenantError(
            code, f"cannot connect to the admin database at {where(url)}: {describe(exc)}"
        ) from exc
    except ValueError as exc:
        raise TenantError(EX_CONFIG, f"admin database URL is invalid: {exc}") from exc
    try:
        return await action(conn)
    except asyncpg.PostgresError as exc:
        raise TenantError(EX_SOFTWARE, f"the database refused: {describe(exc)}") from exc
    finally:
        await conn.close(timeout=5)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    environ = os.environ if env is None else env
    logs.configure(environ.get("LOG_LEVEL", "INFO"), environ.get("LOG_FORMAT", "json"))
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    try:
        # Validate everything before any connection is opened: no SQL runs for a bad id.
        try:
            department_id = validate_department_id(args.department_id)
        except InvalidDepartmentIdError as exc:
            raise TenantError(EX_CONFIG, f"department id {args.department_id!r}: {exc}") from exc
        if args.command == "drop" and not args.yes_drop_all_data:
            raise TenantError(
                EX_USAGE,
                f"drop deletes schema {schema_name(department_id)} with all its data and role "
                f"{role_name(department_id)}; add --yes-drop-all-data to confirm",
            )
        password = _read_password(args.password_file) if args.command == "create" else ""
        url = environ.get(args.admin_url_env, "")
        if not url:
            raise TenantError(
                EX_CONFIG,
                f"variable {args.admin_url_env} is empty or unset: set it to an admin database "
                "URL (a superuser, or a role with CREATEROLE and CREATE on the database)",
            )
        if args.command == "create":
            result = asyncio.run(
                _with_admin(url, lambda conn: create_tenant(conn, department_id, password))
            )
            log.info(
                "tenant ready",
                department_id=department_id,
                role=result.role,
                schema=result.schema,
                role_created=result.role_created,
                schema_created=result.schema_created,
                search_indexed=result.search_indexed,
                database=where(url),
            )
        else:
            dropped = asyncio.run(_with_admin(url, lambda conn: drop_tenant(conn, department_id)))
            log.info("tenant dropped", department_id=department_id, database=where(url), **dropped)
        return EX_OK
    except TenantError as exc:
        log.error(exc.message)
        return exc.code
    except Exception:
        log.exception("tenant command failed")
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())

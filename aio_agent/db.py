"""Small PostgreSQL helpers shared by the migrator, the tenant tool and the agent (asyncpg only).

- `quote_ident` / `quote_literal`: quoting for the few statements that cannot take bind
  parameters (CREATE ROLE, CREATE SCHEMA, ...). They are only ever applied to values that were
  validated first (department ids through `naming.validate_department_id`).
- `connect_tenant`: a connection carrying `naming.tenant_server_settings(id)` (search_path and
  the row-level-security setting), as every tenant connection must.
- `classify_connect_error`: maps a failed connect to the documented exit codes (69 unreachable,
  78 bad configuration such as a wrong password or a missing database).
- `where`: `host:port/dbname` of a URL for messages (never the user's password).
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from aio_agent.exitcodes import EX_CONFIG, EX_UNAVAILABLE
from aio_agent.naming import tenant_server_settings

CONNECT_TIMEOUT_S = 10.0


def quote_ident(name: str) -> str:
    """Quote an identifier the way PostgreSQL's quote_ident does (double quotes doubled).

    Call it on validated names only; it refuses empty names and NUL bytes as a last guard.
    """
    if not name or "\x00" in name:
        raise ValueError("identifier must be a non-empty string without NUL bytes")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """Quote a string literal (standard_conforming_strings: only single quotes need doubling)."""
    if "\x00" in text:
        raise ValueError("string literal must not contain NUL bytes")
    return "'" + text.replace("'", "''") + "'"


def where(url: str) -> str:
    """`host:port/dbname` of a PostgreSQL URL, for messages (no user, no password)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "<unparsable database URL>"
    dbname = parts.path.lstrip("/") or "(default database)"
    return f"{host}:{port}/{dbname}"


def advisory_key(namespace: str, name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name` (sha256, not the server's hashtext)."""
    digest = hashlib.sha256(f"{namespace}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def connect_tenant(
    url: str, department_id: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> asyncpg.Connection:
    """Connect to `url` with the department's search_path and RLS setting."""
    return await asyncpg.connect(
        url, timeout=connect_timeout_s, server_settings=tenant_server_settings(department_id)
    )


def classify_connect_error(exc: BaseException) -> int | None:
    """Exit code for an exception raised by connect: 69, 78, or None when it is neither."""
    if isinstance(
        exc,
        asyncpg.InvalidAuthorizationSpecificationError
        | asyncpg.InvalidCatalogNameError
        | asyncpg.InvalidPasswordError,
    ):
        return EX_CONFIG
    if isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.CannotConnectNowError
        | asyncpg.TooManyConnectionsError
        | asyncpg.ConnectionDoesNotExistError,
    ):
        return EX_UNAVAILABLE
    return None


def describe(exc: BaseException) -> str:
    """A one-line description of a database error (class name and message, no URL)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def record_dict(record: Any) -> dict[str, Any]:
    """An asyncpg Record as a plain dict."""
    return dict(record.items())

"""Names derived from DEPARTMENT_ID: the one place that turns an id into SQL identifiers.

Every identifier built from a department id goes through `validate_department_id` first, and SQL
code quotes the result with the driver's identifier quoting: never formatted raw into SQL.
"""

from __future__ import annotations

import re

DEPARTMENT_ID_PATTERN = r"^[a-z][a-z0-9_]{1,30}$"
_DEPARTMENT_ID_RE = re.compile(DEPARTMENT_ID_PATTERN)

# The per-connection setting that row-level security policies compare department_id with.
RLS_SETTING = "app.department_id"


class InvalidDepartmentIdError(ValueError):
    """A department id that does not match DEPARTMENT_ID_PATTERN."""


def validate_department_id(value: str) -> str:
    """Return the id unchanged when it matches the pattern, else raise InvalidDepartmentIdError."""
    if not isinstance(value, str) or not _DEPARTMENT_ID_RE.fullmatch(value):
        raise InvalidDepartmentIdError(
            f"department id must match {DEPARTMENT_ID_PATTERN} "
            "(lowercase letter first, then 1-30 lowercase letters, digits or underscores)"
        )
    return value


def schema_name(department_id: str) -> str:
    """The tenant schema of a department: `<id>_tenant`."""
    return f"{validate_department_id(department_id)}_tenant"


def role_name(department_id: str) -> str:
    """The login role of a department: `<id>_agent`."""
    return f"{validate_department_id(department_id)}_agent"


def tenant_server_settings(department_id: str) -> dict[str, str]:
    """Connection settings every tenant connection carries (search_path and the RLS setting)."""
    return {"search_path": schema_name(department_id), RLS_SETTING: department_id}

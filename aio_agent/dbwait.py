"""Wait until the department's database answers `SELECT 1`, or give up with a clear exit code.

The entrypoint runs this between `config render` and `migrate`. It reads the rendered config
($CONFIG_PATH), never the environment, and never prints the database password.

    python -m aio_agent.dbwait          wait up to database.wait_timeout_s
    python -m aio_agent.dbwait --plan   print the start-up steps the config asks for and exit:
                                        `none`, `wait` or `wait migrate` (no network, no asyncpg)

Exit codes (DESIGN.md): 0 database ready (or none configured) · 64 usage · 69 the database stayed
unreachable until the timeout · 70 internal error · 78 the database answered but refused us
(wrong password, unknown role, missing database: retrying cannot help) · 130/143 SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from aio_agent.exitcodes import EX_CONFIG, EX_OK, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE
from aio_agent.rendered import DEFAULT_CONFIG_PATH, load_rendered

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0
ATTEMPT_TIMEOUT_S = 5.0

# SQLSTATEs that mean "the server answered and said no": waiting longer cannot fix them.
FATAL_SQLSTATES = {
    "28P01": "password authentication failed",
    "28000": "the server rejected this role (pg_hba.conf or role without LOGIN)",
    "3D000": "the database does not exist",
}


@dataclass(frozen=True)
class Target:
    """Where we connect, in words safe to print (no password)."""

    url: str
    host: str
    port: int
    user: str
    dbname: str

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlsplit(url)
        user = unquote(parts.username or "")
        return cls(
            url=url,
            host=parts.hostname or "localhost",
            port=parts.port or 5432,
            user=user,
            dbname=unquote(parts.path.lstrip("/")) or user,
        )


def plan(config: dict[str, Any]) -> str:
    """The database steps the entrypoint runs: `none`, `wait` or `wait migrate`."""
    database = config.get("database") or {}
    if not database.get("url"):
        return "none"
    return "wait migrate" if database.get("run_migrations", True) else "wait"


class LoginRefusedError(Exception):
    """The server answered and refused the login: exit 78."""


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None)


async def _attempt(target: Target, limit_s: float) -> None:
    import asyncpg  # noqa: PLC0415 - only when a database is configured

    conn = await asyncpg.connect(target.url, timeout=limit_s)
    try:
        await conn.fetchval("SELECT 1", timeout=limit_s)
    finally:
        await conn.close(timeout=1)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


async def wait_for_database(target: Target, timeout_s: float, log: Any) -> None:
    """Retry connect + SELECT 1 with jittered exponential backoff until `timeout_s` passes.

    Raises LoginRefusedError when the server refuses the login, TimeoutError when time runs out.
    """
    deadline = time.monotonic() + timeout_s
    delay = FIRST_DELAY_S
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            await _attempt(target, max(0.2, min(ATTEMPT_TIMEOUT_S, remaining)))
        except (OSError, TimeoutError) as exc:
            error = _describe(exc)
        except Exception as exc:
            state = _sqlstate(exc)
            if state in FATAL_SQLSTATES:
                raise LoginRefusedError(state) from exc
            error = f"{type(exc).__name__}: {_describe(exc)}"
        else:
            log.info("database ready", where=target.where, attempts=attempt)
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(error)
        sleep = min(remaining, delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
        log.info(
            "database not ready, retrying",
            where=target.where,
            attempt=attempt,
            error=error,
            retry_in_ms=round(sleep * 1000),
        )
        await asyncio.sleep(sleep)
        delay = min(MAX_DELAY_S, delay * 2)


async def _run(target: Target, timeout_s: float, log: Any) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        if task is not None:
            task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    try:
        await wait_for_database(target, timeout_s, log)
    except asyncio.CancelledError:
        if not received:
            raise
        signum = received[0]
        log.warning("database wait interrupted", signal=signal.Signals(signum).name)
        return 128 + signum
    except LoginRefusedError as exc:
        state = str(exc)
        log.error(
            "database refused the login",
            where=target.where,
            user=target.user,
            database=target.dbname,
            reason=FATAL_SQLSTATES[state],
            sqlstate=state,
            fix="correct the user, password or database name in POSTGRES_URL "
            "(or POSTGRES_URL_FILE); retrying cannot help",
        )
        return EX_CONFIG
    except TimeoutError as exc:
        log.error(
            "database unreachable",
            where=target.where,
            timeout_s=timeout_s,
            last_error=str(exc),
            fix="check that the database runs and that POSTGRES_URL names the right host "
            "and port, or raise DB_WAIT_TIMEOUT",
        )
        return EX_UNAVAILABLE
    return EX_OK


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aio_agent.dbwait",
        description="Wait for the configured database (reads $CONFIG_PATH).",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print `none`, `wait` or `wait migrate` for the entrypoint and exit",
    )
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    path = os.environ.get("CONFIG_PATH") or DEFAULT_CONFIG_PATH
    try:
        config = load_rendered(path)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        sys.stderr.write(
            f"cannot read the rendered config {path!r}: {reason}; "
            "run `python -m aio_agent.config render` first\n"
        )
        return EX_CONFIG
    if args.plan:
        sys.stdout.write(plan(config) + "\n")
        return EX_OK
    url = (config.get("database") or {}).get("url")
    if not url:
        return EX_OK

    from aio_agent import logs  # noqa: PLC0415 - structlog only when there is work to log

    runtime = config.get("runtime") or {}
    logs.configure(
        str(runtime.get("log_level", "INFO")),
        str(runtime.get("log_format", "json")),
        department_id=(config.get("department") or {}).get("id"),
    )
    log = logs.get_logger("aio_agent.dbwait")
    timeout_s = float((config.get("database") or {}).get("wait_timeout_s", 60.0))
    try:
        return asyncio.run(_run(Target.from_url(url), timeout_s, log))
    except Exception as exc:  # noqa: BLE001 - any surprise is an internal error, said once
        log.error("database wait failed", error=type(exc).__name__)
        return EX_SOFTWARE


if __name__ == "__main__":
    raise SystemExit(main())

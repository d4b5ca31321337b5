"""The container's 7-point health probe: `python healthcheck.py [--json] [--live]`.

It reads the config file that `python -m aio_agent.config render` wrote ($CONFIG_PATH, default
/app/config/config.yaml) with the standard library and yaml only: no pydantic, no livekit, no
aio_agent import, so it stays cheap enough to run every 30 s on a small instance.

Checks: (1) config file exists, parses and has what the agent needs; (2) database answers
`SELECT 1` within 2 s as the tenant role (skipped without POSTGRES_URL); (3) LiveKit URL and
credentials; (4) LLM credentials; (5) STT/TTS credentials; (6) n8n webhook base for the enabled
n8n tools (skipped without them); (7) agent modules importable (found with importlib's
finders, never imported). `--live` adds (8): the agent's GET /readyz on runtime.port is 200.

Statuses: ok, warn (e.g. credentials left at placeholder values: reported, not failing), fail,
skipped. Exit 0 only when no check fails; 1 otherwise; 64 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

DEFAULT_CONFIG_PATH = "/app/config/config.yaml"
DEPARTMENT_ID_RE = re.compile(r"^[a-z][a-z0-9_]{1,30}$")
TIMEOUT_S = 2.0
OK, WARN, FAIL, SKIPPED = "ok", "warn", "fail", "skipped"
EX_OK, EX_FAIL, EX_USAGE = 0, 1, 64


class Check(NamedTuple):
    """One probe result: what was checked, how it went, and what to do when it failed."""

    name: str
    status: str
    detail: str
    fix: str = ""


Config = dict[str, Any]


def _section(config: Config, name: str) -> dict[str, Any]:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _url_ok(value: Any, schemes: tuple[str, ...]) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in schemes and bool(parts.netloc)


# --- (1) config ---------------------------------------------------------------------------------
def load_config(path: str) -> tuple[Config | None, Check]:
    """Read and sanity-check the rendered config file."""
    fix_render = "start the container through /app/entrypoint.sh (it renders the config)"
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None, Check("config", FAIL, f"{path} does not exist", fix_render)
    except OSError as exc:
        return None, Check(
            "config", FAIL, f"cannot read {path}: {exc.strerror}", "check the file's owner/mode"
        )
    import yaml  # noqa: PLC0415 - after the cheap checks

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        config = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError:
        return None, Check("config", FAIL, f"{path} is not valid YAML", fix_render)
    if not isinstance(config, dict) or config.get("version") != 1:
        return None, Check(
            "config", FAIL, f"{path} is not a version 1 aio-agent config file", fix_render
        )
    department = _section(config, "department")
    missing = [
        name
        for name in ("department", "livekit", "llm", "stt", "tts", "database", "runtime")
        if not isinstance(config.get(name), dict)
    ]
    if missing:
        return None, Check(
            "config", FAIL, f"{path} lacks section(s): {', '.join(missing)}", fix_render
        )
    if not DEPARTMENT_ID_RE.fullmatch(str(department.get("id", ""))):
        return None, Check("config", FAIL, "department.id is missing or malformed", fix_render)
    return config, Check("config", OK, f"{path} (department {department['id']})")


# --- (2) database -------------------------------------------------------------------------------
def check_database(config: Config) -> Check:
    database = _section(config, "database")
    url = database.get("url")
    if not url:
        return Check("database", SKIPPED, "no POSTGRES_URL: running without persistence")
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 5432}"
    user = parts.username or "?"
    department_id = _section(config, "department").get("id", "")
    settings = {
        "search_path": str(database.get("schema") or ""),
        "app.department_id": str(department_id),
    }
    import asyncio  # noqa: PLC0415 - only when a database is configured

    try:
        import asyncpg  # noqa: PLC0415
    except ImportError:
        return Check("database", FAIL, "asyncpg is not installed", "rebuild the image")

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=TIMEOUT_S, server_settings=settings)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close(timeout=0.5)

    async def bounded() -> None:
        async with asyncio.timeout(TIMEOUT_S):
            await probe()

    started = time.monotonic()
    try:
        asyncio.run(bounded())
    except TimeoutError:
        return Check(
            "database",
            FAIL,
            f"{where} did not answer SELECT 1 within {TIMEOUT_S:g} s",
            "check that PostgreSQL runs and POSTGRES_URL names the right host and port",
        )
    except OSError as exc:
        return Check(
            "database",
            FAIL,
            f"cannot connect to {where}: {exc.strerror or type(exc).__name__}",
            "check that PostgreSQL runs and POSTGRES_URL names the right host and port",
        )
    except Exception as exc:  # noqa: BLE001 - asyncpg's errors: report, never crash the probe
        state = getattr(exc, "sqlstate", None)
        return Check(
            "database",
            FAIL,
            f"{where} refused user {user!r}: {type(exc).__name__}"
            + (f" (SQLSTATE {state})" if state else ""),
            "check the user, password and database name in POSTGRES_URL",
        )
    ms = (time.monotonic() - started) * 1000
    return Check("database", OK, f"SELECT 1 as {user} on {where} in {ms:.0f} ms")


# --- (3)-(6) credentials and tools --------------------------------------------------------------
def _placeholders(config: Config) -> set[str]:
    names = config.get("placeholder_credentials")
    return {str(n) for n in names} if isinstance(names, list) else set()


def _credentials(config: Config, name: str, wanted: dict[str, str], what: str) -> Check:
    """`wanted` maps variable name -> the config value; missing = fail, placeholder = warn."""
    missing = [var for var, value in wanted.items() if not value]
    if missing:
        return Check(
            name, FAIL, f"{what}: {', '.join(missing)} missing", f"set {' and '.join(missing)}"
        )
    placeholder = sorted(set(wanted) & _placeholders(config))
    if placeholder:
        return Check(
            name,
            WARN,
            f"{what}: {', '.join(placeholder)} still hold placeholder values",
            f"set real values for {', '.join(placeholder)}",
        )
    return Check(name, OK, f"{what}: credentials present")


def check_livekit(config: Config) -> Check:
    livekit = _section(config, "livekit")
    if not _url_ok(livekit.get("url"), ("ws", "wss", "http", "https")):
        return Check(
            "livekit",
            FAIL,
            "LiveKit URL missing or not ws://, wss://, http:// or https://",
            "set LIVEKIT_URL, e.g. wss://project.livekit.cloud",
        )
    result = _credentials(
        config,
        "livekit",
        {
            "LIVEKIT_API_KEY": livekit.get("api_key"),
            "LIVEKIT_API_SECRET": livekit.get("api_secret"),
        },
        str(livekit["url"]),
    )
    return result


def check_llm(config: Config) -> Check:
    llm = _section(config, "llm")
    if not _url_ok(llm.get("base_url"), ("http", "https")):
        return Check("llm", FAIL, "LLM base URL missing or not http(s)", "set LLM_BASE_URL")
    return _credentials(
        config,
        "llm",
        {"LLM_API_KEY": llm.get("api_key")},
        f"{llm.get('model')} at {llm['base_url']}",
    )


def check_speech(config: Config) -> Check:
    stt, tts = _section(config, "stt"), _section(config, "tts")
    return _credentials(
        config,
        "stt/tts",
        {"STT_API_KEY": stt.get("api_key"), "TTS_API_KEY": tts.get("api_key")},
        f"stt {stt.get('model')}, tts {tts.get('model')}",
    )


def check_tools(config: Config) -> Check:
    tools = config.get("tools") if isinstance(config.get("tools"), list) else []
    n8n = [t for t in tools if isinstance(t, dict) and t.get("kind") == "n8n"]
    if not n8n:
        return Check("n8n", SKIPPED, "no n8n tools enabled")
    base = _section(config, "n8n").get("webhook_base")
    bad = [str(t.get("name")) for t in n8n if not _url_ok(t.get("url"), ("http", "https"))]
    if not _url_ok(base, ("http", "https")) or bad:
        return Check(
            "n8n",
            FAIL,
            "n8n tools enabled without a webhook base"
            + (f" ({', '.join(bad)} have no URL)" if bad else ""),
            "set N8N_WEBHOOK_BASE, e.g. https://n8n.example.com/webhook",
        )
    names = ", ".join(str(t.get("name")) for t in n8n)
    return Check("n8n", OK, f"{len(n8n)} tool(s) via {base}: {names}")


# --- (7) modules --------------------------------------------------------------------------------
def module_findable(name: str) -> bool:
    """Whether `name` could be imported, without importing it or any parent package.

    importlib.util.find_spec("a.b") imports package `a` first (for livekit that is cheap, but it
    is still an import); the top level is found with find_spec, each level below it with the
    path finder inside its parent's search locations.
    """
    import importlib.machinery  # noqa: PLC0415 - already loaded by the interpreter
    import importlib.util  # noqa: PLC0415

    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
        for depth in range(1, len(parts)):
            path = spec.submodule_search_locations if spec else None
            if not path:
                return False
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: depth + 1]), path)
    except (ImportError, ValueError):
        return False
    return spec is not None


def check_modules() -> Check:
    missing = [m for m in ("aio_agent", "livekit.agents") if not module_findable(m)]
    if missing:
        return Check(
            "modules",
            FAIL,
            f"not importable: {', '.join(missing)}",
            "rebuild the image (pip install -r requirements.txt, and the aio_agent package)",
        )
    return Check("modules", OK, "aio_agent and livekit.agents importable")


# --- (8) --live ---------------------------------------------------------------------------------
def check_live(config: Config) -> Check:
    import http.client  # noqa: PLC0415 - only with --live

    port = _section(config, "runtime").get("port", 8080)
    where = f"http://127.0.0.1:{port}/readyz"
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=TIMEOUT_S)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        body = response.read(4096).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return Check(
            "readyz",
            FAIL,
            f"{where}: {getattr(exc, 'strerror', None) or type(exc).__name__}",
            "is the agent running? see its logs",
        )
    finally:
        conn.close()
    if response.status == 200:
        return Check("readyz", OK, f"{where} answered 200")
    return Check(
        "readyz",
        FAIL,
        f"{where} answered {response.status}: {_failing_checks(body)}",
        "see the agent's logs for the failing readiness check",
    )


def _failing_checks(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:200] or "(empty body)"
    checks = data.get("checks") if isinstance(data, dict) else None
    if isinstance(checks, dict):
        bad = [
            f"{k}={v.get('status') if isinstance(v, dict) else v}"
            for k, v in checks.items()
            if (v.get("status") if isinstance(v, dict) else v) not in ("ok", True)
        ]
        if bad:
            return ", ".join(bad)
    return json.dumps(data)[:200]


# --- driver -------------------------------------------------------------------------------------
def run_checks(path: str, live: bool) -> list[Check]:
    config, first = load_config(path)
    results = [first]
    config_checks: list[tuple[str, Callable[[Config], Check]]] = [
        ("database", check_database),
        ("livekit", check_livekit),
        ("llm", check_llm),
        ("stt/tts", check_speech),
        ("n8n", check_tools),
    ]
    for name, check in config_checks:
        results.append(check(config) if config else Check(name, SKIPPED, "no valid config"))
    results.append(check_modules())
    if live:
        results.append(
            check_live(config) if config else Check("readyz", SKIPPED, "no valid config")
        )
    return results


def render_table(results: list[Check]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'CHECK':<{width}}  {'STATUS':<7}  DETAIL"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status:<7}  {r.detail}")
        if r.fix and r.status in (FAIL, WARN):
            lines.append(f"{'':<{width}}  {'':<7}  fix: {r.fix}")
    healthy = all(r.status != FAIL for r in results)
    lines.append(f"{'healthy' if healthy else 'UNHEALTHY'}")
    return "\n".join(lines) + "\n"


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="healthcheck.py", description="Probe this agent's configuration and dependencies."
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--live", action="store_true", help="also GET the agent's /readyz")
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    started = time.monotonic()
    results = run_checks(os.environ.get("CONFIG_PATH") or DEFAULT_CONFIG_PATH, args.live)
    healthy = all(r.status != FAIL for r in results)
    if args.json:
        document = {
            "healthy": healthy,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            "checks": [r._asdict() for r in results],
        }
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        sys.stdout.write(render_table(results))
    return EX_OK if healthy else EX_FAIL


if __name__ == "__main__":
    raise SystemExit(main())

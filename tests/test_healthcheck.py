"""healthcheck.py as Docker's HEALTHCHECK and an operator run it: a real process, a clean env."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tests.pgcluster import PostgresCluster, free_port
from tests.support import PYTHON, REPO, process_env, render_config

HEALTHCHECK = REPO / "healthcheck.py"
NAMES = ["config", "database", "livekit", "llm", "stt/tts", "n8n", "modules"]


class Probe(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def probe(config_path: Path, *args: str, script: Path = HEALTHCHECK) -> Probe:
    env = process_env({"CONFIG_PATH": str(config_path)})
    env.pop("PYTHONPATH")  # like the image: healthcheck.py sits next to the aio_agent package
    result = subprocess.run(
        [PYTHON, str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=script.parent,
    )
    return Probe(result.returncode, result.stdout, result.stderr)


def statuses(result: Probe) -> dict[str, str]:
    return {c["name"]: c["status"] for c in json.loads(result.stdout)["checks"]}


def rewrite(path: Path, change: dict[str, dict[str, object]]) -> None:
    document = yaml.safe_load(path.read_text())
    for section, values in change.items():
        document[section] = {**(document.get(section) or {}), **values}
    path.write_text(yaml.safe_dump(document))


# --- config ---------------------------------------------------------------------------------------
def test_missing_config_fails_and_says_how_to_fix(tmp_path: Path) -> None:
    result = probe(tmp_path / "config.yaml")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert lines[1].split()[:2] == ["config", "fail"]
    assert "does not exist" in lines[1]
    assert "fix: start the container through /app/entrypoint.sh" in lines[2]
    assert lines[-1] == "UNHEALTHY"


def test_garbage_config_fails(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\ndepartment: [unclosed\n")
    result = probe(path, "--json")
    assert result.returncode == 1
    assert statuses(result)["config"] == "fail"


def test_valid_config_passes_with_an_aligned_table(tmp_path: Path) -> None:
    path, _ = render_config(tmp_path)
    result = probe(path)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    rows = lines[1:-1]
    assert [row.split()[0] for row in rows] == NAMES
    status_column = lines[0].index("STATUS")
    detail_column = lines[0].index("DETAIL")
    for row in rows:
        assert row[status_column - 2 : status_column] == "  "
        assert row[status_column] != " "
        assert row[detail_column - 1] == " " and row[detail_column] != " "
    assert dict(row.split()[:2] for row in rows) == {
        "config": "ok",
        "database": "skipped",
        "livekit": "ok",
        "llm": "ok",
        "stt/tts": "ok",
        "n8n": "skipped",
        "modules": "ok",
    }
    assert lines[-1] == "healthy"


def test_json_output_is_machine_readable(tmp_path: Path) -> None:
    path, _ = render_config(tmp_path)
    result = probe(path, "--json")
    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert document["healthy"] is True
    assert [c["name"] for c in document["checks"]] == NAMES
    assert set(document["checks"][0]) == {"name", "status", "detail", "fix"}
    assert result.stdout.count("\n") == 1


def test_placeholder_credentials_warn_without_failing(tmp_path: Path) -> None:
    path, _ = render_config(tmp_path, LLM_API_KEY="changeme", LIVEKIT_API_KEY="placeholder-key")
    result = probe(path, "--json")
    assert result.returncode == 0
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["livekit"]["status"] == "warn"
    assert "LIVEKIT_API_KEY" in checks["livekit"]["detail"]
    assert checks["llm"]["status"] == "warn"
    assert checks["stt/tts"]["status"] == "warn"  # STT/TTS keys default to LLM_API_KEY
    assert "changeme" not in result.stdout


def test_missing_credentials_fail_naming_the_variable(tmp_path: Path) -> None:
    path, _ = render_config(tmp_path)
    rewrite(path, {"llm": {"api_key": ""}, "tts": {"api_key": None}, "livekit": {"url": "ftp://x"}})
    result = probe(path)
    assert result.returncode == 1
    assert "fix: set LLM_API_KEY" in result.stdout
    assert "fix: set TTS_API_KEY" in result.stdout
    assert "fix: set LIVEKIT_URL" in result.stdout


def test_n8n_tools_need_a_webhook_base(tmp_path: Path) -> None:
    tools = tmp_path / "tools.yaml"
    tools.write_text("tools:\n  - name: lookup_policy\n    description: Look up a policy.\n")
    path, _ = render_config(tmp_path, TOOLS_FILE=str(tools), N8N_WEBHOOK_BASE="http://n8n:5678/w")
    good = probe(path, "--json")
    rewrite(path, {"n8n": {"webhook_base": None}})
    bad = probe(path)
    assert (good.returncode, statuses(good)["n8n"]) == (0, "ok")
    assert bad.returncode == 1
    assert "fix: set N8N_WEBHOOK_BASE" in bad.stdout


def test_module_check_fails_when_the_agent_package_is_absent(tmp_path: Path) -> None:
    path, _ = render_config(tmp_path)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(HEALTHCHECK, lone / "healthcheck.py")
    result = probe(path, "--json", script=lone / "healthcheck.py")
    assert result.returncode == 1
    modules = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "modules")
    assert (modules["status"], modules["detail"]) == ("fail", "not importable: aio_agent")


def test_default_path_imports_neither_pydantic_nor_livekit(tmp_path: Path) -> None:
    path, _ = render_config(tmp_path)
    env = {"CONFIG_PATH": str(path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [PYTHON, "-X", "importtime", str(HEALTHCHECK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "yaml" in imported
    heavy = {m for m in imported if m.split(".")[0] in {"pydantic", "livekit", "aio_agent"}}
    assert heavy == set()
    assert "asyncpg" not in imported


# --- database -------------------------------------------------------------------------------------
def test_database_up_passes_as_the_configured_role(
    tmp_path: Path, pg_cluster: PostgresCluster
) -> None:
    path, _ = render_config(tmp_path, POSTGRES_URL=pg_cluster.dsn())
    result = probe(path)
    assert result.returncode == 0, result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("database"))
    assert row.split()[1] == "ok"
    assert f"SELECT 1 as postgres on 127.0.0.1:{pg_cluster.port}" in row
    assert pg_cluster.password not in result.stdout


def test_database_down_fails_naming_where(tmp_path: Path) -> None:
    port = free_port()
    path, _ = render_config(tmp_path, POSTGRES_URL=f"postgresql://u:pw-zz9@127.0.0.1:{port}/db")
    result = probe(path, "--json")
    assert result.returncode == 1
    database = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "database")
    assert database["status"] == "fail"
    assert f"127.0.0.1:{port}" in database["detail"]
    assert "POSTGRES_URL" in database["fix"]
    assert "pw-zz9" not in result.stdout


def test_database_wrong_password_fails_naming_the_user(
    tmp_path: Path, pg_cluster: PostgresCluster
) -> None:
    path, _ = render_config(tmp_path, POSTGRES_URL=pg_cluster.dsn(password="nope-123"))
    result = probe(path)
    assert result.returncode == 1
    assert "refused user 'postgres'" in result.stdout
    assert "nope-123" not in result.stdout


# --- --live ---------------------------------------------------------------------------------------
class ReadyzServer:
    """A plain HTTP server on 127.0.0.1 answering GET /readyz with a chosen status."""

    def __init__(self, status: int, body: dict[str, object]) -> None:
        payload = json.dumps(body).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = status if self.path == "/readyz" else 404
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ReadyzServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ready_server() -> Iterator[ReadyzServer]:
    with ReadyzServer(200, {"status": "ok", "checks": {"livekit": {"status": "ok"}}}) as server:
        yield server


def test_live_passes_when_readyz_answers_200(tmp_path: Path, ready_server: ReadyzServer) -> None:
    path, _ = render_config(tmp_path, PORT=str(ready_server.port))
    result = probe(path, "--live", "--json")
    assert result.returncode == 0, result.stdout
    assert statuses(result)["readyz"] == "ok"


def test_live_fails_on_503_naming_the_failing_check(tmp_path: Path) -> None:
    body = {"status": "fail", "checks": {"livekit": {"status": "fail"}, "db": {"status": "ok"}}}
    with ReadyzServer(503, body) as server:
        path, _ = render_config(tmp_path, PORT=str(server.port))
        result = probe(path, "--live")
    assert result.returncode == 1
    row = next(line for line in result.stdout.splitlines() if line.startswith("readyz"))
    assert "answered 503: livekit=fail" in row


def test_live_fails_when_nothing_listens(tmp_path: Path) -> None:
    path, _ = render_config(tmp_path, PORT=str(free_port()))
    result = probe(path, "--live", "--json")
    assert result.returncode == 1
    assert statuses(result)["readyz"] == "fail"


def test_bad_usage_exits_64(tmp_path: Path) -> None:
    assert probe(tmp_path / "c.yaml", "--bogus").returncode == 64

"""The shipped n8n workflows, provisioned into a REAL n8n and called by the agent's own tool client.

n8n comes from tests/lib/n8n-install.sh (cached outside the repo). Without it these tests skip,
unless AIO_REQUIRE_N8N is set (CI sets it), where a missing n8n fails them.
The fast tests at the top need no n8n: they check the committed templates and the provisioner's
input validation.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aio_agent import signing, tools
from aio_agent.tools import N8nToolClient, ToolResult
from tests.support import REPO, render_config

N8N_DIR = REPO / "n8n"
INSTALLER = REPO / "tests" / "lib" / "n8n-install.sh"
PROVISION = [sys.executable, str(N8N_DIR / "provision.py")]
DEPARTMENTS = ("hr", "accounting")
START_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 30.0  # an upper bound for "not a hang": every call here answers in well under 1 s

# --- no n8n needed ------------------------------------------------------------------------------


def test_committed_workflows_match_their_sources() -> None:
    done = subprocess.run(
        [sys.executable, str(N8N_DIR / "build_workflows.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_templates_hold_no_secret_and_name_their_credential_by_id() -> None:
    for department in DEPARTMENTS:
        credential = json.loads((N8N_DIR / "credentials" / f"{department}.json").read_text())
        assert credential["type"] == "httpHeaderAuth"
        assert credential["data"] == {"name": "X-AIO-Auth", "value": ""}
        for path in (N8N_DIR / "workflows" / department).glob("*.json"):
            workflow = json.loads(path.read_text())
            webhook = next(n for n in workflow["nodes"] if n["type"] == "n8n-nodes-base.webhook")
            assert webhook["parameters"]["path"] == f"{department}/{path.stem}"
            assert webhook["parameters"]["authentication"] == "headerAuth"
            assert webhook["parameters"]["options"]["rawBody"] is True
            assert webhook["credentials"]["httpHeaderAuth"]["id"] == credential["id"]
            verify = next(n for n in workflow["nodes"] if n["name"] == "Verify signature")
            assert "$env" in verify["parameters"]["jsCode"]
            assert "timingSafeEqual" in verify["parameters"]["jsCode"]


def test_example_tools_files_render_into_the_urls_the_workflows_serve(tmp_path: Path) -> None:
    for department in DEPARTMENTS:
        _, config = render_config(
            tmp_path,
            DEPARTMENT_ID=department,
            TOOLS_FILE=str(REPO / "examples" / "tools" / f"{department}.yaml"),
            N8N_WEBHOOK_BASE="http://n8n:5678/webhook",
            N8N_WEBHOOK_SECRET="s" * 32,
        )
        served = sorted(p.stem for p in (N8N_DIR / "workflows" / department).glob("*.json"))
        n8n_tools = [t for t in config["tools"] if t["kind"] == "n8n"]
        assert sorted(t["name"] for t in n8n_tools) == served
        for spec in n8n_tools:
            assert spec["url"] == f"http://n8n:5678/webhook/{department}/{spec['name']}"


def test_provision_lists_every_problem_without_running_n8n() -> None:
    env = {"PATH": os.environ["PATH"], "AIO_WEBHOOK_SECRET_HR": "short"}
    done = subprocess.run(
        [*PROVISION, "hr", "accounting", "Bad-Dept", "--n8n", "/nonexistent/n8n"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 78, done.stderr
    assert "3 problems" in done.stderr
    assert "AIO_WEBHOOK_SECRET_HR is shorter than 16 characters" in done.stderr
    assert "AIO_WEBHOOK_SECRET_ACCOUNTING or AIO_WEBHOOK_SECRET is not set" in done.stderr
    assert "'Bad-Dept' must match" in done.stderr
    assert "short" not in done.stderr.replace("shorter", "")


def test_provision_stops_with_69_when_the_n8n_command_fails(tmp_path: Path) -> None:
    failing = tmp_path / "n8n"
    failing.write_text("#!/bin/sh\necho 'Error: database is locked' >&2\nexit 1\n")
    failing.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "AIO_WEBHOOK_SECRET": "y" * 32}

    done = subprocess.run(
        [*PROVISION, "hr", "--n8n", str(failing)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 69
    assert "export:workflow --all" in done.stderr
    assert "database is locked" in done.stderr
    assert "y" * 32 not in done.stderr


def _provision_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("aio_n8n_provision", N8N_DIR / "provision.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_provision_plan_touches_only_what_differs() -> None:
    provision = _provision_module()
    env = {"AIO_WEBHOOK_SECRET": "x" * 32}
    credentials = [provision.desired_credential(d, "x" * 32) for d in DEPARTMENTS]
    workflows = [{**w, "active": True} for d in DEPARTMENTS for w in provision.desired_workflows(d)]
    assert len(workflows) == 4

    in_sync = provision.plan(list(DEPARTMENTS), env, workflows, credentials)
    assert (in_sync.credentials, in_sync.imports, in_sync.publish) == ([], [], [])
    assert len(in_sync.unchanged) == 6

    edited = json.loads(json.dumps(workflows))
    edited[0]["nodes"][3]["parameters"]["jsCode"] += "\n// edited in the editor"
    edited[1]["active"] = False
    rotated = [credentials[0], {**credentials[1], "data": {"name": "X-AIO-Auth", "value": "old"}}]
    todo = provision.plan(list(DEPARTMENTS), env, edited, rotated)
    assert [w["id"] for w in todo.imports] == [workflows[0]["id"]]
    assert todo.publish == [workflows[0]["id"], workflows[1]["id"]]
    assert [c["id"] for c in todo.credentials] == [credentials[1]["id"]]
    assert todo.credentials[0]["data"]["value"] == signing.header_token("x" * 32)


def test_the_provisioners_header_token_is_what_the_agent_sends() -> None:
    provision = _provision_module()
    for secret in ("x" * 32, "local-test-webhook-secret", "Ünïcode-secret-0123456789"):
        assert provision.header_token(secret) == signing.header_token(secret)
        credential = provision.desired_credential("hr", secret)
        assert credential["data"]["value"] == signing.header_token(secret) != secret


# --- a real n8n ---------------------------------------------------------------------------------


@dataclass
class N8n:
    launcher: str
    env: dict[str, str]
    port: int
    secrets: dict[str, str]
    first_provision: str
    first_export: list[dict[str, Any]]
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def webhook_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [self.launcher, *args], env=self.env, capture_output=True, text=True, check=True
        )
        return done.stdout + done.stderr

    def export_workflows(self, folder: Path) -> list[dict[str, Any]]:
        target = folder / f"export-{uuid.uuid4().hex}.json"
        self.cli("export:workflow", "--all", f"--output={target}")
        return json.loads(target.read_text())


def _installed_launcher() -> str | None:
    done = subprocess.run(
        ["bash", str(INSTALLER), "--check"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _n8n_env(folder: Path, port: int, broker_port: int, secrets_: dict[str, str]) -> dict[str, str]:
    """The quiet, local settings from the notes, plus what the AIO workflows need."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder),
        "DB_TYPE": "sqlite",
        "N8N_USER_FOLDER": str(folder),
        "N8N_ENCRYPTION_KEY": secrets.token_hex(24),
        "N8N_LISTEN_ADDRESS": "127.0.0.1",
        "N8N_PORT": str(port),
        "N8N_WEBHOOK_URL": f"http://127.0.0.1:{port}/",
        "N8N_RUNNERS_BROKER_PORT": str(broker_port),
        "N8N_DIAGNOSTICS_ENABLED": "false",
        "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
        "N8N_PERSONALIZATION_ENABLED": "false",
        "N8N_TEMPLATES_ENABLED": "false",
        "N8N_LICENSE_AUTO_RENEW_ENABLED": "false",
        "N8N_COMMUNITY_PACKAGES_ENABLED": "false",
        "N8N_AI_ENABLED": "false",
        "N8N_DISABLED_MODULES": "mcp-registry",
        "N8N_LOG_LEVEL": "warn",
        "NODE_FUNCTION_ALLOW_BUILTIN": "crypto",
        "N8N_BLOCK_ENV_ACCESS_IN_NODE": "false",
    }
    for department, value in secrets_.items():
        env[f"AIO_WEBHOOK_SECRET_{department.upper()}"] = value
    return env


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_until_served(n8n: N8n) -> None:
    """Until every provisioned webhook answers (403 without auth), or fail with n8n's log."""
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = {
        f"{n8n.webhook_base}/{department}/{path.stem}"
        for department in DEPARTMENTS
        for path in (N8N_DIR / "workflows" / department).glob("*.json")
    }
    while pending:
        if n8n.process.poll() is not None:
            pytest.fail(f"n8n exited with {n8n.process.returncode}:\n{n8n.log_path.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"n8n did not serve {sorted(pending)} in time:\n{n8n.log_path.read_text()}")
        for url in list(pending):
            try:
                status, _ = _post(url, b"{}", {"Content-Type": "application/json"})
            except OSError:
                continue
            if status == 403:
                pending.discard(url)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def n8n(tmp_path_factory: pytest.TempPathFactory) -> Iterator[N8n]:
    launcher = _installed_launcher()
    if launcher is None:
        if os.environ.get("AIO_REQUIRE_N8N"):
            pytest.fail(
                "AIO_REQUIRE_N8N is set but n8n is not installed: run tests/lib/n8n-install.sh"
            )
        pytest.skip(
            "n8n is not installed (run tests/lib/n8n-install.sh; AIO_REQUIRE_N8N=1 fails instead)"
        )
    folder = tmp_path_factory.mktemp("n8n")
    port, broker_port = _free_port(), _free_port()
    secrets_ = {department: secrets.token_hex(32) for department in DEPARTMENTS}
    env = _n8n_env(folder, port, broker_port, secrets_)
    provisioned = subprocess.run(
        [*PROVISION, *DEPARTMENTS, "--n8n", launcher],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert provisioned.returncode == 0, provisioned.stderr
    log_path = folder / "n8n.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [launcher, "start"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = N8n(launcher, env, port, secrets_, provisioned.stderr, [], process, log_path)
    try:
        server.first_export = server.export_workflows(folder)
        _wait_until_served(server)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _client(
    n8n: N8n, tmp_path: Path, department: str, secret: str | None = "same"
) -> N8nToolClient:
    overrides: dict[str, str | None] = {
        "DEPARTMENT_ID": department,
        "TOOLS_FILE": str(REPO / "examples" / "tools" / f"{department}.yaml"),
        "N8N_WEBHOOK_BASE": n8n.webhook_base,
        "N8N_WEBHOOK_SECRET": n8n.secrets[department] if secret == "same" else secret,
    }
    _, config = render_config(tmp_path, **overrides)
    return N8nToolClient(config, backoff_base_s=0.01)


async def _call(client: N8nToolClient, tool: str, arguments: dict[str, Any]) -> ToolResult:
    try:
        return await asyncio.wait_for(
            client.call(tool, arguments, session_id="sess-" + uuid.uuid4().hex[:8]),
            timeout=CALL_TIMEOUT_S,
        )
    finally:
        await client.aclose()


SIGNED_CALLS = [
    pytest.param(
        "hr",
        "lookup_policy",
        {"topic": "how many vacation days do I get"},
        lambda data: (
            data["found"] is True
            and data["policy"]["policy_id"] == "HR-POL-001"
            and data["policy"]["title"] == "Paid time off"
            and "25 days" in data["policy"]["summary"]
        ),
        id="hr-lookup_policy",
    ),
    pytest.param(
        "hr",
        "request_time_off",
        {
            "employee_id": "E1001",
            "start_date": "2026-12-14",
            "end_date": "2026-12-20",
            "reason": "family visit",
        },
        lambda data: (
            data["status"] == "pending_approval"
            and re.fullmatch(r"PTO-[0-9A-F]{8}", data["reference"]) is not None
            and data["business_days"] == 5
            and data["balance_after_days"] == 13
            and data["approver"] == "Priya Patel"
        ),
        id="hr-request_time_off",
    ),
    pytest.param(
        "accounting",
        "lookup_invoice",
        {"invoice_number": "invoice 2"},
        lambda data: (
            data["found"] is True
            and data["invoice"]["invoice_number"] == "INV-2026-0002"
            and data["invoice"]["vendor"] == "Contoso Cloud Services"
            and data["invoice"]["status"] == "open"
        ),
        id="accounting-lookup_invoice",
    ),
    pytest.param(
        "accounting",
        "submit_expense",
        {
            "employee_id": "e1003",
            "amount": 42.5,
            "currency": "eur",
            "description": "Taxi zum Kunden \u2013 Zürich  (two spaces)",
        },
        lambda data: (
            data["status"] == "approved"
            and re.fullmatch(r"EXP-[0-9A-F]{8}", data["reference"]) is not None
            and data["amount"] == 42.5
            and data["currency"] == "EUR"
            and data["employee_name"] == "Mei Chen"
            and data["description"] == "Taxi zum Kunden \u2013 Zürich  (two spaces)"
        ),
        id="accounting-submit_expense",
    ),
]


@pytest.mark.n8n
@pytest.mark.slow
@pytest.mark.parametrize(("department", "tool", "arguments", "expected"), SIGNED_CALLS)
async def test_signed_call_from_the_agent_gets_the_documented_answer(
    n8n: N8n, tmp_path: Path, department: str, tool: str, arguments: dict, expected: Any
) -> None:
    result = await _call(_client(n8n, tmp_path, department), tool, arguments)

    assert result.ok, result.error
    assert (result.status, result.http_status, result.attempts) == ("ok", 200, 1)
    assert expected(result.data), result.data


@pytest.mark.n8n
@pytest.mark.slow
async def test_tool_level_refusal_lists_every_problem(n8n: N8n, tmp_path: Path) -> None:
    result = await _call(
        _client(n8n, tmp_path, "hr"),
        "request_time_off",
        {"employee_id": "E9999", "start_date": "2026-12-20", "end_date": "2026-02-30"},
    )

    assert (result.ok, result.status, result.http_status) == (False, "rejected", 422)
    assert result.data["problems"] == [
        'unknown employee_id "E9999"',
        "end_date must be a date written YYYY-MM-DD",
    ]


def _corrupt_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    real = tools.signed_headers

    def corrupted(*args: Any, **kwargs: Any) -> dict[str, str]:
        headers = real(*args, **kwargs)
        headers[signing.SIGNATURE_HEADER] = "sha256=" + "0" * 64
        return headers

    monkeypatch.setattr(tools, "signed_headers", corrupted)


def _shift_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    shifted = types.SimpleNamespace(
        time=lambda: time.time() + seconds, perf_counter=time.perf_counter
    )
    monkeypatch.setattr(tools, "time", shifted)


@pytest.mark.n8n
@pytest.mark.slow
@pytest.mark.parametrize(("department", "tool", "arguments", "_expected"), SIGNED_CALLS)
@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("wrong signature", 401, "bad or missing X-Signature"),
        ("missing auth header", 403, ""),
        ("other department's secret", 403, ""),
        ("stale timestamp", 401, "more than 5 minutes old"),
        ("timestamp from the future", 401, "in the future"),
    ],
)
async def test_bad_calls_are_refused_and_become_an_explicit_rejected_result(
    n8n: N8n,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    department: str,
    tool: str,
    arguments: dict,
    _expected: Any,
    case: str,
    status: int,
    message: str,
) -> None:
    secret: str | None = "same"
    if case == "wrong signature":
        _corrupt_signature(monkeypatch)
    elif case == "missing auth header":
        secret = None
    elif case == "other department's secret":
        other = next(d for d in DEPARTMENTS if d != department)
        secret = n8n.secrets[other]
    elif case == "stale timestamp":
        _shift_clock(monkeypatch, -400)
    else:
        _shift_clock(monkeypatch, +400)

    result = await _call(_client(n8n, tmp_path, department, secret), tool, arguments)

    assert (result.ok, result.status, result.http_status) == (False, "rejected", status)
    assert result.attempts == 1
    assert message in (result.error or "")
    assert json.loads(result.for_llm())["status"] == "rejected"


@pytest.mark.n8n
@pytest.mark.slow
@pytest.mark.parametrize(("department", "tool", "arguments", "_expected"), SIGNED_CALLS)
async def test_a_replayed_request_id_is_refused(
    n8n: N8n,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    department: str,
    tool: str,
    arguments: dict,
    _expected: Any,
) -> None:
    fixed = uuid.uuid4()
    monkeypatch.setattr(tools, "uuid", types.SimpleNamespace(uuid4=lambda: fixed))

    first = await _call(_client(n8n, tmp_path, department), tool, arguments)
    again = await _call(_client(n8n, tmp_path, department), tool, arguments)

    assert first.ok, first.error
    assert (again.ok, again.status, again.http_status) == (False, "rejected", 401)
    assert "replayed request" in (again.error or "")


@pytest.mark.n8n
@pytest.mark.slow
async def test_the_exact_same_request_sent_twice_is_refused_the_second_time(n8n: N8n) -> None:
    secret = n8n.secrets["hr"]
    request_id = uuid.uuid4().hex
    body = signing.request_body(
        department_id="hr",
        session_id="s1",
        tool="lookup_policy",
        arguments={"topic": "sick leave"},
        request_id=request_id,
    )
    headers = signing.signed_headers(secret, body, request_id=request_id)
    url = f"{n8n.webhook_base}/hr/lookup_policy"

    first = _post(url, body, headers)
    second = _post(url, body, headers)

    assert first[0] == 200 and json.loads(first[1])["policy"]["title"] == "Sick leave"
    assert second[0] == 401
    assert "replayed" in json.loads(second[1])["error"]


@pytest.mark.n8n
@pytest.mark.slow
@pytest.mark.parametrize(("department", "tool", "arguments", "_expected"), SIGNED_CALLS)
@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("X-Signature", "bad or missing X-Signature"),
        ("X-AIO-Timestamp", "missing or malformed X-AIO-Timestamp"),
        ("X-AIO-Request-Id", "X-AIO-Request-Id is missing"),
    ],
)
def test_a_call_with_valid_auth_but_a_missing_signing_header_is_refused_401(
    n8n: N8n,
    department: str,
    tool: str,
    arguments: dict,
    _expected: Any,
    header: str,
    message: str,
) -> None:
    """Header auth passes, so the workflow's own signature check must refuse it."""
    request_id = uuid.uuid4().hex
    body = signing.request_body(
        department_id=department,
        session_id="s1",
        tool=tool,
        arguments=arguments,
        request_id=request_id,
    )
    headers = signing.signed_headers(n8n.secrets[department], body, request_id=request_id)
    del headers[header]

    status, answer = _post(f"{n8n.webhook_base}/{department}/{tool}", body, headers)

    assert status == 401, answer
    assert message in json.loads(answer)["error"]


@pytest.mark.n8n
@pytest.mark.slow
async def test_a_signed_body_cannot_be_sent_under_another_request_id(n8n: N8n) -> None:
    secret = n8n.secrets["hr"]
    body = signing.request_body(
        department_id="hr",
        session_id="s1",
        tool="lookup_policy",
        arguments={"topic": "remote work"},
        request_id=uuid.uuid4().hex,
    )
    headers = signing.signed_headers(secret, body, request_id=uuid.uuid4().hex)

    status, answer = _post(f"{n8n.webhook_base}/hr/lookup_policy", body, headers)

    assert status == 401
    assert "differs from the signed request_id" in json.loads(answer)["error"]


@pytest.mark.n8n
@pytest.mark.slow
async def test_a_call_signed_for_another_tool_is_refused(n8n: N8n) -> None:
    secret = n8n.secrets["hr"]
    request_id = uuid.uuid4().hex
    body = signing.request_body(
        department_id="hr",
        session_id="s1",
        tool="request_time_off",
        arguments={"topic": "remote work"},
        request_id=request_id,
    )
    headers = signing.signed_headers(secret, body, request_id=request_id)

    status, answer = _post(f"{n8n.webhook_base}/hr/lookup_policy", body, headers)

    assert status == 400
    assert "this workflow serves hr/lookup_policy" in json.loads(answer)["error"]


@pytest.mark.n8n
@pytest.mark.slow
def test_provisioning_again_changes_nothing(n8n: N8n, tmp_path: Path) -> None:
    again = subprocess.run(
        [*PROVISION, *DEPARTMENTS, "--n8n", n8n.launcher],
        env=n8n.env,
        capture_output=True,
        text=True,
        check=False,
    )
    after = n8n.export_workflows(tmp_path)

    assert again.returncode == 0, again.stderr
    assert "workflow_imported" in n8n.first_provision
    assert "imported" not in again.stderr and "published" not in again.stderr
    assert again.stderr.count("unchanged") == 6  # 2 credentials + 4 workflows
    assert "changed=false" in again.stderr

    def versions(export: list[dict[str, Any]]) -> dict[str, tuple]:
        return {
            w["id"]: (w.get("versionId"), w.get("activeVersionId"), w.get("updatedAt"))
            for w in export
        }

    assert versions(after) == versions(n8n.first_export)
    assert all(w["active"] for w in after)
    assert len(after) == 4

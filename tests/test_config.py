"""`python -m aio_agent.config` as an operator meets it: real processes, a clean environment."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.support import PYTHON, REPO, process_env, valid_env

REQUIRED = [
    "DEPARTMENT_ID",
    "DEPARTMENT_NAME",
    "LIVEKIT_URL",
    "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET",
    "LLM_API_KEY",
]
TOOLS_YAML = """\
tools:
  - name: lookup_policy
    description: "Look up an HR policy: leave, travel, expenses."
    parameters:
      type: object
      properties: {topic: {type: string}}
      required: [topic]
    timeout: 5
"""


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def start_cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-m", "aio_agent.config", *args],
        env=process_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> Result:
    out, err = process.communicate(timeout=60)
    return Result(process.returncode, out, err)


def run_cli(*args: str, env: dict[str, str]) -> Result:
    """A real `python -m aio_agent.config` process with exactly `env` (plus PATH/PYTHONPATH)."""
    return finish(start_cli(*args, env=env))


def run_main(*args: str, env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Result:
    """The same CLI entry point in-process (`main(argv, env)`): for the many-case matrices, where
    a process start per case (pydantic import, ~0.5 s) would cost more than it proves."""
    from aio_agent.config import main

    code = main(list(args), env=env)
    out, err = capsys.readouterr()
    return Result(code, out, err)


def problem_lines(stderr: str) -> dict[str, str]:
    """`  - NAME: message` lines of the report, by variable (the last one wins)."""
    return dict(re.findall(r"^  - ([A-Z0-9_]+): (.*)$", stderr, re.MULTILINE))


def render(tmp_path: Path, **overrides: str | None) -> Result:
    return run_cli(
        "render", env=valid_env(**{"CONFIG_PATH": str(tmp_path / "config.yaml"), **overrides})
    )


def render_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], **overrides: str | None
) -> Result:
    env = valid_env(**{"CONFIG_PATH": str(tmp_path / "config.yaml"), **overrides})
    return run_main("render", env=env, capsys=capsys)


# --- missing -------------------------------------------------------------------------------------
def test_all_missing_lists_every_required_variable_at_once(tmp_path: Path) -> None:
    result = run_cli("render", env={"CONFIG_PATH": str(tmp_path / "config.yaml")})
    assert result.returncode == 78
    problems = problem_lines(result.stderr)
    assert set(REQUIRED) <= set(problems)
    assert all("required" in problems[name] for name in REQUIRED)
    assert f"invalid configuration: {len(problems)} problems" in result.stderr
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("name", REQUIRED)
def test_each_missing_required_variable_is_named_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    result = render_in_process(tmp_path, capsys, **{name: None})
    assert result.returncode == 78
    assert problem_lines(result.stderr) == {name: problem_lines(result.stderr)[name]}
    message = problem_lines(result.stderr)[name]
    assert "is required" in message
    assert f"{name}_FILE" in message or "-e " in message
    assert not (tmp_path / "config.yaml").exists()


# --- malformed -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {
                "DEPARTMENT_ID": "hr; DROP TABLE x",
                "LIVEKIT_URL": "ftp://livekit.example.com",
                "POSTGRES_URL": "mysql://u:pw@db:3306/aio",
                "PORT": "0",
                "DATA_ENCRYPTION_KEY": "c2hvcnQ=",
            },
            {
                "DEPARTMENT_ID": "must match",
                "LIVEKIT_URL": "ws://",
                "POSTGRES_URL": "postgresql://",
                "PORT": "greater than or equal to 1",
                "DATA_ENCRYPTION_KEY": "32",
            },
            id="sql-id,ftp,mysql,port-0,short-key",
        ),
        pytest.param(
            {"DEPARTMENT_ID": "HR", "PORT": "70000", "DATA_ENCRYPTION_KEY": "not base64 !!"},
            {
                "DEPARTMENT_ID": "must match",
                "PORT": "less than or equal to 65535",
                "DATA_ENCRYPTION_KEY": "base64",
            },
            id="uppercase-id,port-70000,not-base64",
        ),
        pytest.param(
            {"DEPARTMENT_ID": "a" * 40, "LIVEKIT_URL": "livekit:7880", "PORT": "eighty"},
            {"DEPARTMENT_ID": "must match", "LIVEKIT_URL": "ws://", "PORT": "integer"},
            id="40-char-id,no-scheme,port-text",
        ),
        pytest.param(
            {
                "N8N_WEBHOOK_SECRET": "short-secret",
                "DB_WAIT_TIMEOUT": "-1",
                "DRAIN_TIMEOUT": "100000",
                "TOOL_TIMEOUT": "nan",
                "LOAD_THRESHOLD": "0",
            },
            {
                "N8N_WEBHOOK_SECRET": "at least 16 characters",
                "DB_WAIT_TIMEOUT": "greater than",
                "DRAIN_TIMEOUT": "less than or equal to 86400",
                "TOOL_TIMEOUT": "less than or equal to 120",  # nan is no number in range
                "LOAD_THRESHOLD": "greater than 0",
            },
            id="short-webhook-secret,ranges",
        ),
    ],
)
def test_malformed_values_are_all_reported_in_one_message(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, str],
    expected: dict[str, str],
) -> None:
    result = render_in_process(tmp_path, capsys, **overrides)
    assert result.returncode == 78
    problems = problem_lines(result.stderr)
    assert set(problems) == set(expected), result.stderr
    for name, fragment in expected.items():
        assert fragment in problems[name], (name, problems[name])
    assert not (tmp_path / "config.yaml").exists()


def test_bad_tools_yaml_and_search_without_database_are_both_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tools = tmp_path / "tools.yaml"
    tools.write_text("tools:\n  - name: x\n    description: [unclosed\n")
    result = render_in_process(
        tmp_path, capsys, TOOLS_FILE=str(tools), ENABLED_TOOLS="search_documents"
    )
    assert result.returncode == 78
    text = result.stderr
    assert re.search(r"TOOLS_FILE: .*tools\.yaml.* is not valid YAML/JSON at line \d+", text)
    assert "ENABLED_TOOLS: enables search_documents, which needs POSTGRES_URL" in text


def test_bad_tool_spec_names_the_tool_and_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tools = tmp_path / "tools.yaml"
    tools.write_text(
        "tools:\n"
        "  - name: Bad-Name\n    description: d\n"
        "  - name: no_description\n"
        "  - name: bad_params\n    description: d\n    parameters: {type: string}\n"
        "  - name: slow\n    description: d\n    timeout: 500\n"
    )
    result = render_in_process(
        tmp_path, capsys, TOOLS_FILE=str(tools), N8N_WEBHOOK_BASE="http://n8n:5678/webhook"
    )
    assert result.returncode == 78
    lines = [line for line in result.stderr.splitlines() if line.startswith("  - TOOLS_FILE")]
    assert any("tool #1: name must match" in line for line in lines)
    assert any("'no_description': description must be" in line for line in lines)
    assert any("'bad_params': parameters must be a JSON schema" in line for line in lines)
    assert any("'slow': timeout must be" in line for line in lines)


def test_unknown_tool_and_n8n_tool_without_webhook_base_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tools = tmp_path / "tools.yaml"
    tools.write_text(TOOLS_YAML)
    result = render_in_process(
        tmp_path, capsys, TOOLS_FILE=str(tools), ENABLED_TOOLS="lookup_policy,order_pizza"
    )
    assert result.returncode == 78
    problems = problem_lines(result.stderr)
    assert "'order_pizza'" in problems["ENABLED_TOOLS"]
    assert "lookup_policy" in problems["N8N_WEBHOOK_BASE"]
    assert "required" in problems["N8N_WEBHOOK_BASE"]


def test_enabled_n8n_tool_gets_its_webhook_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aio_agent.config import load_rendered

    tools = tmp_path / "tools.yaml"
    tools.write_text(TOOLS_YAML)
    result = render_in_process(
        tmp_path, capsys, TOOLS_FILE=str(tools), N8N_WEBHOOK_BASE="http://n8n:5678/webhook/"
    )
    assert result.returncode == 0, result.stderr
    config = load_rendered(tmp_path / "config.yaml")
    assert config["tools"] == [
        {
            "name": "lookup_policy",
            "kind": "n8n",
            "description": "Look up an HR policy: leave, travel, expenses.",
            "parameters": {
                "type": "object",
                "properties": {"topic": {"type": "string"}},
                "required": ["topic"],
            },
            "url": "http://n8n:5678/webhook/hr/lookup_policy",
            "timeout_s": 5.0,
        }
    ]


# --- NAME_FILE -----------------------------------------------------------------------------------
def test_secret_file_supplies_the_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aio_agent.config import load_rendered

    secret = tmp_path / "llm_key"
    secret.write_text("sk-from-file\n")
    result = render_in_process(tmp_path, capsys, LLM_API_KEY=None, LLM_API_KEY_FILE=str(secret))
    assert result.returncode == 0, result.stderr
    config = load_rendered(tmp_path / "config.yaml")
    assert config["llm"]["api_key"] == "sk-from-file"
    assert config["tts"]["api_key"] == "sk-from-file"


def test_secret_and_its_file_both_set_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "llm_key"
    secret.write_text("sk-from-file")
    result = render_in_process(tmp_path, capsys, LLM_API_KEY_FILE=str(secret))
    assert result.returncode == 78
    assert "both LLM_API_KEY and LLM_API_KEY_FILE are set" in result.stderr


def test_unreadable_secret_file_names_the_variable_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "secret"
    result = render(tmp_path, LIVEKIT_API_SECRET=None, LIVEKIT_API_SECRET_FILE=str(missing))
    assert result.returncode == 78
    line = problem_lines(result.stderr)["LIVEKIT_API_SECRET_FILE"]
    assert str(missing) in line
    assert "No such file" in line
    assert not (tmp_path / "config.yaml").exists()


# --- secrets never printed -----------------------------------------------------------------------
SECRETS = {
    "LIVEKIT_API_KEY": "lk-key-7d1f0e",
    "LIVEKIT_API_SECRET": "lk-secret-4b9a21",
    "LLM_API_KEY": "sk-llm-83c5aa",
    "STT_API_KEY": "sk-stt-11aa02",
    "TTS_API_KEY": "sk-tts-99bc13",
    "N8N_WEBHOOK_SECRET": "n8n-secret-5e5e5e",
    "POSTGRES_URL": "postgresql://hr_agent:pg-pass-c0ffee@db.internal:5432/aio",
    "DATA_ENCRYPTION_KEY": "/9HeQJ9kt6V1pq8XcRsUyiS3d+g7d5NQ3GbuqoSmsK4=",
    "DATA_ENCRYPTION_OLD_KEYS": "q8Pp0xW3bE7nVh2kLm9sTd4yRu6zXa1cFg5jNo0iHkY=,"
    "ERERERERERERERERERERERERERERERERERERERERERE=",
}
SECRET_VALUES = [
    *SECRETS.values(),
    *SECRETS["DATA_ENCRYPTION_OLD_KEYS"].split(","),
    "pg-pass-c0ffee",
]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["render", "check"])
def test_secret_values_never_appear_in_output(tmp_path: Path, command: str) -> None:
    env = valid_env(CONFIG_PATH=str(tmp_path / "config.yaml"), **SECRETS)
    started = [
        start_cli(command, env=env),
        start_cli(command, env={**env, "DEPARTMENT_ID": "Bad Id", "PORT": "0"}),
    ]
    malformed_process = start_cli(
        command,
        env={
            **env,
            "POSTGRES_URL": "mysql://hr_agent:pg-pass-c0ffee@db:3306/aio",
            "DATA_ENCRYPTION_KEY": "sk-llm-83c5aa",
        },
    )
    # urlsplit refuses a netloc whose NFKC form holds a delimiter, quoting the whole netloc
    # (password included) in its error: the fullwidth number sign below.
    unparsable_process = start_cli(
        command,
        env={**env, "POSTGRES_URL": "postgresql://hr_agent:pg-pass-c0ffee\uff03@db:5432/aio"},
    )
    ok, failing = (finish(p) for p in started)
    malformed = finish(malformed_process)
    unparsable = finish(unparsable_process)
    assert (ok.returncode, failing.returncode, malformed.returncode) == (0, 78, 78)
    assert "POSTGRES_URL" in malformed.stderr
    assert "DATA_ENCRYPTION_KEY" in malformed.stderr
    assert unparsable.returncode == 78
    assert "POSTGRES_URL: is not a valid URL" in unparsable.stderr
    for result in (ok, failing, malformed, unparsable):
        output = result.stdout + result.stderr
        for value in SECRET_VALUES:
            assert value not in output
    if command == "check":
        assert "api_key: '***'" in ok.stdout


# --- atomic write --------------------------------------------------------------------------------
def test_render_writes_a_0600_file_and_leaves_no_temp_files(tmp_path: Path) -> None:
    result = render(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    path = tmp_path / "config.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_failed_render_leaves_the_previous_config_untouched(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\nold: true\n")
    before = path.stat()
    result = render(tmp_path, LLM_API_KEY=None)
    assert result.returncode == 78
    assert path.read_text() == "version: 1\nold: true\n"
    assert path.stat().st_ino == before.st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_failed_write_exits_70_and_keeps_the_previous_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails after validation (disk full) is no configuration problem: exit 70."""
    import errno

    from aio_agent import config

    path = tmp_path / "config.yaml"
    path.write_text("version: 1\nold: true\n")

    def disk_full(fd: int) -> None:  # fsync is where a full disk shows for buffered writes
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(config.os, "fsync", disk_full)
    result = render_in_process(tmp_path, capsys)
    monkeypatch.undo()
    assert result.returncode == 70, result.stderr
    assert "No space left on device" in result.stderr
    assert "CONFIG_PATH" in result.stderr
    assert path.read_text() == "version: 1\nold: true\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_an_internal_error_exits_70_without_echoing_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aio_agent import config

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("sk-llm-83c5aa")

    monkeypatch.setattr(config, "dump_yaml", broken)
    result = render_in_process(tmp_path, capsys, LLM_API_KEY="sk-llm-83c5aa")
    assert result.returncode == 70
    assert "internal error: RuntimeError" in result.stderr
    assert "sk-llm-83c5aa" not in result.stdout + result.stderr
    assert not (tmp_path / "config.yaml").exists()


def test_unwritable_config_directory_is_a_config_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = render_in_process(
        tmp_path, capsys, CONFIG_PATH=str(tmp_path / "missing-dir" / "config.yaml")
    )
    assert result.returncode == 78
    assert "CONFIG_PATH: directory" in result.stderr
    assert "does not exist" in result.stderr


def test_rerender_replaces_the_file_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aio_agent.config import load_rendered

    assert render_in_process(tmp_path, capsys).returncode == 0
    first = (tmp_path / "config.yaml").stat().st_ino
    assert render_in_process(tmp_path, capsys, DEPARTMENT_NAME="Payroll").returncode == 0
    path = tmp_path / "config.yaml"
    assert path.stat().st_ino != first
    assert load_rendered(path)["department"]["name"] == "Payroll"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- usage and README ----------------------------------------------------------------------------
def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main("frobnicate", env={}, capsys=capsys)
    assert result.returncode == 64
    assert "invalid choice" in result.stderr


def test_readme_variable_table_matches_the_model() -> None:
    result = run_cli("env-table", env={})
    assert result.returncode == 0
    readme = (
        (REPO / "README.md").read_text(encoding="utf-8") if (REPO / "README.md").exists() else ""
    )
    match = re.search(r"<!-- env-table:start -->\n(.*?)<!-- env-table:end -->", readme, re.DOTALL)
    assert match, "README.md needs the table between <!-- env-table:start --> and :end markers"
    assert match.group(1).strip() == result.stdout.strip(), (
        "README's variable table is stale: regenerate it with "
        "`python -m aio_agent.config env-table`"
    )


def test_env_table_lists_every_variable_once(capsys: pytest.CaptureFixture[str]) -> None:
    from aio_agent.config import variables

    result = run_main("env-table", env={}, capsys=capsys)
    names = re.findall(r"^\| `([A-Z0-9_]+)` \|", result.stdout, re.MULTILINE)
    assert names == [v.name for v in variables()]
    assert set(REQUIRED) <= set(names)

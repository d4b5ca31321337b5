"""entrypoint.sh run as a real process with a clean environment, as `docker run` would.

The agent command itself (`python -m aio_agent start`) would start a LiveKit worker, so the
setup-then-start path is driven by sourcing the script and calling `prepare_agent` (the exact
function `_main` runs before `exec "$@"`); every other path runs the script as a whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from aio_agent.db import advisory_key
from aio_agent.migrate import LOCK_NAMESPACE
from tests.pgcluster import PostgresCluster, _pg_bin, free_port
from tests.support import PYTHON, REPO, process_env, render_config, valid_env

ENTRYPOINT = REPO / "entrypoint.sh"
VENV_BIN = str(Path(PYTHON).parent)
SECRET_VALUES = {
    "LIVEKIT_API_KEY": "lk-key-e1e1e1",
    "LIVEKIT_API_SECRET": "lk-secret-e2e2e2",
    "LLM_API_KEY": "sk-llm-e3e3e3",
}


class Run(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def script_env(env: dict[str, str]) -> dict[str, str]:
    """A clean environment whose `python` is the test interpreter (like /app/.venv in the image)."""
    full = process_env(env)
    full["PATH"] = f"{VENV_BIN}:{full['PATH']}"
    return full


def run(argv: list[str], env: dict[str, str], timeout: float = 60) -> Run:
    started = time.monotonic()
    result = subprocess.run(
        argv, env=script_env(env), capture_output=True, text=True, timeout=timeout, check=False
    )
    return Run(result.returncode, result.stdout, result.stderr, time.monotonic() - started)


def prepare(env: dict[str, str], timeout: float = 60) -> Run:
    """Source the script, run every setup step, then print READY (stands in for the agent)."""
    script = f'source "{ENTRYPOINT}"; prepare_agent; echo READY'
    return run(["bash", "-c", script], env, timeout)


@contextlib.contextmanager
def prepare_in_background(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`prepare` in its own process group (like tini -g: the whole group can be signalled);
    whatever outlives the block is killed."""
    process = subprocess.Popen(
        ["bash", "-c", f'source "{ENTRYPOINT}"; prepare_agent; echo READY'],
        env=script_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def signal_and_collect(
    process: subprocess.Popen[str], send: Callable[[], None]
) -> tuple[str, str, float]:
    """Send the signal, then stdout, stderr and the seconds until the process ended."""
    sent = time.monotonic()
    send()
    out, err = process.communicate(timeout=10)
    return out, err, time.monotonic() - sent


def log_lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def env_for(tmp_path: Path, **overrides: str | None) -> dict[str, str]:
    return valid_env(**{"CONFIG_PATH": str(tmp_path / "config.yaml"), **overrides})


# --- plain commands -------------------------------------------------------------------------------
def test_other_commands_are_execd_with_their_arguments_verbatim(tmp_path: Path) -> None:
    args = ["a b", "", "$HOME", "--flag=x y", "'quoted'", "*"]
    code = "import json, os, sys; print(json.dumps([os.getpid(), sys.argv[1:]]))"
    process = subprocess.Popen(
        [str(ENTRYPOINT), "python", "-c", code, *args],
        env=script_env({}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    pid, received = json.loads(out)
    assert received == args
    assert pid == process.pid  # exec: python replaced the shell, no setup ran
    assert not (tmp_path / "config.yaml").exists()


def test_other_commands_skip_setup_even_with_no_configuration() -> None:
    result = run([str(ENTRYPOINT), "bash", "-c", "echo debugging works; exit 7"], {})
    assert (result.returncode, result.stdout) == (7, "debugging works\n")


# --- configuration ------------------------------------------------------------------------------
def test_start_with_no_configuration_exits_78_listing_every_missing_variable(
    tmp_path: Path,
) -> None:
    result = run([str(ENTRYPOINT), "start"], {"CONFIG_PATH": str(tmp_path / "config.yaml")})
    assert result.returncode == 78
    for name in ("DEPARTMENT_ID", "DEPARTMENT_NAME", "LIVEKIT_URL", "LIVEKIT_API_KEY"):
        assert f"  - {name}: is required" in result.stderr
    assert "LIVEKIT_API_SECRET" in result.stderr
    assert "LLM_API_KEY" in result.stderr
    (line,) = log_lines(result.stdout)
    assert line["event"] == "configuration invalid"
    assert line["exit_code"] == 78
    assert not (tmp_path / "config.yaml").exists()


def test_agent_command_runs_setup_and_secrets_are_never_printed(tmp_path: Path) -> None:
    secret_file = tmp_path / "llm"
    secret_file.write_text(SECRET_VALUES["LLM_API_KEY"] + "\n")
    bad = run(
        [str(ENTRYPOINT), "python", "-m", "aio_agent", "start"],
        env_for(tmp_path, DEPARTMENT_ID="Bad Id", PORT="0", **SECRET_VALUES),
    )
    good = prepare(
        env_for(
            tmp_path,
            **{**SECRET_VALUES, "LLM_API_KEY": None, "LLM_API_KEY_FILE": str(secret_file)},
        )
    )
    assert bad.returncode == 78
    assert "DEPARTMENT_ID" in bad.stderr
    assert "PORT" in bad.stderr
    assert good.returncode == 0, good.stderr
    assert good.stdout.endswith("READY\n")
    for result in (bad, good):
        for value in SECRET_VALUES.values():
            assert value not in result.stdout + result.stderr


def test_each_setup_step_logs_one_json_line_with_its_duration(tmp_path: Path) -> None:
    result = prepare(env_for(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = log_lines(result.stdout)
    assert [line["event"] for line in lines] == [
        "configuration rendered",
        "no database configured: running without persistence",
    ]
    for line in lines:
        assert list(line)[:5] == ["timestamp", "level", "logger", "event", "department_id"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(line["timestamp"]))
        assert (line["level"], line["logger"], line["department_id"]) == (
            "info",
            "entrypoint",
            "hr",
        )
    assert isinstance(lines[0]["duration_ms"], int)
    assert lines[0]["database"] == "none"
    assert (tmp_path / "config.yaml").exists()


def test_console_log_format_is_for_people(tmp_path: Path) -> None:
    result = prepare(env_for(tmp_path, LOG_FORMAT="console"))
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert re.match(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[info     \] configuration rendered +"
        r"\[entrypoint\] department_id=hr step=config duration_ms=\d+ ",
        first,
    ), first


def test_log_helper_escapes_json_and_honours_log_level() -> None:
    script = (
        f'source "{ENTRYPOINT}"; log info "say \\"hi\\"" note $\'a\\\\b\\nc\\td\'; '
        "log debug hidden; LOG_LEVEL=debug log debug shown count 3"
    )
    result = run(["bash", "-c", script], {"DEPARTMENT_ID": 'x"y'})
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert (first["event"], first["note"], first["department_id"]) == (
        'say "hi"',
        "a\\b\nc\td",
        'x"y',
    )
    assert (second["event"], second["count"]) == ("shown", 3)


# --- database wait --------------------------------------------------------------------------------
def test_database_wait_succeeds_against_a_running_postgres(
    tmp_path: Path, pg_cluster: PostgresCluster
) -> None:
    env = env_for(tmp_path, POSTGRES_URL=pg_cluster.dsn(), RUN_MIGRATIONS="false")
    result = prepare(env)
    assert result.returncode == 0, result.stdout + result.stderr
    events = [line["event"] for line in log_lines(result.stdout)]
    assert events[0] == "configuration rendered"
    assert "database ready" in events
    assert events[-1] == "migrations skipped (RUN_MIGRATIONS=false)"
    assert pg_cluster.password not in result.stdout + result.stderr


@pytest.mark.slow
def test_database_wait_gives_up_with_69_naming_host_and_port(tmp_path: Path) -> None:
    port = free_port()
    env = env_for(
        tmp_path,
        POSTGRES_URL=f"postgresql://hr_agent:pw-never-shown@127.0.0.1:{port}/aio",
        DB_WAIT_TIMEOUT="2",
    )
    result = prepare(env)
    assert result.returncode == 69
    assert 2.0 <= result.seconds < 8.0
    output = result.stdout + result.stderr
    assert f"127.0.0.1:{port}" in output
    assert "pw-never-shown" not in output
    failure = [line for line in log_lines(result.stdout) if line["event"] == "database unreachable"]
    assert failure and failure[0]["where"] == f"127.0.0.1:{port}"
    assert "DB_WAIT_TIMEOUT" in str(failure[0]["fix"])
    assert "READY" not in result.stdout


@pytest.mark.parametrize(
    ("user", "password", "dbname", "reason"),
    [
        ("postgres", "wrong-password-x", "postgres", "password authentication failed"),
        ("no_such_role", "whatever-pw-y", "postgres", "password authentication failed"),
        ("postgres", None, "no_such_db", "the database does not exist"),
    ],
    ids=["wrong-password", "unknown-role", "missing-database"],
)
def test_refused_login_fails_fast_with_78_naming_user_and_database(
    tmp_path: Path,
    pg_cluster: PostgresCluster,
    user: str,
    password: str | None,
    dbname: str,
    reason: str,
) -> None:
    url = pg_cluster.dsn(user=user, password=password, dbname=dbname)
    path, _ = render_config(tmp_path, POSTGRES_URL=url, DB_WAIT_TIMEOUT="30")
    result = run([PYTHON, "-m", "aio_agent.dbwait"], {"CONFIG_PATH": str(path)})
    assert result.returncode == 78
    assert result.seconds < 10  # far below DB_WAIT_TIMEOUT: no retrying
    (refusal,) = [
        line for line in log_lines(result.stdout) if line["event"] == "database refused the login"
    ]
    assert (refusal["user"], refusal["database"], refusal["reason"]) == (user, dbname, reason)
    output = result.stdout + result.stderr
    assert (password or pg_cluster.password) not in output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "whole_group"),
    [
        (signal.SIGTERM, 143, True),
        (signal.SIGINT, 130, True),
        (signal.SIGTERM, 143, False),
    ],
    ids=["term-group", "int-group", "term-shell-only"],
)
def test_signal_during_database_wait_stops_promptly(
    tmp_path: Path, sig: signal.Signals, code: int, whole_group: bool
) -> None:
    port = free_port()
    env = env_for(
        tmp_path, POSTGRES_URL=f"postgresql://u:p@127.0.0.1:{port}/db", DB_WAIT_TIMEOUT="60"
    )
    with prepare_in_background(env) as process:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            if "database not ready" in line:
                break
        else:
            pytest.fail("the database wait never started: " + "".join(seen))
        if whole_group:
            out, err, elapsed = signal_and_collect(process, lambda: os.killpg(process.pid, sig))
        else:
            out, err, elapsed = signal_and_collect(process, lambda: process.send_signal(sig))
    assert process.returncode == code, out + err
    assert elapsed < 2.0
    stopped = [line for line in log_lines(out) if line["event"] == "stopped by signal"]
    assert stopped and stopped[0]["step"] == "database"
    assert "READY" not in out
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # no child left running


# --- migrations -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_setup_waits_migrates_and_is_ready(tmp_path: Path, pg_cluster: PostgresCluster) -> None:
    department = f"ep{uuid.uuid4().hex[:8]}"
    role, password = f"{department}_agent", uuid.uuid4().hex
    dbname = pg_cluster.create_database()
    pg_cluster.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    pg_cluster.psql(
        f"GRANT CONNECT ON DATABASE {dbname} TO {role}; "
        f"CREATE SCHEMA {department}_tenant AUTHORIZATION {role}",
        dbname=dbname,
    )
    url = pg_cluster.dsn(user=role, password=password, dbname=dbname)
    result = prepare(env_for(tmp_path, DEPARTMENT_ID=department, POSTGRES_URL=url))
    assert result.returncode == 0, result.stdout + result.stderr
    events = [line["event"] for line in log_lines(result.stdout) if line["logger"] == "entrypoint"]
    assert events == ["configuration rendered", "database ready", "migrations applied"]
    tables = pg_cluster.psql(
        f"SELECT count(*) FROM pg_tables WHERE schemaname = '{department}_tenant'", dbname=dbname
    )
    assert int(tables) >= 4
    assert password not in result.stdout + result.stderr


@pytest.mark.slow
def test_signal_during_migrations_stops_promptly_and_applies_nothing(
    tmp_path: Path, pg_cluster: PostgresCluster
) -> None:
    """Another container holds the migration lock; SIGTERM must not wait for it, nor half-apply."""
    department = f"ep{uuid.uuid4().hex[:8]}"
    role, password = f"{department}_agent", uuid.uuid4().hex
    dbname = pg_cluster.create_database()
    pg_cluster.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    pg_cluster.psql(f"CREATE SCHEMA {department}_tenant AUTHORIZATION {role}", dbname=dbname)
    key = advisory_key(LOCK_NAMESPACE, f"{department}_tenant")
    url = pg_cluster.dsn(user=role, password=password, dbname=dbname)
    # psql holds the lock as the other container would, until its stdin closes.
    holder = subprocess.Popen(
        [_pg_bin("psql"), "-X", "-q", "-d", pg_cluster.dsn(dbname=dbname)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert holder.stdin is not None
    holder.stdin.write(f"SELECT pg_advisory_lock({key});\n")
    holder.stdin.flush()
    waiting_sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"

    def wait_until(condition: str, want: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while pg_cluster.psql(condition, dbname=dbname).strip() != want:
            assert time.monotonic() < deadline, f"{condition} never gave {want}"
            time.sleep(0.1)

    wait_until("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted", "1")
    try:
        with prepare_in_background(
            env_for(tmp_path, DEPARTMENT_ID=department, POSTGRES_URL=url)
        ) as process:
            wait_until(waiting_sql, "1")  # the migrator is blocked on the lock
            out, err, elapsed = signal_and_collect(
                process, lambda: os.killpg(process.pid, signal.SIGTERM)
            )
    finally:
        holder.stdin.close()  # the other container finishes: its lock goes
        holder.wait(timeout=10)
    assert process.returncode == 143, out + err
    assert elapsed < 2.0
    stopped = [line for line in log_lines(out) if line["event"] == "stopped by signal"]
    assert stopped and stopped[0]["step"] == "migrations"
    assert "READY" not in out
    wait_until(waiting_sql, "0")  # the killed migrator's session is gone too
    tables = pg_cluster.psql(
        f"SELECT count(*) FROM pg_tables WHERE schemaname = '{department}_tenant'", dbname=dbname
    )
    assert tables.strip() == "0", "a migration ran after the signal"


def test_dbwait_plan_tells_the_entrypoint_which_steps_to_run(
    tmp_path: Path, pg_cluster: PostgresCluster
) -> None:
    started = {}
    for name, overrides in {
        "none": {},
        "wait": {"POSTGRES_URL": pg_cluster.dsn(), "RUN_MIGRATIONS": "false"},
        "wait migrate": {"POSTGRES_URL": pg_cluster.dsn()},
    }.items():
        directory = tmp_path / name.replace(" ", "_")
        directory.mkdir()
        path, _ = render_config(directory, **overrides)
        started[name] = subprocess.Popen(
            [PYTHON, "-m", "aio_agent.dbwait", "--plan"],
            env=script_env({"CONFIG_PATH": str(path)}),
            stdout=subprocess.PIPE,
            text=True,
        )
    plans = {name: (p.communicate(timeout=30)[0], p.returncode) for name, p in started.items()}
    assert plans == {name: (name + "\n", 0) for name in started}


def test_dbwait_without_a_rendered_config_exits_78(tmp_path: Path) -> None:
    result = run([PYTHON, "-m", "aio_agent.dbwait"], {"CONFIG_PATH": str(tmp_path / "none.yaml")})
    assert result.returncode == 78
    assert "aio_agent.config render" in result.stderr

"""Helpers the test suites share: a valid environment, a rendered config file, the repo root."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from aio_agent.config import build_config, dump_yaml, write_atomic

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def valid_env(**overrides: str | None) -> dict[str, str]:
    """A minimal valid environment (no database, no tools); None removes a variable."""
    env = {
        "DEPARTMENT_ID": "hr",
        "DEPARTMENT_NAME": "Human Resources",
        "LIVEKIT_URL": "ws://127.0.0.1:7880",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "devsecret-devsecret-devsecret-00",
        "LLM_API_KEY": "sk-test-llm",
        "LOG_FORMAT": "json",
    }
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def process_env(env: dict[str, str]) -> dict[str, str]:
    """`env` plus what a subprocess needs to run (PATH, the repo on PYTHONPATH)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), **env}


def render_config(tmp_path: Path, **overrides: str | None) -> tuple[Path, dict[str, Any]]:
    """Validate valid_env(**overrides) and write it to tmp_path/config.yaml like `render` does."""
    path = tmp_path / "config.yaml"
    env = valid_env(CONFIG_PATH=str(path), **overrides)
    document = build_config(env)
    write_atomic(path, dump_yaml(document))
    return path, document

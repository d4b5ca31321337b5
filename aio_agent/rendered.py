"""Reading the rendered config file: stdlib + yaml only, so that short-lived processes (dbwait,
migrate) do not pay for importing pydantic. `aio_agent.config` writes the file; this reads it.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

CONFIG_VERSION = 1
DEFAULT_CONFIG_PATH = "/app/config/config.yaml"
Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def config_path() -> str:
    """Where the rendered config lives: $CONFIG_PATH or the image's default."""
    return os.environ.get("CONFIG_PATH") or DEFAULT_CONFIG_PATH


def load_rendered(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read a rendered config file; ValueError when it is not one, OSError when unreadable."""
    path = path if path is not None else config_path()
    with open(path, encoding="utf-8") as handle:
        data = yaml.load(handle, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader
    if not isinstance(data, dict) or data.get("version") != CONFIG_VERSION:
        raise ValueError(f"{path}: not a version {CONFIG_VERSION} aio-agent config file")
    return data

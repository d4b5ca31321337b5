"""The settings model: the single definition of every environment variable the image reads.

Each field carries the variable's name (its alias), type, default, required-ness, secret-ness and
description. Everything else is derived from this model: the rendered config.yaml that the agent,
the migrator and healthcheck.py read, the README's variable table (`env-table`), and the list of
secrets for which `NAME_FILE` may name a file instead of the value.

Commands (exit codes as in DESIGN.md: 0 ok, 64 usage, 70 internal error, 78 invalid configuration):
    python -m aio_agent.config render      validate the environment, write $CONFIG_PATH atomically
    python -m aio_agent.config check       validate and print a redacted summary
    python -m aio_agent.config env-table   print the README's variable table (Markdown)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from aio_agent.exitcodes import EX_CONFIG, EX_OK, EX_SOFTWARE, EX_USAGE
from aio_agent.naming import DEPARTMENT_ID_PATTERN, role_name, schema_name
from aio_agent.rendered import (  # load_rendered is re-exported for callers of this module
    CONFIG_VERSION,
    DEFAULT_CONFIG_PATH,
    Loader,
    load_rendered,
)

__all__ = [
    "EX_CONFIG",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_USAGE",
    "ConfigError",
    "Settings",
    "build_config",
    "dump_yaml",
    "load_rendered",
    "write_atomic",
]

BUILTIN_TOOLS = ("search_documents",)
# n8n/provision.py and n8n/compose-provision.sh refuse shorter signing secrets too.
MIN_WEBHOOK_SECRET_LENGTH = 16
TOOL_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
PLACEHOLDER_PREFIXES = ("placeholder", "changeme", "change-me", "replace-me", "your-")

Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _var(
    name: str,
    description: str,
    *,
    default: Any = ...,
    secret: bool = False,
    required_when: str | None = None,
    example: str | None = None,
    **constraints: Any,
) -> Any:
    """A field bound to environment variable `name`, with the metadata the README table shows."""
    extra: dict[str, Any] = {"secret": secret}
    if required_when:
        extra["required_when"] = required_when
    if example:
        extra["example"] = example
    return Field(
        default,
        alias=name,
        description=description,
        json_schema_extra=extra,
        **constraints,
    )


class Settings(BaseModel):
    """Every environment variable of the image. Field order is the README table's order."""

    model_config = ConfigDict(populate_by_name=False, extra="ignore", frozen=True)

    # --- department -------------------------------------------------------------------------
    department_id: str = _var(
        "DEPARTMENT_ID",
        "Department id: schema `<id>_tenant`, role `<id>_agent`, n8n path, LiveKit agent name, "
        f"log field. Pattern `{DEPARTMENT_ID_PATTERN}`.",
        example="hr",
    )
    department_name: str = _var(
        "DEPARTMENT_NAME",
        "Display name used in the agent's persona and greeting.",
        example="Human Resources",
        min_length=1,
        max_length=200,
    )
    persona_instructions: str | None = _var(
        "PERSONA_INSTRUCTIONS",
        "System instructions of the agent (inline). Default: a persona naming the department.",
        default=None,
    )
    persona_greeting: str | None = _var(
        "PERSONA_GREETING",
        "What the agent says when a participant joins. Default: a greeting naming the department.",
        default=None,
    )
    persona_file: Path | None = _var(
        "PERSONA_FILE",
        "YAML file with `instructions` and/or `greeting` (instead of the inline variables).",
        default=None,
    )
    # --- LiveKit ----------------------------------------------------------------------------
    livekit_url: str = _var(
        "LIVEKIT_URL",
        "LiveKit server URL (ws://, wss://, http:// or https://).",
        example="wss://project.livekit.cloud",
    )
    livekit_api_key: SecretStr = _var("LIVEKIT_API_KEY", "LiveKit API key.", secret=True)
    livekit_api_secret: SecretStr = _var("LIVEKIT_API_SECRET", "LiveKit API secret.", secret=True)
    livekit_agent_name: str | None = _var(
        "LIVEKIT_AGENT_NAME",
        "Name the worker registers for explicit dispatch. Default: DEPARTMENT_ID.",
        default=None,
    )
    livekit_max_retry: int = _var(
        "LIVEKIT_MAX_RETRY",
        "Connection attempts to LiveKit before the worker exits 69 (16 is about 130 s).",
        default=16,
        ge=0,
        le=1000,
    )
    # --- providers (any OpenAI-compatible server) -------------------------------------------
    llm_api_key: SecretStr = _var("LLM_API_KEY", "API key of the LLM provider.", secret=True)
    llm_base_url: str = _var(
        "LLM_BASE_URL", "OpenAI-compatible LLM endpoint.", default="https://api.openai.com/v1"
    )
    llm_model: str = _var("LLM_MODEL", "LLM model name.", default="gpt-4o-mini")
    stt_api_key: SecretStr | None = _var(
        "STT_API_KEY", "Speech-to-text API key. Default: LLM_API_KEY.", default=None, secret=True
    )
    stt_base_url: str | None = _var(
        "STT_BASE_URL", "Speech-to-text endpoint. Default: LLM_BASE_URL.", default=None
    )
    stt_model: str = _var("STT_MODEL", "Speech-to-text model.", default="gpt-4o-mini-transcribe")
    stt_language: str = _var("STT_LANGUAGE", "Language spoken by callers.", default="en")
    tts_api_key: SecretStr | None = _var(
        "TTS_API_KEY", "Text-to-speech API key. Default: LLM_API_KEY.", default=None, secret=True
    )
    tts_base_url: str | None = _var(
        "TTS_BASE_URL", "Text-to-speech endpoint. Default: LLM_BASE_URL.", default=None
    )
    tts_model: str = _var("TTS_MODEL", "Text-to-speech model.", default="gpt-4o-mini-tts")
    tts_voice: str = _var("TTS_VOICE", "Text-to-speech voice.", default="alloy")
    # --- tools (n8n webhooks) ---------------------------------------------------------------
    tools_file: Path | None = _var(
        "TOOLS_FILE",
        "YAML/JSON file listing tool specs (name, description, JSON-schema parameters).",
        default=None,
    )
    enabled_tools: str | None = _var(
        "ENABLED_TOOLS",
        "Comma-separated tool names to enable. Default: every tool in TOOLS_FILE, plus "
        "`search_documents` when POSTGRES_URL is set.",
        default=None,
    )
    n8n_webhook_base: str | None = _var(
        "N8N_WEBHOOK_BASE",
        "Base URL of the n8n webhooks; a tool is called at `{base}/{DEPARTMENT_ID}/{tool}`.",
        default=None,
        required_when="an n8n tool is enabled",
    )
    n8n_webhook_secret: SecretStr | None = _var(
        "N8N_WEBHOOK_SECRET",
        "Shared secret, at least 16 characters: signs each body (HMAC-SHA256) and yields the "
        "header-auth token; never sent itself.",
        default=None,
        secret=True,
    )
    tool_timeout: float = _var(
        "TOOL_TIMEOUT",
        "Seconds one n8n tool call may take (per attempt); a tool spec may override it.",
        default=10.0,
        gt=0,
        le=120,
    )
    # --- database ---------------------------------------------------------------------------
    postgres_url: SecretStr | None = _var(
        "POSTGRES_URL",
        "PostgreSQL URL of the department's role. Unset: run without persistence.",
        default=None,
        secret=True,
        example="postgresql://hr_agent:...@postgres:5432/aio",
    )
    db_wait_timeout: float = _var(
        "DB_WAIT_TIMEOUT",
        "Seconds the entrypoint waits for the database before exiting 69.",
        default=60.0,
        ge=0,
        le=3600,
    )
    run_migrations: bool = _var(
        "RUN_MIGRATIONS", "Apply pending tenant migrations at start-up.", default=True
    )
    db_queue_size: int = _var(
        "DB_QUEUE_SIZE",
        "Capacity of the background write queue; writes beyond it are dropped and counted.",
        default=1000,
        ge=1,
        le=1_000_000,
    )
    # --- runtime ----------------------------------------------------------------------------
    port: int = _var(
        "PORT", "HTTP port of /healthz, /readyz and /metrics.", default=8080, ge=1, le=65535
    )
    drain_timeout: int = _var(
        "DRAIN_TIMEOUT",
        "Seconds active calls may go on after SIGTERM before the worker exits.",
        default=60,
        ge=0,
        le=86_400,
    )
    num_idle_processes: int = _var(
        "NUM_IDLE_PROCESSES",
        "Pre-started job executors, threads in this image (faster call pickup, more idle memory).",
        default=1,
        ge=0,
        le=32,
    )
    preload_local_inference: bool = _var(
        "PRELOAD_LOCAL_INFERENCE",
        "Load the local VAD/turn-detector models in the main process at start-up.",
        default=False,
    )
    load_threshold: float = _var(
        "LOAD_THRESHOLD",
        "CPU load (0-1 of the container) above which the worker declines new calls; `inf` "
        "never declines.",
        default=0.7,
        gt=0,
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _var(
        "LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR.", default="INFO"
    )
    log_format: Literal["json", "console"] = _var(
        "LOG_FORMAT", "`json` (one object per line) or `console` (for people).", default="json"
    )
    data_encryption_key: SecretStr | None = _var(
        "DATA_ENCRYPTION_KEY",
        "Base64 of 32 random bytes: encrypts sensitive columns (AES-256-GCM).",
        default=None,
        secret=True,
    )
    data_encryption_old_keys: SecretStr | None = _var(
        "DATA_ENCRYPTION_OLD_KEYS",
        "Comma-separated earlier keys, still accepted for reading (key rotation).",
        default=None,
        secret=True,
    )
    otel_exporter_otlp_endpoint: str | None = _var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTLP/HTTP collector; spans are exported only when set.",
        default=None,
    )
    config_path: Path = _var(
        "CONFIG_PATH", "Where `render` writes the config file.", default=Path(DEFAULT_CONFIG_PATH)
    )

    # --- field rules --------------------------------------------------------------------------
    @field_validator("department_id")
    @classmethod
    def _check_department_id(cls, value: str) -> str:
        if not re.fullmatch(DEPARTMENT_ID_PATTERN, value):
            raise ValueError(
                f"must match {DEPARTMENT_ID_PATTERN}: a lowercase letter, then 1-30 lowercase "
                "letters, digits or underscores (e.g. hr, accounting)"
            )
        return value

    @field_validator("livekit_url")
    @classmethod
    def _check_livekit_url(cls, value: str) -> str:
        return _check_url(value, ("ws", "wss", "http", "https"))

    @field_validator(
        "llm_base_url",
        "stt_base_url",
        "tts_base_url",
        "n8n_webhook_base",
        "otel_exporter_otlp_endpoint",
    )
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_url(value, ("http", "https")).rstrip("/")

    @field_validator("postgres_url")
    @classmethod
    def _check_postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = _split_url(value.get_secret_value())
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise ValueError("must look like postgresql://USER:PASSWORD@HOST:5432/DBNAME")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError("has a port that is not a number from 1 to 65535") from None
        return value

    @field_validator("n8n_webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # The shipped n8n workflows' provisioner refuses shorter signing secrets (n8n/README.md).
        if value is not None and len(value.get_secret_value()) < MIN_WEBHOOK_SECRET_LENGTH:
            raise ValueError(
                f"must be at least {MIN_WEBHOOK_SECRET_LENGTH} characters "
                "(it is the HMAC key; make one: openssl rand -hex 32)"
            )
        return value

    @field_validator("data_encryption_key")
    @classmethod
    def _check_encryption_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_key(value.get_secret_value())
        return value

    @field_validator("data_encryption_old_keys")
    @classmethod
    def _check_old_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            for item in _split_list(value.get_secret_value()):
                decode_key(item)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


def decode_key(text: str) -> bytes:
    """Decode a DATA_ENCRYPTION_KEY (standard or URL-safe base64 of exactly 32 bytes)."""
    padded = text.strip() + "=" * (-len(text.strip()) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "must be base64 of 32 random bytes (make one: openssl rand -base64 32)"
        ) from None
    if len(raw) != 32:
        raise ValueError(
            f"decodes to {len(raw)} bytes, needs 32 (make one: openssl rand -base64 32)"
        )
    return raw


def _split_url(value: str) -> SplitResult:
    """urlsplit without its error text, which quotes the netloc (user:PASSWORD@host)."""
    try:
        return urlsplit(value)
    except ValueError:
        raise ValueError("is not a valid URL (check for stray or non-ASCII characters)") from None


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    parts = _split_url(value.strip())
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
    return value.strip()


def _split_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


# --- metadata helpers ------------------------------------------------------------------------
@dataclass(frozen=True)
class Variable:
    """One environment variable as the README and the entrypoint see it."""

    name: str
    field: str
    description: str
    required: bool
    required_when: str | None
    secret: bool
    default: Any


def variables() -> list[Variable]:
    """Every variable of the model, in declaration order."""
    result = []
    for field_name, info in Settings.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        result.append(
            Variable(
                name=str(info.alias),
                field=field_name,
                description=info.description or "",
                required=info.is_required(),
                required_when=extra.get("required_when"),  # type: ignore[arg-type]
                secret=bool(extra.get("secret")),
                default=None if info.is_required() else info.default,
            )
        )
    return result


def secret_names() -> list[str]:
    """Variables that may be given as NAME_FILE and are never printed."""
    return [v.name for v in variables() if v.secret]


# --- validation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One configuration problem: which variable, what is wrong, how to fix it."""

    variable: str
    message: str

    def __str__(self) -> str:
        return f"{self.variable}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found, never with a secret value."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} configuration problem(s)")
        self.problems = problems

    def report(self) -> str:
        count = len(self.problems)
        lines = [f"invalid configuration: {count} problem{'s' if count != 1 else ''}"]
        lines += [f"  - {problem}" for problem in self.problems]
        lines.append(
            "Fix the variables above (docker run -e NAME=value, or an env file) and "
            "start again. README.md lists every variable."
        )
        return "\n".join(lines)


def resolve_file_secrets(env: Mapping[str, str]) -> tuple[dict[str, str], list[Problem]]:
    """Apply the NAME_FILE convention for every secret; return the effective environment.

    Empty values count as unset (compose writes `NAME=` for absent variables).
    """
    effective = {key: value for key, value in env.items() if value != ""}
    problems: list[Problem] = []
    for name in secret_names():
        file_var = f"{name}_FILE"
        path = effective.pop(file_var, None)
        if path is None:
            continue
        if name in effective:
            problems.append(Problem(name, f"both {name} and {file_var} are set; keep only one"))
            continue
        try:
            content = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            problems.append(Problem(file_var, f"cannot read {path!r}: {reason}"))
            continue
        value = content.rstrip("\r\n")
        if value == "":
            problems.append(Problem(file_var, f"file {path!r} is empty"))
            continue
        effective[name] = value
    return effective, problems


def _field_problems(exc: ValidationError) -> list[Problem]:
    by_field = {name: info for name, info in Settings.model_fields.items()}
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = error.get("loc") or ("?",)
        key = str(loc[0])
        info = by_field.get(key)
        name = str(info.alias) if info else key
        if error["type"] == "missing":
            problems.append(Problem(name, f"is required but not set; {_hint(name)}"))
            continue
        message = str(error["msg"])
        message = message.removeprefix("Value error, ")
        problems.append(Problem(name, message[:1].lower() + message[1:]))
    return problems


def _hint(name: str) -> str:
    for var in variables():
        if var.name == name:
            example = Settings.model_fields[var.field].json_schema_extra
            sample = example.get("example") if isinstance(example, dict) else None
            if var.secret:
                return f"set {name} or {name}_FILE (a file holding the value)"
            if sample:
                return f"e.g. -e {name}={sample}"
            return f"set {name}"
    return f"set {name}"


def _load_structured_file(path: Path, variable: str, problems: list[Problem]) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        problems.append(Problem(variable, f"cannot read {str(path)!r}: {reason}"))
        return None
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problems.append(Problem(variable, f"{str(path)!r} is not valid YAML/JSON{where}"))
        return None


def load_tool_specs(path: Path, problems: list[Problem]) -> list[dict[str, Any]]:
    """Read TOOLS_FILE: `tools: [{name, description, parameters, timeout?}]` (or a bare list)."""
    data = _load_structured_file(path, "TOOLS_FILE", problems)
    if data is None:
        return []
    items = data.get("tools") if isinstance(data, dict) else data
    if not isinstance(items, list):
        problems.append(Problem("TOOLS_FILE", "must hold a list `tools:` of tool specs"))
        return []
    specs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        where = f"tool #{index + 1}"
        if not isinstance(item, dict):
            problems.append(Problem("TOOLS_FILE", f"{where} must be a mapping"))
            continue
        name = item.get("name")
        if not isinstance(name, str) or not re.fullmatch(TOOL_NAME_PATTERN, name):
            problems.append(Problem("TOOLS_FILE", f"{where}: name must match {TOOL_NAME_PATTERN}"))
            continue
        where = f"tool {name!r}"
        if name in seen or name in BUILTIN_TOOLS:
            problems.append(
                Problem("TOOLS_FILE", f"{where} is defined twice or shadows a built-in tool")
            )
            continue
        seen.add(name)
        description = item.get("description")
        if not isinstance(description, str) or not description.strip():
            problems.append(
                Problem("TOOLS_FILE", f"{where}: description must be a non-empty string")
            )
        parameters = item.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict) or parameters.get("type") != "object":
            problems.append(
                Problem(
                    "TOOLS_FILE", f"{where}: parameters must be a JSON schema with type: object"
                )
            )
        timeout = item.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= 120
        ):
            problems.append(
                Problem("TOOLS_FILE", f"{where}: timeout must be a number of seconds in (0, 120]")
            )
        specs.append(
            {"name": name, "description": description, "parameters": parameters, "timeout": timeout}
        )
    return specs


def _load_persona(path: Path, problems: list[Problem]) -> dict[str, str]:
    data = _load_structured_file(path, "PERSONA_FILE", problems)
    if data is None:
        return {}
    if (
        not isinstance(data, dict)
        or not set(data) <= {"instructions", "greeting"}
        or not all(isinstance(v, str) for v in data.values())
    ):
        problems.append(
            Problem(
                "PERSONA_FILE",
                "must be a mapping with string keys `instructions` and/or `greeting`",
            )
        )
        return {}
    return data


def _check_config_dir(path: Path, problems: list[Problem]) -> None:
    parent = path.parent
    if not parent.is_dir():
        problems.append(Problem("CONFIG_PATH", f"directory {str(parent)!r} does not exist"))
    elif not os.access(parent, os.W_OK | os.X_OK):
        problems.append(
            Problem(
                "CONFIG_PATH",
                f"directory {str(parent)!r} is not writable "
                "(mount a writable volume or tmpfs there)",
            )
        )


def is_placeholder(value: str) -> bool:
    """A credential left at an example value (`placeholder`, `changeme`, ...)."""
    return value.strip().lower().startswith(PLACEHOLDER_PREFIXES)


def build_config(env: Mapping[str, str], *, check_output_dir: bool = True) -> dict[str, Any]:
    """Validate `env` and return the config document; raise ConfigError listing every problem."""
    effective, problems = resolve_file_secrets(env)
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(effective)
    except ValidationError as exc:
        problems += _field_problems(exc)

    # Rules that read files or span variables run on whatever parsed, so that one message
    # lists every problem.
    def fieldval(name: str, parse: Callable[[str], Any] = str) -> Any:
        raw = effective.get(name)
        try:
            return parse(raw) if raw is not None else None
        except (TypeError, ValueError):
            return None

    tools_path = fieldval("TOOLS_FILE", Path)
    specs = load_tool_specs(tools_path, problems) if tools_path else []
    persona_path = fieldval("PERSONA_FILE", Path)
    persona = _load_persona(persona_path, problems) if persona_path else {}
    for key in ("instructions", "greeting"):
        var = f"PERSONA_{key.upper()}"
        if key in persona and effective.get(var):
            problems.append(Problem(var, f"is set and PERSONA_FILE also gives `{key}`; keep one"))

    has_db = bool(effective.get("POSTGRES_URL"))
    known = {spec["name"] for spec in specs} | set(BUILTIN_TOOLS)
    if "ENABLED_TOOLS" in effective:
        enabled = _split_list(effective["ENABLED_TOOLS"])
        for name in enabled:
            if name not in known:
                source = f"TOOLS_FILE {str(tools_path)!r}" if tools_path else "TOOLS_FILE (unset)"
                problems.append(
                    Problem(
                        "ENABLED_TOOLS",
                        f"names {name!r}, which is neither a built-in tool nor defined in {source}",
                    )
                )
        if "search_documents" in enabled and not has_db:
            problems.append(
                Problem("ENABLED_TOOLS", "enables search_documents, which needs POSTGRES_URL")
            )
    else:
        enabled = [spec["name"] for spec in specs] + (["search_documents"] if has_db else [])
    n8n_tools = [spec for spec in specs if spec["name"] in enabled]
    if n8n_tools and not effective.get("N8N_WEBHOOK_BASE"):
        names = ", ".join(spec["name"] for spec in n8n_tools)
        problems.append(
            Problem(
                "N8N_WEBHOOK_BASE",
                f"is required because n8n tools are enabled "
                f"({names}); e.g. -e N8N_WEBHOOK_BASE="
                "https://n8n.example.com/webhook",
            )
        )
    config_path = fieldval("CONFIG_PATH", Path) or Path(DEFAULT_CONFIG_PATH)
    if check_output_dir:
        _check_config_dir(config_path, problems)

    if problems or settings is None:
        raise ConfigError(problems)
    return _document(settings, specs, enabled, persona)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _document(
    s: Settings, specs: list[dict[str, Any]], enabled: list[str], persona: dict[str, str]
) -> dict[str, Any]:
    llm_key = s.llm_api_key.get_secret_value()
    base = s.n8n_webhook_base
    tools: list[dict[str, Any]] = []
    for spec in specs:
        if spec["name"] in enabled:
            tools.append(
                {
                    "name": spec["name"],
                    "kind": "n8n",
                    "description": spec["description"],
                    "parameters": spec["parameters"],
                    "url": f"{base}/{s.department_id}/{spec['name']}",
                    "timeout_s": float(spec["timeout"] or s.tool_timeout),
                }
            )
    if "search_documents" in enabled:
        tools.append(
            {
                "name": "search_documents",
                "kind": "builtin",
                "description": f"Search the {s.department_name} department's documents "
                "(policies, guides, records) and return the best matches with "
                "snippets.",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string", "description": "What to look for."}},
                    "required": ["query"],
                },
                "url": None,
                "timeout_s": float(s.tool_timeout),
            }
        )
    credentials = {
        "LIVEKIT_API_KEY": s.livekit_api_key.get_secret_value(),
        "LIVEKIT_API_SECRET": s.livekit_api_secret.get_secret_value(),
        "LLM_API_KEY": llm_key,
        "STT_API_KEY": _secret(s.stt_api_key) or llm_key,
        "TTS_API_KEY": _secret(s.tts_api_key) or llm_key,
    }
    instructions = (
        s.persona_instructions
        or persona.get("instructions")
        or (
            f"You are the voice assistant of the {s.department_name} department. Answer callers "
            f"briefly and politely, use your tools for facts about {s.department_name}, and say so "
            "plainly when a tool fails or you do not know."
        )
    )
    greeting = (
        s.persona_greeting
        or persona.get("greeting")
        or (f"Hello, you have reached the {s.department_name} assistant. How can I help you today?")
    )
    return {
        "version": CONFIG_VERSION,
        "department": {
            "id": s.department_id,
            "name": s.department_name,
            "schema": schema_name(s.department_id),
            "role": role_name(s.department_id),
        },
        "persona": {"instructions": instructions, "greeting": greeting},
        "livekit": {
            "url": s.livekit_url,
            "api_key": credentials["LIVEKIT_API_KEY"],
            "api_secret": credentials["LIVEKIT_API_SECRET"],
            "agent_name": s.livekit_agent_name or s.department_id,
            "max_retry": s.livekit_max_retry,
        },
        "llm": {"base_url": s.llm_base_url, "api_key": llm_key, "model": s.llm_model},
        "stt": {
            "base_url": s.stt_base_url or s.llm_base_url,
            "api_key": credentials["STT_API_KEY"],
            "model": s.stt_model,
            "language": s.stt_language,
        },
        "tts": {
            "base_url": s.tts_base_url or s.llm_base_url,
            "api_key": credentials["TTS_API_KEY"],
            "model": s.tts_model,
            "voice": s.tts_voice,
        },
        "n8n": {"webhook_base": base, "webhook_secret": _secret(s.n8n_webhook_secret)},
        "tools": tools,
        "database": {
            "url": _secret(s.postgres_url),
            "schema": schema_name(s.department_id),
            "wait_timeout_s": s.db_wait_timeout,
            "run_migrations": s.run_migrations,
            "queue_size": s.db_queue_size,
        },
        "runtime": {
            "port": s.port,
            "drain_timeout_s": s.drain_timeout,
            "num_idle_processes": s.num_idle_processes,
            "preload_local_inference": s.preload_local_inference,
            "load_threshold": s.load_threshold,
            "log_level": s.log_level,
            "log_format": s.log_format,
            "otel_exporter_otlp_endpoint": s.otel_exporter_otlp_endpoint,
        },
        "security": {
            "data_encryption_key": _secret(s.data_encryption_key),
            "data_encryption_old_keys": _split_list(_secret(s.data_encryption_old_keys)),
        },
        "placeholder_credentials": sorted(
            name for name, value in credentials.items() if is_placeholder(value)
        ),
        "config_path": str(s.config_path),
    }


# --- files ---------------------------------------------------------------------------------------
def dump_yaml(document: Mapping[str, Any]) -> str:
    """Serialize with the YAML emitter (never string templates): every value round-trips."""
    return yaml.dump(dict(document), Dumper=Dumper, sort_keys=False, allow_unicode=True, width=4096)


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `text` to `path` so that readers see the old file or the whole new one, never part.

    Temp file in the same directory, fsync, rename over the target, fsync the directory.
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def redacted(document: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the config document with every secret value replaced by `***`."""
    secrets = {
        "api_key",
        "api_secret",
        "webhook_secret",
        "url",
        "data_encryption_key",
        "data_encryption_old_keys",
    }

    def walk(node: Any, key: str | None, section: str | None) -> Any:
        # A secret is hidden whole, whatever its shape (DATA_ENCRYPTION_OLD_KEYS is a list).
        sensitive = key in secrets and not (key == "url" and section != "database")
        if sensitive and node not in (None, [], ""):
            return "***"
        if isinstance(node, dict):
            return {k: walk(v, k, key if section is None else section) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, None, section) for v in node]
        return node

    return walk(dict(document), None, None)  # type: ignore[no-any-return]


# --- README table ----------------------------------------------------------------------------
def env_table() -> str:
    """The README's variable table, generated from the model."""
    rows = ["| Variable | Required | Default | Secret | Description |", "|---|---|---|---|---|"]
    for var in variables():
        required = (
            "yes" if var.required else (f"when {var.required_when}" if var.required_when else "no")
        )
        if var.required or var.default is None:
            default = ""
        elif isinstance(var.default, bool):
            default = f"`{str(var.default).lower()}`"
        else:
            default = f"`{var.default}`"
        secret = f"yes (`{var.name}_FILE`)" if var.secret else ""
        description = var.description.replace("|", "\\|")
        rows.append(f"| `{var.name}` | {required} | {default} | {secret} | {description} |")
    return "\n".join(rows) + "\n"


# --- CLI -----------------------------------------------------------------------------------------
def _summary(document: Mapping[str, Any]) -> str:
    safe = redacted(document)
    return dump_yaml(safe)


def main(argv: Iterable[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    try:
        return _run(argv, env)
    except Exception as exc:  # noqa: BLE001 - a bug must exit 70, never 1, and never echo values
        where = traceback.extract_tb(exc.__traceback__)[-1]
        sys.stderr.write(
            f"internal error: {type(exc).__name__} at {Path(where.filename).name}:{where.lineno} "
            "(message withheld: it may hold a configuration value); please report it\n"
        )
        return EX_SOFTWARE


def _run(argv: Iterable[str] | None, env: Mapping[str, str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aio_agent.config",
        description="Validate the environment and render the agent's config file.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("render", help="validate the environment and write $CONFIG_PATH atomically")
    sub.add_parser("check", help="validate and print a redacted summary (writes nothing)")
    sub.add_parser("env-table", help="print the README's environment variable table")
    sub.add_parser("secret-names", help="print the variables that accept NAME_FILE")
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    environ = os.environ if env is None else env

    if args.command == "env-table":
        sys.stdout.write(env_table())
        return EX_OK
    if args.command == "secret-names":
        sys.stdout.write("\n".join(secret_names()) + "\n")
        return EX_OK
    try:
        document = build_config(environ, check_output_dir=args.command == "render")
    except ConfigError as exc:
        sys.stderr.write(exc.report() + "\n")
        return EX_CONFIG
    if args.command == "check":
        sys.stdout.write(_summary(document))
        return EX_OK
    path = Path(document["config_path"])
    try:
        write_atomic(path, dump_yaml(document))
    except OSError as exc:
        # The directory passed validation (writable), so this is the machine (disk full, a
        # read-only remount), not the configuration: nothing was written, the old file stands.
        sys.stderr.write(
            f"cannot write the config file CONFIG_PATH={str(path)!r}: {exc.strerror}; "
            "nothing was written (check free space and the mount)\n"
        )
        return EX_SOFTWARE
    return EX_OK


if __name__ == "__main__":
    raise SystemExit(main())

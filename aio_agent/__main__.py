"""`python -m aio_agent start`: run the department's voice worker from the rendered config.

`python -m aio_agent chat "message" [...] [--json]`: talk to the same agent in text (no call);
see aio_agent.chat.

Reads only the file at $CONFIG_PATH (default /app/config/config.yaml) that
`python -m aio_agent.config render` wrote; no setting is read from the environment here.

Exit codes (DESIGN.md): 0 clean stop (SIGTERM/SIGINT, calls drained) · 1 forced by a second
signal · 64 usage · 69 LiveKit stayed unreachable (retries exhausted) · 70 internal error (also:
the probe port is taken) · 78 missing or invalid config file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from aio_agent.exitcodes import EX_CONFIG, EX_SOFTWARE, EX_USAGE
from aio_agent.rendered import DEFAULT_CONFIG_PATH, load_rendered

DEFAULT_MAX_RETRY = 16  # the framework's own default: about 130 s of attempts
DEFAULT_LOAD_THRESHOLD = 0.7  # the framework's production default


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2; DESIGN.md says 64
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m aio_agent",
        description="AIO Federation department voice agent (LiveKit worker).",
        epilog="Exit codes: 0 stopped cleanly, 1 forced stop, 64 usage, 69 LiveKit unreachable, "
        "70 internal error, 78 invalid configuration.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    start = commands.add_parser(
        "start",
        help="run the worker until SIGTERM",
        description="Register with LiveKit as the department's agent and take its calls. "
        "Probes /healthz, /readyz and /metrics listen on runtime.port.",
    )
    start.add_argument(
        "--config",
        default=None,
        help=f"rendered config file (default: $CONFIG_PATH or {DEFAULT_CONFIG_PATH})",
    )
    start.add_argument(
        "--livekit-max-retry",
        type=int,
        default=None,
        metavar="N",
        help="connection attempts to LiveKit before exiting 69 (default: LIVEKIT_MAX_RETRY "
        f"from the config, else {DEFAULT_MAX_RETRY}: ~130 s)",
    )
    start.add_argument(
        "--load-threshold",
        type=float,
        default=None,
        metavar="X",
        help="CPU load (0-1, of this container's cgroup) above which the worker reports itself "
        "full and declines new calls (default: LOAD_THRESHOLD from the config, else "
        f"{DEFAULT_LOAD_THRESHOLD}; `inf` never declines)",
    )
    chat = commands.add_parser(
        "chat",
        help="talk to the department's agent in text (no call, no audio)",
        description="Run each MESSAGE as one text turn of a session with the department's agent "
        "and tools (tool calls are real and recorded in tool_calls); print the transcript. "
        "Exit 0 answered, 69 the LLM did not answer, 78 invalid config.",
    )
    chat.add_argument("messages", nargs="+", metavar="MESSAGE", help="what the user says")
    chat.add_argument("--json", action="store_true", help="print the transcript as JSON")
    chat.add_argument(
        "--config",
        default=None,
        help=f"rendered config file (default: $CONFIG_PATH or {DEFAULT_CONFIG_PATH})",
    )
    chat.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds one turn may take before exiting 69 (default 60)",
    )
    return parser


def _load(path: str) -> dict[str, Any] | None:
    try:
        return load_rendered(path)
    except FileNotFoundError:
        print(
            f"error: config file {path!r} does not exist; render it first with "
            "`python -m aio_agent.config render` (the entrypoint does this)",
            file=sys.stderr,
        )
    except (OSError, ValueError) as exc:
        print(f"error: cannot read config file {path!r}: {exc}", file=sys.stderr)
    return None


def start(
    config_path: str, *, max_retry: int | None = None, load_threshold: float | None = None
) -> int:
    config = _load(config_path)
    if config is None:
        return EX_CONFIG
    if max_retry is None:
        max_retry = int((config.get("livekit") or {}).get("max_retry", DEFAULT_MAX_RETRY))
    if load_threshold is None:
        load_threshold = float(
            (config.get("runtime") or {}).get("load_threshold", DEFAULT_LOAD_THRESHOLD)
        )
    from aio_agent import logs  # noqa: PLC0415 - keep --help fast

    try:
        runtime = config["runtime"]
        level, fmt = runtime["log_level"], runtime["log_format"]
        department_id = config["department"]["id"]
    except (KeyError, TypeError) as exc:
        print(
            f"error: config file {config_path!r} lacks {exc}; render it again with "
            "`python -m aio_agent.config render`",
            file=sys.stderr,
        )
        return EX_CONFIG
    logs.configure(level, fmt, department_id=department_id)
    log = logs.get_logger("aio_agent.main")
    if not (config.get("database") or {}).get("url"):
        log.warning("running without persistence", reason="POSTGRES_URL is not set")
    for name in config.get("placeholder_credentials") or []:
        log.warning("placeholder credential", variable=name, hint=f"set {name} to a real value")

    try:
        from aio_agent.store import Store  # noqa: PLC0415
        from aio_agent.telemetry import setup_tracing, shutdown_tracing  # noqa: PLC0415
        from aio_agent.worker import DepartmentWorker  # noqa: PLC0415

        setup_tracing(config)
        worker = DepartmentWorker(
            config,
            store=Store.from_config(config),
            max_retry=max_retry,
            load_threshold=load_threshold,
        )
        try:
            return asyncio.run(worker.run())
        finally:
            shutdown_tracing()  # export the spans still batched
    except Exception as exc:
        log.exception("worker_crashed", error=type(exc).__name__)
        return EX_SOFTWARE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "chat":
        if not args.timeout > 0:
            print("error: --timeout must be > 0", file=sys.stderr)
            return EX_USAGE
        config = _load(args.config or os.environ.get("CONFIG_PATH") or DEFAULT_CONFIG_PATH)
        if config is None:
            return EX_CONFIG
        from aio_agent.chat import chat  # noqa: PLC0415 - keep --help fast

        return chat(config, args.messages, as_json=args.json, timeout_s=args.timeout)
    if args.command != "start":
        _parser().print_help(sys.stderr)
        return EX_USAGE
    if args.livekit_max_retry is not None and args.livekit_max_retry < 0:
        print("error: --livekit-max-retry must be >= 0", file=sys.stderr)
        return EX_USAGE
    if args.load_threshold is not None and not args.load_threshold > 0:
        print("error: --load-threshold must be > 0", file=sys.stderr)
        return EX_USAGE
    path = args.config or os.environ.get("CONFIG_PATH") or DEFAULT_CONFIG_PATH
    return start(path, max_retry=args.livekit_max_retry, load_threshold=args.load_threshold)


if __name__ == "__main__":
    sys.exit(main())

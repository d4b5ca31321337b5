"""The department worker: registers with LiveKit, takes the calls dispatched to it, stops cleanly.

Choices (measured by bench/worker_bench.py, explained in the README):
- Explicit dispatch. The worker registers with `agent_name = livekit.agent_name` (the department
  id by default) and accepts only jobs dispatched to that name; a job for another name is
  declined with `terminate=False` so LiveKit can still hand it to the right worker.
- THREAD job executor. Each call runs in its own thread and event loop inside this process
  instead of a forked job process, so the process has one metrics registry (what /metrics shows),
  one Store (one pool, one write queue, flushed once on shutdown) and the worker's registration
  state that /readyz reports. Idle memory is one interpreter (no forkserver, no prewarmed
  process images). The price: a call that crashes the interpreter takes the others with it, and
  CPU-heavy work shares one GIL (VAD and turn detection run in native code).
- Our own run loop instead of `cli.run_app`: SIGTERM/SIGINT make /readyz 503 at once, stop new
  jobs, let active calls finish up to runtime.drain_timeout_s, flush the DB queue, exit 0 (a
  second signal exits 1 at once). When the LiveKit connection is given up after `max_retry`
  attempts the framework would exit 0; we exit 69 so restart policies act.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from typing import Any

import structlog
from livekit.agents import AgentServer, JobContext, JobExecutorType, JobProcess, JobRequest

from aio_agent import metrics, pipeline
from aio_agent.exitcodes import EX_OK, EX_SOFTWARE, EX_UNAVAILABLE
from aio_agent.lifecycle import LoopBoundStore, WorkerState
from aio_agent.logs import get_logger
from aio_agent.probes import ProbeServer

log = get_logger(__name__)

EX_FORCED = 1

# The framework's own retry budget: 16 attempts, delays 0, 2, 4 ... 10 s (about 130 s in all).
DEFAULT_MAX_RETRY = 16
STORE_FLUSH_TIMEOUT_S = 10.0


class DepartmentWorker:
    """One department's LiveKit worker plus our probes, store and shutdown handling."""

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        store: Any,
        max_retry: int = DEFAULT_MAX_RETRY,
        load_threshold: float = 0.7,
        probe_host: str = "0.0.0.0",  # noqa: S104 - probes must be reachable from outside
    ) -> None:
        self.config = config
        self.store = store
        self.max_retry = max_retry
        self.load_threshold = load_threshold
        self.department_id: str = config["department"]["id"]
        self.agent_name: str = config["livekit"]["agent_name"]
        runtime = config["runtime"]
        self.drain_timeout = int(runtime["drain_timeout_s"])
        self.state = WorkerState(db_enabled=bool(store.enabled), db_ping=store.ping)
        self.probes = ProbeServer(self.state, host=probe_host, port=int(runtime["port"]))
        self.server: AgentServer | None = None
        self._store_proxy: LoopBoundStore | None = None
        self._signals = 0
        self._stop = asyncio.Event()

    # --- the LiveKit server -----------------------------------------------------------------
    def build_server(self) -> AgentServer:
        livekit = self.config["livekit"]
        runtime = self.config["runtime"]
        server = AgentServer(
            job_executor_type=JobExecutorType.THREAD,
            num_idle_processes=int(runtime["num_idle_processes"]),
            drain_timeout=self.drain_timeout,
            max_retry=self.max_retry,
            load_threshold=self.load_threshold,
            ws_url=livekit["url"],
            api_key=livekit["api_key"],
            api_secret=livekit["api_secret"],
            # The framework's own health port is internal and not our signal: loopback, any port.
            host="127.0.0.1",
            port=0,
            setup_fnc=self._setup_job_runner,
            log_level=_framework_level(str(runtime["log_level"])),
        )
        server.rtc_session(
            self._entrypoint, agent_name=self.agent_name, on_request=self._on_request
        )
        server.on("worker_registered", self._on_registered)
        self.state.livekit_link = lambda: not getattr(server, "_connecting", False)
        return server

    def _on_registered(self, worker_id: str, server_info: Any) -> None:
        self.state.registered = True
        self.state.worker_id = worker_id
        log.info(
            "livekit_registered",
            worker_id=worker_id,
            agent_name=self.agent_name,
            server_version=getattr(server_info, "version", ""),
        )

    def _setup_job_runner(self, proc: JobProcess) -> None:
        # Runs synchronously in each job thread before its event loop exists, so what is bound
        # here is copied into every task of that thread: the framework's own lines logged for
        # the call carry department_id too.
        structlog.contextvars.bind_contextvars(department_id=self.department_id)
        proc.userdata["department_id"] = self.department_id

    async def _on_request(self, request: JobRequest) -> None:
        job = request.job
        if job.agent_name != self.agent_name:
            # Explicit dispatch means LiveKit should never offer this; if it does, decline
            # without terminating so the job can still reach its own department.
            log.warning(
                "job_declined",
                reason="dispatched to another agent",
                job_id=job.id,
                job_agent_name=job.agent_name,
                agent_name=self.agent_name,
            )
            await request.reject(terminate=False)
            return
        await request.accept(
            identity=f"agent-{self.department_id}-{job.id}",
            name=f"{self.config['department']['name']} assistant",
            attributes={"department_id": self.department_id},
        )

    # --- one call -------------------------------------------------------------------------------
    async def _entrypoint(self, ctx: JobContext) -> None:
        job = ctx.job
        session_id = job.id
        structlog.contextvars.bind_contextvars(
            department_id=self.department_id, job_id=job.id, session_id=session_id
        )
        log.info(
            "call_started",
            room=job.room.name,
            job_agent_name=job.agent_name,
            worker_id=ctx.worker_id,
        )
        metrics.ACTIVE_SESSIONS.inc()
        ended = False

        async def end_call() -> None:
            nonlocal ended
            if not ended:
                ended = True
                metrics.ACTIVE_SESSIONS.dec()
                log.info("call_ended", room=job.room.name)

        ctx.add_shutdown_callback(end_call)
        try:
            await run_call(self.config, ctx, store=self._store_proxy, session_id=session_id)
        except Exception:
            await end_call()
            raise

    # --- run and stop ---------------------------------------------------------------------------
    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            os._exit(EX_FORCED)
        self.request_stop(signal.Signals(signum).name)

    def request_stop(self, reason: str) -> None:
        """Begin a graceful stop (what SIGTERM does): not ready at once, then drain."""
        self.state.draining = True  # /readyz says 503 from this moment on
        log.info("shutdown_requested", reason=reason)
        self._stop.set()

    async def run(self, *, handle_signals: bool = True) -> int:
        """Run until stopped; returns the process exit code (0, 69 or 70)."""
        loop = asyncio.get_running_loop()
        self._store_proxy = LoopBoundStore(self.store, loop)
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await self.probes.start()
        except OSError as exc:
            log.error("probe_port_unavailable", port=self.probes.port, error=str(exc))
            return EX_SOFTWARE
        await self.store.start()
        apply_preload_choice(self.config)
        self.server = server = self.build_server()
        run_task = asyncio.create_task(server.run(devmode=False), name="livekit-worker")
        stop_task = asyncio.create_task(self._stop.wait(), name="stop-signal")
        log.info(
            "worker_starting",
            livekit_url=self.config["livekit"]["url"],
            agent_name=self.agent_name,
            probe_port=self.probes.port,
            max_retry=self.max_retry,
        )
        await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        code = EX_OK
        if run_task.done():
            code = self._exit_code_of(run_task)
        else:
            await self._drain(server)
        stop_task.cancel()
        with contextlib.suppress(Exception):
            await server.aclose()
        if not run_task.done():
            run_task.cancel()
        with contextlib.suppress(BaseException):
            await run_task
        await self.store.stop(flush_timeout=STORE_FLUSH_TIMEOUT_S)
        await self.probes.stop()
        log.info("worker_stopped", exit_code=code)
        return code

    async def _drain(self, server: AgentServer) -> None:
        active = len(server.active_jobs)
        log.info("draining", active_calls=active, drain_timeout_s=self.drain_timeout)
        # server.drain(timeout=0) would wait forever; 0 here means "do not wait for calls".
        timeout = self.drain_timeout if self.drain_timeout > 0 else 0.01
        try:
            await server.drain(timeout=timeout)
            log.info("drained")
        except TimeoutError:
            log.warning(
                "drain_timeout",
                still_active=len(server.active_jobs),
                drain_timeout_s=self.drain_timeout,
            )

    def _exit_code_of(self, run_task: asyncio.Task[None]) -> int:
        exc = None if run_task.cancelled() else run_task.exception()
        if exc is None:
            log.error("livekit_worker_stopped_unexpectedly")
            return EX_SOFTWARE
        if self.server is not None and getattr(self.server, "_connection_failed", False):
            log.error(
                "livekit_unreachable",
                url=self.config["livekit"]["url"],
                max_retry=self.max_retry,
                ever_registered=self.state.registered,
                error=str(exc),
            )
            return EX_UNAVAILABLE
        log.error("livekit_worker_failed", error=f"{type(exc).__name__}: {exc}")
        return EX_SOFTWARE


def apply_preload_choice(config: Mapping[str, Any]) -> None:
    """runtime.preload_local_inference: load the VAD and end-of-turn models at start-up.

    Calls run on threads of this process, so the framework's per-runner warm-up would otherwise
    load the ~244 MB end-of-turn weights into the first idle runner whatever we chose; its
    LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE switch is set from our config (the one place this
    process sets a framework variable). When false, the models load on the first call.
    """
    preload = bool(config["runtime"].get("preload_local_inference"))
    os.environ["LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE"] = "1" if preload else "0"
    if preload:
        import livekit.local_inference as li  # noqa: PLC0415

        li.init_vad()
        li.init_eot()


def _framework_level(level: str) -> str:
    """Our LOG_LEVEL in the framework's spelling (it knows WARN, not WARNING)."""
    level = level.upper()
    return "WARN" if level == "WARNING" else level


async def run_call(
    config: Mapping[str, Any], ctx: JobContext, *, store: Any, session_id: str
) -> None:
    """Join the room, wait for the caller, restore their context, greet them, save on hang-up."""
    from aio_agent.tools import N8nToolClient  # noqa: PLC0415 - per call, on the call's loop

    has_n8n = any(spec["kind"] == "n8n" for spec in config.get("tools") or [])
    tool_client = N8nToolClient(dict(config), store=store) if has_n8n else None
    if tool_client is not None:
        ctx.add_shutdown_callback(tool_client.aclose)

    await ctx.connect()
    participant = await ctx.wait_for_participant()
    caller_id = participant.identity
    previous = await store.load_context(caller_id) if store is not None and store.enabled else None
    log.info("caller_joined", returning_caller=previous is not None)

    session = pipeline.build_session(config)
    tools = pipeline.build_tools(
        config, session_id=session_id, tool_client=tool_client, store=store
    )
    agent = pipeline.build_agent(config, tools=tools, caller_context=previous)

    async def save_context() -> None:
        if store is not None and store.enabled:
            context = pipeline.context_from_history(
                session.history, session_id=session_id, previous=previous
            )
            store.save_context(caller_id=caller_id, session_id=session_id, context=context)

    ctx.add_shutdown_callback(save_context)
    # record=False: no audio, transcript or trace upload to LiveKit Cloud's observability, even
    # when the project enables recording; calls are persisted only in the department's schema.
    await session.start(agent=agent, room=ctx.room, record=False)
    session.say(config["persona"]["greeting"])

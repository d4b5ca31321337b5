"""A stand-in for a LiveKit server's agent-dispatch side (what our workers talk to).

Stands in for: a LiveKit server (self-hosted `livekit-server` or LiveKit Cloud) as seen by an
Agents worker.

Speaks: the real worker protocol. A websocket at `/agent` carrying binary protobuf
`livekit.WorkerMessage` (worker -> server) and `livekit.ServerMessage` (server -> worker) from the
`livekit-protocol` package. The upgrade must carry `Authorization: Bearer <JWT>` signed HS256 with
the API secret, `iss` = the API key and the video grant `agent: true` (401 otherwise). The first
server message answers `register` with `register{worker_id, server_info}`. A dispatch follows
LiveKit's explicit-dispatch rule: only a worker registered with the job's `agent_name` is asked
(`availability` request); when it answers available the server sends `assignment{job, url,
token}`; the worker's `update_job` statuses are recorded per job.

Also: `GET /` answers 200 (a container healthcheck), `POST /_fake/dispatch` with JSON
`{"agent_name", "room", "participant_identity"?}` dispatches a job and returns what happened,
`GET /_fake/state` returns every worker and job as JSON, and `GET|websocket /rtc` (the room
signalling endpoint) accepts the upgrade and then stays silent for `rtc_hold_s` before closing:
a room that never lets the agent in.

Does not: carry media or run rooms (an entrypoint that joins the room fails after the hold),
balance load, resume or migrate jobs, answer pings with load-based decisions, or implement the
Twirp room/egress APIs. Runnable on its own for compose stacks:
`python -m tests.fakes.livekit_server --port 7880 --api-key K --api-secret S`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import secrets
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import WSMsgType, web
from jwt.warnings import InsecureKeyLengthWarning
from livekit.protocol import agent, models

from tests.fakes.serving import serve

ASSIGN_TIMEOUT_S = 5.0


@dataclass
class JobRecord:
    """One dispatched job as the fake saw it."""

    job_id: str
    agent_name: str
    room: str
    worker_id: str | None = None
    offered_to: list[str] = field(default_factory=list)
    accepted: bool | None = None
    statuses: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "agent_name": self.agent_name,
            "room": self.room,
            "worker_id": self.worker_id,
            "offered_to": list(self.offered_to),
            "accepted": self.accepted,
            "statuses": list(self.statuses),
            "error": self.error,
        }


@dataclass
class WorkerRecord:
    """One registered worker connection and everything it sent or was offered."""

    worker_id: str
    agent_name: str
    version: str
    ws: web.WebSocketResponse
    connected: bool = True
    status: str = "WS_AVAILABLE"
    updates: int = 0
    offered_jobs: list[str] = field(default_factory=list)
    assigned_jobs: list[str] = field(default_factory=list)
    pending: dict[str, asyncio.Future[agent.AvailabilityResponse]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "agent_name": self.agent_name,
            "version": self.version,
            "connected": self.connected,
            "status": self.status,
            "updates": self.updates,
            "offered_jobs": list(self.offered_jobs),
            "assigned_jobs": list(self.assigned_jobs),
        }


class FakeLiveKitServer:
    """In-process fake; `await start()` then point LIVEKIT_URL at `self.url`."""

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rtc_hold_s: float = 30.0,
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.host = host
        self.port = port
        self.rtc_hold_s = rtc_hold_s
        self.workers: dict[str, WorkerRecord] = {}
        self.jobs: dict[str, JobRecord] = {}
        self.rejected_auth = 0
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._rtc_sockets: set[web.WebSocketResponse] = set()

    # --- lifecycle --------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._root)
        app.router.add_get("/agent", self._agent_ws)
        app.router.add_get("/rtc", self._rtc)
        app.router.add_get("/rtc/validate", self._rtc_validate)
        app.router.add_post("/_fake/dispatch", self._http_dispatch)
        app.router.add_get("/_fake/state", self._http_state)
        return app

    async def start(self) -> str:
        self._runner, self.port = await serve(self.app(), self.host, self.port)
        return self.url

    async def stop(self) -> None:
        for worker in self.workers.values():
            if worker.connected:
                await worker.ws.close()
        for ws in list(self._rtc_sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def kick_workers(self) -> None:
        """Close every worker connection (a server restart as the workers see it)."""
        for worker in self.workers.values():
            if worker.connected:
                await worker.ws.close()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # --- what tests ask -----------------------------------------------------------------------
    def connected_workers(self, agent_name: str | None = None) -> list[WorkerRecord]:
        return [
            w
            for w in self.workers.values()
            if w.connected and (agent_name is None or w.agent_name == agent_name)
        ]

    async def wait_for(self, predicate: Any, within: float = 10.0) -> None:
        """Wait until `predicate()` is true (re-checked whenever a message arrives)."""
        deadline = time.monotonic() + within
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("fake livekit: condition not met in time")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))

    async def dispatch(
        self,
        agent_name: str,
        room: str = "call-1",
        *,
        participant_identity: str = "caller-1",
        to_worker: str | None = None,
    ) -> JobRecord:
        """Dispatch a job to `agent_name` like LiveKit's explicit dispatch does.

        `to_worker` bypasses the name rule and offers the job to that worker id anyway (a
        misrouting server), so a test can prove the worker itself refuses foreign jobs.
        """
        job_id = f"AJ_{next(self._ids):04d}{secrets.token_hex(3)}"
        record = JobRecord(job_id=job_id, agent_name=agent_name, room=room)
        self.jobs[job_id] = record
        if to_worker is not None:
            candidates = [w for w in self.connected_workers() if w.worker_id == to_worker]
        else:
            candidates = [
                w for w in self.connected_workers(agent_name) if w.status == "WS_AVAILABLE"
            ]
        job = agent.Job(
            id=job_id,
            dispatch_id=f"AD_{job_id}",
            type=agent.JobType.JT_ROOM,
            room=models.Room(sid=f"RM_{room}", name=room),
            participant=models.ParticipantInfo(identity=participant_identity, sid="PA_caller"),
            agent_name=agent_name,
        )
        for worker in candidates:
            record.offered_to.append(worker.worker_id)
            worker.offered_jobs.append(job_id)
            answer = await self._ask(worker, job)
            if answer is None or not answer.available:
                continue
            record.accepted = True
            record.worker_id = worker.worker_id
            worker.assigned_jobs.append(job_id)
            token = self._room_token(room, answer.participant_identity or "agent")
            msg = agent.ServerMessage(
                assignment=agent.JobAssignment(job=job, url=self.url, token=token)
            )
            await worker.ws.send_bytes(msg.SerializeToString())
            self._notify()
            return record
        record.accepted = False if candidates else None
        record.error = "no worker accepted" if candidates else f"no worker named {agent_name!r}"
        self._notify()
        return record

    # --- protocol -----------------------------------------------------------------------------
    async def _ask(self, worker: WorkerRecord, job: agent.Job) -> agent.AvailabilityResponse | None:
        future: asyncio.Future[agent.AvailabilityResponse] = (
            asyncio.get_running_loop().create_future()
        )
        worker.pending[job.id] = future
        msg = agent.ServerMessage(availability=agent.AvailabilityRequest(job=job))
        try:
            await worker.ws.send_bytes(msg.SerializeToString())
            return await asyncio.wait_for(future, ASSIGN_TIMEOUT_S)
        except (TimeoutError, ConnectionResetError):
            return None
        finally:
            worker.pending.pop(job.id, None)

    def _check_token(self, request: web.Request, *, need_agent: bool) -> dict[str, Any] | None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() or request.query.get("access_token", "")
        try:
            with _short_dev_secrets_allowed():
                claims = jwt.decode(
                    token,
                    self.api_secret,
                    algorithms=["HS256"],
                    issuer=self.api_key,
                    options={"require": ["iss", "exp"]},
                )
        except jwt.PyJWTError:
            return None
        if need_agent and not (claims.get("video") or {}).get("agent"):
            return None
        return claims

    def _room_token(self, room: str, identity: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.api_key,
            "sub": identity,
            "nbf": now,
            "exp": now + 3600,
            "kind": "agent",
            "video": {"roomJoin": True, "room": room, "agent": True},
        }
        with _short_dev_secrets_allowed():
            return jwt.encode(claims, self.api_secret, algorithm="HS256")

    async def _agent_ws(self, request: web.Request) -> web.StreamResponse:
        if self._check_token(request, need_agent=True) is None:
            self.rejected_auth += 1
            self._notify()
            return web.Response(status=401, text="invalid authorization token")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        worker: WorkerRecord | None = None
        try:
            async for raw in ws:
                if raw.type != WSMsgType.BINARY:
                    continue
                msg = agent.WorkerMessage()
                msg.ParseFromString(raw.data)
                which = msg.WhichOneof("message")
                if which == "register":
                    worker = await self._register(ws, msg.register)
                elif worker is None:
                    await ws.close(message=b"register first")
                    break
                elif which == "availability":
                    future = worker.pending.get(msg.availability.job_id)
                    if future is not None and not future.done():
                        future.set_result(msg.availability)
                elif which == "update_worker":
                    worker.updates += 1
                    worker.status = agent.WorkerStatus.Name(msg.update_worker.status)
                elif which == "update_job":
                    job = self.jobs.get(msg.update_job.job_id)
                    if job is not None:
                        job.statuses.append(agent.JobStatus.Name(msg.update_job.status))
                        job.error = msg.update_job.error or job.error
                elif which == "ping":
                    pong = agent.ServerMessage(
                        pong=agent.WorkerPong(
                            last_timestamp=msg.ping.timestamp, timestamp=int(time.time() * 1000)
                        )
                    )
                    await ws.send_bytes(pong.SerializeToString())
                self._notify()
        finally:
            if worker is not None:
                worker.connected = False
                for future in worker.pending.values():
                    if not future.done():
                        future.cancel()
            self._notify()
        return ws

    async def _register(
        self, ws: web.WebSocketResponse, request: agent.RegisterWorkerRequest
    ) -> WorkerRecord:
        worker_id = f"AW_{next(self._ids):04d}{secrets.token_hex(3)}"
        worker = WorkerRecord(
            worker_id=worker_id, agent_name=request.agent_name, version=request.version, ws=ws
        )
        self.workers[worker_id] = worker
        reply = agent.ServerMessage(
            register=agent.RegisterWorkerResponse(
                worker_id=worker_id,
                server_info=models.ServerInfo(
                    edition=models.ServerInfo.Edition.Standard,
                    version="fake",
                    protocol=16,
                    region="local",
                    node_id="fake-node",
                ),
            )
        )
        await ws.send_bytes(reply.SerializeToString())
        return worker

    async def _rtc(self, request: web.Request) -> web.StreamResponse:
        if self._check_token(request, need_agent=False) is None:
            return web.Response(status=401, text="invalid authorization token")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._rtc_sockets.add(ws)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.receive(), self.rtc_hold_s)
        finally:
            self._rtc_sockets.discard(ws)
            await ws.close()
        return ws

    async def _rtc_validate(self, _request: web.Request) -> web.Response:
        return web.Response(status=503, text="fake livekit: rooms are not implemented")

    async def _root(self, _request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def _http_dispatch(self, request: web.Request) -> web.Response:
        body = await request.json()
        record = await self.dispatch(
            str(body["agent_name"]),
            str(body.get("room", "call-1")),
            participant_identity=str(body.get("participant_identity", "caller-1")),
        )
        return web.json_response(record.as_dict())

    async def _http_state(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "workers": [w.as_dict() for w in self.workers.values()],
                "jobs": [j.as_dict() for j in self.jobs.values()],
                "rejected_auth": self.rejected_auth,
            }
        )

    def _notify(self) -> None:
        self._changed.set()


@contextlib.contextmanager
def _short_dev_secrets_allowed() -> Iterator[None]:
    """`livekit-server --dev` uses the 6-byte secret "secret"; the real server accepts it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.livekit_server",
        description="Fake LiveKit server: the /agent worker protocol, for tests and compose.",
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=7880)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--api-secret", required=True)
    parser.add_argument("--rtc-hold", type=float, default=30.0, help="seconds /rtc stays silent")
    args = parser.parse_args(argv)

    async def serve() -> None:
        server = FakeLiveKitServer(
            args.api_key, args.api_secret, host=args.host, port=args.port, rtc_hold_s=args.rtc_hold
        )
        await server.start()
        print(f"fake livekit listening on {server.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

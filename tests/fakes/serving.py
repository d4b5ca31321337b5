"""Starting an aiohttp app on a loopback port: the one piece every fake server shares."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def serve(
    app: web.Application, host: str, port: int, **runner_options: Any
) -> tuple[web.AppRunner, int]:
    """Start `app` on host:port (port 0 picks a free one); return the runner and the bound port."""
    runner = web.AppRunner(app, handle_signals=False, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes the bound socket only here
    assert server is not None
    bound = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    return runner, bound

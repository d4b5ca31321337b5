"""Our added latency per n8n tool call, against the local fake n8n (budget: p99 <= 5 ms).

For each of N rounds it times a bare aiohttp POST of a pre-built signed body to the fake (the
floor: HTTP + the fake's own handling) and a full `N8nToolClient.call` (body building, signing,
timeout scope, capped read, JSON parse, metrics, span, queueing the DB row) to the same route, in
alternating order. Added latency = client quantile - bare quantile. Prints the numbers; exits 1
when the added p99 is over budget.

    .venv/bin/python bench/tool_latency_bench.py [--calls 500] [--budget-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aio_agent.signing import request_body, signed_headers
from aio_agent.store import Store
from aio_agent.tools import N8nToolClient
from tests.fakes.n8n_server import FakeN8n

EXIT_OVER_BUDGET = 3  # tests/run-all.sh tells over-budget (3) from a crash (anything else)

SECRET = "bench-secret-0123456789abcdef"
ANSWER = {"policy": "Employees get 25 days of annual leave.", "source": "handbook", "page": 12}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(calls: int, warmup: int) -> tuple[list[float], list[float]]:
    async with FakeN8n(secret=SECRET) as n8n:
        n8n.answer("hr", "lookup_policy", ANSWER)
        config = {
            "department": {"id": "hr"},
            "n8n": {"webhook_base": n8n.base_url, "webhook_secret": SECRET},
            "tools": [{"name": "lookup_policy", "kind": "n8n", "timeout_s": 10.0,
                       "url": n8n.url("hr", "lookup_policy")}],
        }  # fmt: skip
        # An enabled store that is not started: record_tool_call pays its real queueing cost.
        store = Store(department_id="hr", url="postgresql://x@127.0.0.1:1/x", queue_size=10**6)
        client = N8nToolClient(config, store=store)
        bare: list[float] = []
        full: list[float] = []
        async with aiohttp.ClientSession() as http:
            for i in range(warmup + calls):
                rid = uuid.uuid4().hex
                body = request_body(department_id="hr", session_id="bench", tool="lookup_policy",
                                    arguments={"topic": "leave"}, request_id=rid)  # fmt: skip
                headers = signed_headers(SECRET, body, request_id=rid)
                order = (0, 1) if i % 2 else (1, 0)
                for which in order:
                    started = time.perf_counter()
                    if which == 0:
                        async with http.post(n8n.url("hr", "lookup_policy"), data=body,
                                             headers=headers) as resp:  # fmt: skip
                            await resp.json()
                            assert resp.status == 200
                        elapsed = time.perf_counter() - started
                        if i >= warmup:
                            bare.append(elapsed * 1000)
                    else:
                        result = await client.call("lookup_policy", {"topic": "leave"},
                                                   session_id="bench")  # fmt: skip
                        elapsed = time.perf_counter() - started
                        assert result.ok, result.error
                        if i >= warmup:
                            full.append(elapsed * 1000)
        await client.aclose()
        return bare, full


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--budget-ms", type=float, default=5.0)
    args = parser.parse_args()
    bare, full = asyncio.run(run(max(200, args.calls), args.warmup))
    rows = []
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        b, f = quantile(bare, q), quantile(full, q)
        rows.append((name, b, f, f - b))
    print(f"tool-call latency over {len(full)} calls (ms; bare = plain aiohttp POST, same fake)")
    print(f"{'':5}{'bare':>9}{'client':>9}{'added':>9}")
    for name, b, f, added in rows:
        print(f"{name:5}{b:9.3f}{f:9.3f}{added:9.3f}")
    print(f"mean {statistics.fmean(bare):9.3f}{statistics.fmean(full):9.3f}"
          f"{statistics.fmean(full) - statistics.fmean(bare):9.3f}")  # fmt: skip
    added_p99 = rows[-1][3]
    verdict = "OK" if added_p99 <= args.budget_ms else "OVER BUDGET"
    print(f"added p99 {added_p99:.3f} ms, budget {args.budget_ms:.1f} ms: {verdict}")
    return 0 if added_p99 <= args.budget_ms else EXIT_OVER_BUDGET


if __name__ == "__main__":
    raise SystemExit(main())

"""Worker start-to-ready time and idle memory, against the fake LiveKit server.

Starts `python -m aio_agent start` (a real process, rendered config, no database) pointed at
tests/fakes/livekit_server.py, and measures:
- ready_s: from spawning the process until GET /readyz answers 200 (registered with LiveKit);
- idle_pss_mb: proportional set size of the whole process tree (sum of Pss from
  /proc/<pid>/smaps_rollup over the worker and all its descendants) after it settled.

Targets: ready <= 4 s, idle PSS <= 250 MB. Exits 1 when a target is missed.

    .venv/bin/python bench/worker_bench.py [--runs 3] [--num-idle-processes 1]
        [--preload-local-inference false] [--after-call]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fakes.livekit_server import FakeLiveKitServer  # noqa: E402
from tests.support import PYTHON, process_env, render_config  # noqa: E402

EXIT_OVER_BUDGET = 3  # tests/run-all.sh tells over-budget (3) from a crash (anything else)

READY_TARGET_S = 4.0
PSS_TARGET_MB = 250.0
API_KEY = "devkey"
API_SECRET = "devsecret-devsecret-devsecret-00"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree(pid: int) -> list[int]:
    """pid and all its descendants (via /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def pss_mb(pid: int) -> float:
    total_kb = 0
    for member in tree(pid):
        try:
            text = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024.0


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the whole tree has used so far: less load-dependent than
    wall time on a shared machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def readyz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


async def one_run(args: argparse.Namespace) -> tuple[float, float, float, float | None]:
    fake = FakeLiveKitServer(API_KEY, API_SECRET, rtc_hold_s=0.2)
    url = await fake.start()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = render_config(
            Path(tmp),
            LIVEKIT_URL=url,
            LIVEKIT_API_KEY=API_KEY,
            LIVEKIT_API_SECRET=API_SECRET,
            PORT=str(port),
            NUM_IDLE_PROCESSES=str(args.num_idle_processes),
            PRELOAD_LOCAL_INFERENCE=args.preload_local_inference,
            LOG_LEVEL="INFO",
        )
        log_file = open(args.log, "ab")  # noqa: ASYNC230 - closed below
        started = time.perf_counter()
        proc = subprocess.Popen(  # noqa: ASYNC220 - the bench measures a real process
            [
                PYTHON,
                "-m",
                "aio_agent",
                "start",
                "--config",
                str(path),
                "--load-threshold",
                args.load_threshold,
            ],
            env=process_env({}),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            while readyz(port) != 200:
                if proc.poll() is not None or time.perf_counter() - started > 60:
                    raise RuntimeError(f"worker did not become ready (exit {proc.returncode})")
                await asyncio.sleep(0.05)
            ready_s = time.perf_counter() - started
            ready_cpu = cpu_s(proc.pid)
            await asyncio.sleep(args.settle)
            idle = pss_mb(proc.pid)
            after_call = None
            if args.after_call:
                await fake.dispatch("hr", "bench-room")
                await fake.wait_for(
                    lambda: any(
                        "JS_SUCCESS" in j.statuses or "JS_FAILED" in j.statuses
                        for j in fake.jobs.values()
                    ),
                    within=30,
                )
                await asyncio.sleep(args.settle)
                after_call = pss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log_file.close()
            await fake.stop()
    return ready_s, ready_cpu, idle, after_call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--num-idle-processes", type=int, default=1)
    parser.add_argument("--preload-local-inference", default="false")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before measuring PSS")
    parser.add_argument(
        "--load-threshold",
        default="inf",
        help="passed to the worker; inf so a busy shared machine does not make it refuse the call",
    )
    parser.add_argument("--log", default=os.devnull, help="append the worker's output here")
    parser.add_argument("--after-call", action="store_true", help="also measure after one call")
    args = parser.parse_args()
    readies, cpus, pss, after = [], [], [], []
    for _ in range(args.runs):
        ready_s, ready_cpu, idle, after_call = asyncio.run(one_run(args))
        readies.append(ready_s)
        cpus.append(ready_cpu)
        pss.append(idle)
        if after_call is not None:
            after.append(after_call)
    load = os.getloadavg()[0]
    print(
        f"knobs: NUM_IDLE_PROCESSES={args.num_idle_processes} "
        f"PRELOAD_LOCAL_INFERENCE={args.preload_local_inference} (job executor: thread)"
    )
    print(f"load average (1 min) during the bench: {load:.2f} on {os.cpu_count()} CPUs")
    print(
        f"ready_s      median {statistics.median(readies):.2f}  max {max(readies):.2f}  "
        f"(target <= {READY_TARGET_S})"
    )
    print(f"ready_cpu_s  median {statistics.median(cpus):.2f}  (CPU time used until ready)")
    print(
        f"idle_pss_mb  median {statistics.median(pss):.1f}  max {max(pss):.1f}  "
        f"(target <= {PSS_TARGET_MB})"
    )
    if after:
        print(f"pss_after_one_call_mb  median {statistics.median(after):.1f}")
    over = statistics.median(readies) > READY_TARGET_S or max(pss) > PSS_TARGET_MB
    print("result: OVER BUDGET" if over else "result: within budget")
    return EXIT_OVER_BUDGET if over else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: healthcheck.py without a database, run N times as a real process.

Prints p50/p95 wall time and peak RSS of the probe, compares them with the budget from issue 2
(< 150 ms wall at p95, < 40 MB peak RSS) and exits 3 when over budget.

    .venv/bin/python bench/healthcheck_bench.py [--runs 30] [--python PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXIT_OVER_BUDGET = 3  # tests/run-all.sh tells over-budget (3) from a crash (anything else)

REPO = Path(__file__).resolve().parent.parent

BUDGET_WALL_MS = 150.0
BUDGET_RSS_MB = 40.0


def render(python: str, env: dict[str, str]) -> None:
    """Write a valid config (in a child process: this process must stay small, see below)."""
    valid = {
        "DEPARTMENT_ID": "hr",
        "DEPARTMENT_NAME": "Human Resources",
        "LIVEKIT_URL": "ws://127.0.0.1:7880",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "devsecret",
        "LLM_API_KEY": "sk-bench",
    }
    subprocess.run(
        [python, "-m", "aio_agent.config", "render"],
        env={**env, **valid, "PYTHONPATH": str(REPO)},
        check=True,
    )


def run_once(python: str, env: dict[str, str]) -> tuple[float, float, float]:
    """Run the probe once; return (wall ms, peak RSS MB, CPU ms) of that child.

    posix_spawn may vfork, and Linux then counts the parent's RSS at spawn time in the child's
    ru_maxrss: this process imports nothing big so the number is the probe's own.
    """
    started = time.perf_counter()
    pid = os.posix_spawn(
        python,
        [python, str(REPO / "healthcheck.py")],
        env,
        file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)],
    )
    _, status, usage = os.wait4(pid, 0)
    wall_ms = (time.perf_counter() - started) * 1000
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"healthcheck.py exited {code}: the benchmark needs a healthy probe")
    cpu_ms = (usage.ru_utime + usage.ru_stime) * 1000
    return wall_ms, usage.ru_maxrss / 1024, cpu_ms  # ru_maxrss is in KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CONFIG_PATH": f"{tmp}/c.yaml"}
        render(args.python, env)
        run_once(args.python, env)  # warm the page cache and .pyc files
        samples = [run_once(args.python, env) for _ in range(args.runs)]
    walls = sorted(s[0] for s in samples)
    p50 = statistics.median(walls)
    p95 = walls[min(len(walls) - 1, round(0.95 * (len(walls) - 1)))]
    rss = max(s[1] for s in samples)
    cpu = statistics.median(s[2] for s in samples)
    load = os.getloadavg()[0]
    print(f"healthcheck.py (no database), {args.runs} runs, load average {load:.2f}")
    print(f"  wall   p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   budget < {BUDGET_WALL_MS:.0f} ms")
    print(f"  cpu    p50 {cpu:7.1f} ms   (user+sys: what the probe costs when the CPU is shared)")
    print(f"  rss    peak {rss:6.1f} MB   budget < 40 MB")
    if load > (os.cpu_count() or 1):
        print(f"  note   load average {load:.1f} > {os.cpu_count()} CPUs: wall times are inflated")
    over = []
    if p95 >= BUDGET_WALL_MS:
        over.append(f"wall p95 {p95:.1f} ms >= {BUDGET_WALL_MS:.0f} ms")
    if rss >= BUDGET_RSS_MB:
        over.append(f"peak RSS {rss:.1f} MB >= {BUDGET_RSS_MB:.0f} MB")
    print("  result " + ("OVER BUDGET: " + "; ".join(over) if over else "within budget"))
    return EXIT_OVER_BUDGET if over else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tenant database budgets: migrate on a fresh database, a no-op re-run, search_documents latency.

    .venv/bin/python bench/db_bench.py [--documents 10000] [--queries 1000]

Starts its own throwaway PostgreSQL (tests.pgcluster), provisions the HR tenant with tenant.py,
times `migrate()` (in process: connect + lock + apply, what the entrypoint's call costs minus
Python start-up) and the CLI as a process, then loads N generated documents and times
search_documents (client-side, one connection as the tenant role, RLS on). Target: p99 <= 20 ms;
exits 1 when it is missed. Prints the load average before and after: the numbers are wall-clock
latencies, so other work on the machine shows up in them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aio_agent import migrate  # noqa: E402
from aio_agent.db import connect_tenant  # noqa: E402
from aio_agent.documents import search_documents  # noqa: E402
from tests.pgcluster import PostgresCluster  # noqa: E402
from tests.tenant_support import provision, tenant_dsn  # noqa: E402

EXIT_OVER_BUDGET = 3  # tests/run-all.sh tells over-budget (3) from a crash (anything else)

WORDS = (
    "vacation leave parental remote work policy expense invoice travel reimbursement approval "
    "budget manager employee contract salary payroll bonus pension insurance health sick "
    "holiday overtime shift schedule training onboarding laptop security password badge office "
    "parking meal receipt mileage hotel flight train booking supplier purchase order payment "
    "tax audit compliance privacy data retention review feedback promotion transfer relocation "
    "benefit equipment software license incident report deadline quarter annual monthly weekly"
).split()


P99_TARGET_MS = 20.0


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def vocabulary(rng: random.Random, size: int = 20_000) -> tuple[list[str], list[float]]:
    """Synthetic words with Zipf frequencies (like real text); the domain words sit at ranks
    20..2000, so a query word occurs in roughly 1-30 % of documents, not in all of them."""
    syllables = ["ka", "lo", "mi", "ra", "ten", "vo", "shu", "pel", "dor", "ix", "ban", "eu"]
    filler: set[str] = set()
    while len(filler) < size:
        filler.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    words = sorted(filler)
    rng.shuffle(words)
    for word in WORDS:
        words.insert(rng.randint(20, 2000), word)
    weights = [1 / (rank**1.07) for rank in range(1, len(words) + 1)]
    return words, weights


def document(
    rng: random.Random, n: int, words: list[str], weights: list[float]
) -> tuple[str, str, str]:
    title = " ".join(rng.sample(WORDS, 3)).title()
    body = " ".join(rng.choices(words, weights, k=rng.randint(150, 600)))
    return (f"doc-{n:06d}", title, body)


async def bench_migrate(url: str, migrations: list[migrate.Migration]) -> tuple[float, float]:
    async def timed() -> float:
        started = time.perf_counter()
        conn = await connect_tenant(url, "hr")
        try:
            await migrate.migrate(conn, "hr", migrations)
        finally:
            await conn.close()
        return (time.perf_counter() - started) * 1000

    fresh_ms = await timed()
    noop_ms = statistics.median([await timed() for _ in range(5)])
    return fresh_ms, noop_ms


def bench_cli_noop(url: str) -> float:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "U": url}
    cmd = [sys.executable, "-m", "aio_agent.migrate", "--database-url-env", "U", "--department"]
    started = time.perf_counter()
    subprocess.run([*cmd, "hr"], check=True, env=env, capture_output=True)
    return (time.perf_counter() - started) * 1000


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


async def bench_search(url: str, documents: int, queries: int) -> float:
    rng = random.Random(42)
    words, weights = vocabulary(rng)
    conn = await connect_tenant(url, "hr")
    try:
        started = time.perf_counter()
        # COPY is refused under row-level security: batched INSERTs, as n8n's sync would do.
        await conn.executemany(
            "INSERT INTO drive_documents (drive_file_id, title, content) VALUES ($1, $2, $3)",
            [document(rng, n, words, weights) for n in range(documents)],
        )
        await conn.execute("ANALYZE drive_documents")
        print(f"loaded {documents} documents in {(time.perf_counter() - started):.1f} s")
        phrases = [" ".join(rng.sample(WORDS, rng.randint(1, 3))) for _ in range(queries)]
        phrases += ["how many vacation days do I get", "zebra unicorn", ""]
        for phrase in phrases[:20]:  # warm up
            await search_documents(conn, phrase)
        latencies = []
        hits = 0
        for phrase in phrases:
            started = time.perf_counter()
            results = await search_documents(conn, phrase)
            latencies.append((time.perf_counter() - started) * 1000)
            hits += bool(results)
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        verdict = "ok" if p99 <= P99_TARGET_MS else "MISSED"
        print(
            f"search_documents over {documents} docs, {len(phrases)} queries "
            f"({hits} with results): p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
            f"max {max(latencies):.2f} ms (target p99 <= {P99_TARGET_MS:g} ms: {verdict})"
        )
        return p99
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=1_000)
    args = parser.parse_args()
    print(f"load average (1, 5, 15 min) at start: {load_average()} on {os.cpu_count()} CPUs")
    cluster = PostgresCluster.create()
    try:
        migrations = migrate.load_migrations(migrate.default_migrations_dir({}))
        dbname = cluster.create_database()
        provision(cluster, dbname, "hr")
        url = tenant_dsn(cluster, "hr", dbname)
        fresh_ms, noop_ms = asyncio.run(bench_migrate(url, migrations))
        print(f"migrate, fresh database ({len(migrations)} files): {fresh_ms:8.1f} ms")
        print(f"migrate, no-op re-run (median of 5):      {noop_ms:8.1f} ms")
        print(f"python -m aio_agent.migrate no-op (process): {bench_cli_noop(url):6.1f} ms")
        p99 = asyncio.run(bench_search(url, args.documents, args.queries))
    finally:
        cluster.destroy()
    print(f"load average (1, 5, 15 min) at end: {load_average()}")
    return 0 if p99 <= P99_TARGET_MS else EXIT_OVER_BUDGET


if __name__ == "__main__":
    sys.exit(main())

"""Greylisting decisions per second, and decision latency during a purge.

    python tests/bench/greylist.py [--seconds 5] [--purge-rows 1000000]

1. Decisions per second with the store on disk, one process, 50 sessions
   deciding at once: for new triplets (each decision inserts a row) and for
   known triplets (each decision reads a passed row).
2. A purge of ``--purge-rows`` expired triplets, run through a second store
   connection as ``greygeo purge`` from cron does, while 50 sessions keep
   deciding: how long the purge took and the p50/p99 decision latency
   during it.
"""

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from greygeo.lookups.store import Store
from greygeo.rules.engine import Policy, decide
from greygeo.rules.facts import Facts
from greygeo.rules.reply import parse_reply
from greygeo.rules.rule import Action, Rule

SESSIONS = 50
POLICY = Policy(
    (Rule("GREYLIST", Action.GREYLIST),),
    parse_reply("421 4.7.0 Please Try Again Later."),
    parse_reply("550 5.7.1 Refused", allowed_classes="5"),
)


def facts(n: int) -> Facts:
    client = IPv4Address(0x0A000000 + (n % 0xFFFFF) * 256)  # a /24 of its own
    return Facts(client, "US", "mx.test", f"s{n}@sender.test", f"r{n}@example.com")


async def rate(store: Store, numbers: range, now: float) -> float:
    """Decisions per second for these facts, SESSIONS at a time."""
    queue = iter(numbers)

    async def session() -> None:
        for n in queue:
            await decide(POLICY, facts(n), now, store)

    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(SESSIONS)))
    return len(numbers) / (time.perf_counter() - started)


def fill_expired(path: Path, rows: int) -> None:
    """Bulk-load expired waiting triplets (the bench's own set-up, in SQL)."""
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO triplets (client_net, sender, recipient, first_seen,"
            " last_seen) VALUES (?, ?, ?, 0, 0)",
            ((f"expired-{n}", "old@sender.test", "r@example.com") for n in range(rows)),
        )


async def purge_under_load(path: Path, rows: int) -> None:
    await (await Store.open(path)).close()  # create and migrate
    fill_expired(path, rows)
    deciding = await Store.open(path)
    purging = await Store.open(path, lock_timeout=30)
    latencies: list[float] = []
    done = asyncio.Event()
    now = time.time()

    async def session(number: int) -> None:
        n = 1_000_000 + number * 10_000
        while not done.is_set():
            started = time.perf_counter()
            await decide(POLICY, facts(n), now, deciding)
            latencies.append(time.perf_counter() - started)
            n += 1

    sessions = [asyncio.create_task(session(i)) for i in range(SESSIONS)]
    started = time.perf_counter()
    removed = await purging.purge(now, POLICY.greylist)
    took = time.perf_counter() - started
    done.set()
    await asyncio.gather(*sessions)
    await deciding.close()
    await purging.close()

    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[int(len(ordered) * 0.99)] * 1000
    print(
        f"purge of {removed['waiting triplets']} triplets with {SESSIONS} sessions "
        f"deciding: {took:.1f} s"
    )
    print(
        f"  decisions during the purge: {len(ordered)} "
        f"({len(ordered) / took:.0f}/s), p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--purge-rows", type=int, default=1_000_000)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="greygeo-bench-"))
    store = await Store.open(folder / "rate.sqlite3")
    now = time.time()
    new = await rate(store, range(args.decisions), now)
    await rate(store, range(args.decisions), now + 400)  # these pass now
    known = await rate(store, range(args.decisions), now + 500)
    await store.close()
    print(f"greylisting decisions per second, store on disk, {SESSIONS} sessions:")
    print(f"  new triplets    {new:8.0f}/s")
    print(f"  known triplets  {known:8.0f}/s")

    await purge_under_load(folder / "purge.sqlite3", args.purge_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

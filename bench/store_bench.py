"""The store's share of one answered message, without the network: ``python -m bench.store_bench``.

Replays the store calls the gateway makes for one echo message (the claim, the run's start, history, the
run's end, the sender's reads and writes), for ``--messages`` messages with ``--concurrency`` of them in
flight on one event loop, against a fresh SQLite file. Prints CPU milliseconds per message (process time,
so SQLite's own work is in it) and the commits per message (``SQLiteStore.commits``: a group commit counts
once).

It measures the store alone: the end-to-end numbers are ``python -m bench``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from edgecrab.store.base import DONE, OutboxChunk, Turn, UsageDelta
from edgecrab.store.sqlite import SQLiteStore

ROBOT = "ding_bench"
ROUTE = {"conversation_id": "cid", "robot_code": ROBOT, "session_webhook": "http://127.0.0.1/x"}


async def one_message(store: SQLiteStore, n: int) -> None:
    key = f"{ROBOT}:dm:u{n % 500}"
    msg_id = f"m{n}"
    now = time.time()
    assert await store.inbox_claim(ROBOT, msg_id, f"s{n}", '{"text": {"content": "hello"}}' * 20, now)
    await store.turn_started(key, robot=ROBOT, msg_id=msg_id, now=now)
    await store.history(key, 20)
    user = Turn("user", f"hello {n}", msg_id, now)
    chunk = OutboxChunk(
        reply_id=f"r{n}",
        index=0,
        total=1,
        conversation_key=f"{ROBOT}:c{n % 500}",
        route=ROUTE,
        text=f"echo: hello {n}" * 4,
        mention=False,
        title="echo",
        state="pending",
        created_at=now,
        session_key=key,
    )
    await store.finish_turn(
        key,
        robot=ROBOT,
        msg_id=msg_id,
        state=DONE,
        now=now,
        turns=[user, Turn("assistant", f"echo: hello {n}", msg_id, now)],
        usage=UsageDelta(turns=1, messages_in=1, messages_out=1),
        last_user=user,
        reply=[chunk],
    )
    pending = await store.outbox_pending(chunk.conversation_key)
    assert pending, "the chunk just recorded is pending"
    await store.outbox_sent(chunk.reply_id, 0, session_key=key, chunks_sent=1, now=time.time())


async def replay(path: Path, messages: int, concurrency: int) -> tuple[float, float, int]:
    store = SQLiteStore(path)
    await store.open()
    try:
        sem = asyncio.Semaphore(concurrency)

        async def guarded(n: int) -> None:
            async with sem:
                await one_message(store, n)

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(guarded(n) for n in range(messages)))
        return time.process_time() - cpu, time.perf_counter() - wall, store.commits
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cpu, wall, commits = asyncio.run(replay(Path(tmp) / "state.db", args.messages, args.concurrency))
    per = 1000 * cpu / args.messages
    print(
        f"store replay: {args.messages:,} messages, {args.concurrency} in flight: "
        f"{per:.3f} ms CPU per message, {commits / args.messages:.2f} commits per message, "
        f"{args.messages / wall:,.0f} messages/s"
    )


if __name__ == "__main__":
    main()

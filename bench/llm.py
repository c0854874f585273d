"""``python -m bench.llm --delay 2``: the project's fake OpenAI server, minus its 20 ms polling sleep.

:class:`~edgecrab.testing.fake_openai.FakeOpenAI` sleeps in 20 ms steps so tests can see a client hang up
mid-answer. With 1,000 requests waiting 2 s each that is 50,000 wake-ups a second, a whole core on this
2-core machine, taken from the contenders. A benchmark does not need to notice hang-ups (aiohttp cancels
the handler of a closed connection anyway), so here the delay is one plain ``asyncio.sleep``.

``--token-delay 0.1 --reply-words 200`` streams a long answer token by token (the card scenarios).

``--stamps PATH`` appends one JSON line per chat request once its body is read and parsed:
``{"t": time.monotonic(), "images": n, "image_bytes": decoded bytes of its pictures}`` for the last user
turn (the media scenario: when a picture reached the agent, and that it was there).

Prints ``{"base_url": ..., "port": ...}`` on one line once listening; serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import time
from typing import IO

from aiohttp import web

from edgecrab.testing.fake_openai import FakeOpenAI


class QuietFakeOpenAI(FakeOpenAI):
    stamps: IO[str] | None = None

    async def _sleep(self, request: web.Request, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds if math.isfinite(seconds) else 1e9)

    def _notify(self) -> None:
        # A request appended since the last call: the one just read (other calls have nothing new).
        if self.stamps is not None and self.requests and self.user_parts:
            images = [p for p in self.user_parts[-1] if p["type"] == "image"]
            size = sum(p["bytes"] for p in images)
            stamp = {"t": time.monotonic(), "images": len(images), "image_bytes": size}
            self.stamps.write(json.dumps(stamp) + "\n")
            self.stamps.flush()
        # Nobody waits on the change event in a benchmark; keep the request log from growing either.
        self.requests.clear()
        self.request_headers.clear()
        self.peers.clear()
        self.usages.clear()
        self.user_parts.clear()


async def serve(
    delay_s: float,
    port: int,
    token_delay_s: float = 0.0,
    reply_words: int = 0,
    stamps: IO[str] | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = QuietFakeOpenAI(delay_s=delay_s, port=port, token_delay_s=token_delay_s)
    server.stamps = stamps
    async with server as fake:
        if reply_words:  # a long streamed answer (the card scenarios): words, a line break every 12
            fake.configure(
                {"reply": "".join(f"w{i} " if i % 12 else f"\nline{i} " for i in range(reply_words))}
            )
        print(json.dumps({"base_url": fake.base_url, "port": fake.port}), flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.llm")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds before each answer")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed tokens")
    parser.add_argument("--reply-words", type=int, default=0, help="answer this many words (0: the default)")
    parser.add_argument("--stamps", default="", help="append a JSON line per chat request to this file")
    args = parser.parse_args()
    stamps = open(args.stamps, "a", encoding="utf-8") if args.stamps else None  # noqa: SIM115
    try:
        asyncio.run(serve(args.delay, args.port, args.token_delay, args.reply_words, stamps))
    finally:
        if stamps is not None:
            stamps.close()


if __name__ == "__main__":
    main()

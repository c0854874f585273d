"""``python -m bench.llm --delay 2``: the project's fake OpenAI server, minus its 20 ms polling sleep.

:class:`~edgecrab.testing.fake_openai.FakeOpenAI` sleeps in 20 ms steps so tests can see a client hang up
mid-answer. With 1,000 requests waiting 2 s each that is 50,000 wake-ups a second, a whole core on this
2-core machine, taken from the contenders. A benchmark does not need to notice hang-ups (aiohttp cancels
the handler of a closed connection anyway), so here the delay is one plain ``asyncio.sleep``.

``--token-delay 0.1 --reply-words 200`` streams a long answer token by token (the card scenarios).

Prints ``{"base_url": ..., "port": ...}`` on one line once listening; serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal

from aiohttp import web

from edgecrab.testing.fake_openai import FakeOpenAI


class QuietFakeOpenAI(FakeOpenAI):
    async def _sleep(self, request: web.Request, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds if math.isfinite(seconds) else 1e9)

    def _notify(self) -> None:
        # Nobody waits on the change event in a benchmark; keep the request log from growing either.
        self.requests.clear()
        self.request_headers.clear()
        self.peers.clear()
        self.usages.clear()


async def serve(delay_s: float, port: int, token_delay_s: float = 0.0, reply_words: int = 0) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with QuietFakeOpenAI(delay_s=delay_s, port=port, token_delay_s=token_delay_s) as fake:
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
    args = parser.parse_args()
    asyncio.run(serve(args.delay, args.port, args.token_delay, args.reply_words))


if __name__ == "__main__":
    main()

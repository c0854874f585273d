"""``python -m edgecrab.testing.fake_openai``: the fake OpenAI server as a process, for end-to-end runs.

Options set :class:`~edgecrab.testing.fake_openai.server.FakeOpenAI`'s starting behaviour; once listening
it prints one JSON line (``base_url``, ``control_url``, ``port``) and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from edgecrab.testing.fake_openai.server import MODES, FakeOpenAI, default_reply


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m edgecrab.testing.fake_openai", description="A fake OpenAI-compatible chat server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--reply", default=None, help="fixed reply (default: 'You said: <last message>')")
    parser.add_argument("--mode", default="ok", choices=MODES)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer <key>'")
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--completion-tokens", type=int, default=None)
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    import signal

    fake = FakeOpenAI(
        reply=args.reply if args.reply is not None else default_reply,
        delay_s=args.delay,
        token_delay_s=args.token_delay,
        prompt_tokens=args.prompt_tokens,
        completion_tokens=args.completion_tokens,
        api_key=args.api_key,
        mode=args.mode,
        host=args.host,
        port=args.port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # Windows: Ctrl-C still raises KeyboardInterrupt
            pass
    async with fake:
        ready = {"base_url": fake.base_url, "control_url": fake.control_url, "port": fake.port}
        print(json.dumps(ready), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0

"""``python -m edgecrab.testing.fakedingtalk``: run the fake as a process.

Prints one JSON line (``{"base_url", "ws_endpoint", "control", "apps", "pid"}``) on stdout once
listening, then serves until SIGTERM or SIGINT. Drive it through the control API under ``/_fake/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from edgecrab.testing.fakedingtalk.models import DEFAULT_APP_KEY, DEFAULT_APP_SECRET, FakeApp
from edgecrab.testing.fakedingtalk.server import FakeDingTalk


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m edgecrab.testing.fakedingtalk",
        description="A loopback fake of DingTalk's Stream and robot REST APIs.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--app-key", default=DEFAULT_APP_KEY)
    parser.add_argument("--app-secret", default=DEFAULT_APP_SECRET)
    parser.add_argument("--robot-code", default="")
    parser.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="KEY:SECRET[:ROBOT_CODE[:MORE_ROBOT_CODE...]]",
        help="an additional robot app (repeatable); codes after the first: the app's other robots",
    )
    parser.add_argument(
        "--redeliver-after", type=float, default=60.0, help="seconds before an unacked redelivery"
    )
    parser.add_argument("--max-redeliveries", type=int, default=3)
    parser.add_argument(
        "--redeliver-new-id", action="store_true", help="give each redelivery a new headers.messageId"
    )
    parser.add_argument("--webhook-ttl", type=float, default=5400.0)
    parser.add_argument("--token-ttl", type=int, default=7200)
    parser.add_argument("--ticket-ttl", type=float, default=90.0)
    parser.add_argument("--body-limit", type=int, default=20000)
    parser.add_argument("--disconnect-close-after", type=float, default=10.0)
    parser.add_argument(
        "--deliver-unmentioned",
        action="store_true",
        help="push group messages that do not @ the robot (real DingTalk never does)",
    )
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> FakeDingTalk:
    apps = [FakeApp(args.app_key, args.app_secret, robot_code=args.robot_code)]
    for spec in args.app:
        key, secret, *rest = spec.split(":")
        apps.append(FakeApp(key, secret, robot_code=rest[0] if rest else "", more_robots=tuple(rest[1:])))
    return FakeDingTalk(
        apps=apps,
        host=args.host,
        port=args.port,
        redeliver_after_s=args.redeliver_after,
        max_redeliveries=args.max_redeliveries,
        redeliver_new_id=args.redeliver_new_id,
        webhook_ttl_s=args.webhook_ttl,
        token_ttl_s=args.token_ttl,
        ticket_ttl_s=args.ticket_ttl,
        body_limit=args.body_limit,
        disconnect_close_after_s=args.disconnect_close_after,
        deliver_unmentioned=args.deliver_unmentioned,
        seed=args.seed,
    )


async def serve(fake: FakeDingTalk) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await fake.start()
    try:
        line = {
            "base_url": fake.base_url,
            "ws_endpoint": fake.ws_endpoint,
            "control": f"{fake.base_url}/_fake/",
            "apps": [a.client_id for a in fake.apps],
            "pid": os.getpid(),
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(build(parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The built-in DingTalk emulator: try the gateway locally, with no DingTalk tenant, app or credentials.

It is the project's test fake (:mod:`edgecrab.testing.fakedingtalk`: Stream mode, acks, redelivery, tokens,
sessionWebhooks, OpenAPI sends), not a second implementation, plus a web chat served on the same port
(:mod:`edgecrab.sandbox.webchat`). Two entry points:

* ``edgecrab sandbox`` -> :func:`run_sandbox`: the emulator alone, until SIGINT/SIGTERM; it prints the chat
  URL and the ``api_base`` and credentials to point a gateway at.
* ``edgecrab gateway start --sandbox`` -> :func:`serve_with_sandbox`: the emulator and the gateway in one
  process and one task group; the gateway's ``api_base`` is pointed at the emulator and its credentials are
  replaced by the sandbox's own (``SANDBOX_APP_KEY``/``SANDBOX_APP_SECRET``): configured, real credentials
  never reach the emulator, which records what it receives.

The emulator listens on 127.0.0.1 by default and has no authentication: anyone who can reach the port can
read the chat and drive the control API under ``/_fake/``. Browsers cannot: foreign ``Host`` and ``Origin``
headers (DNS rebinding, cross-site pages) and non-JSON bodies are refused
(:mod:`edgecrab.testing.fakedingtalk.guard`), and recorded requests are scrubbed of credentials.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio

from edgecrab.config import SANDBOX_APP_KEY, SANDBOX_APP_SECRET, Config
from edgecrab.errors import StartupError
from edgecrab.outbound import is_loopback
from edgecrab.sandbox.webchat import WebChat
from edgecrab.shutdown import SignalStop, leave
from edgecrab.testing.fakedingtalk import DEFAULT_GROUP_ID, FakeApp, FakeDingTalk
from edgecrab.testing.fakedingtalk.models import conversation_id_for
from edgecrab.testing.fakedingtalk.payloads import DEFAULT_GROUP_TITLE

if TYPE_CHECKING:
    from edgecrab.gateway import Gateway

__all__ = ["DEFAULT_PORT", "GROUPS", "open_emulator", "run_sandbox", "serve_with_sandbox"]

log = logging.getLogger("edgecrab.sandbox")

DEFAULT_PORT = 8765
GROUPS = (
    (DEFAULT_GROUP_ID, DEFAULT_GROUP_TITLE),
    (conversation_id_for("sandbox", "product-team"), "Product team"),
)
"""The groups the robot is a member of in the emulator: (conversation id, title)."""


@contextlib.asynccontextmanager
async def open_emulator(
    app: FakeApp | list[FakeApp], *, host: str = "127.0.0.1", port: int = DEFAULT_PORT
) -> AsyncIterator[FakeDingTalk]:
    """Run the fake DingTalk with the web chat on ``host:port`` (0 picks a free port) while inside;
    ``app``: its app, or its apps (one per robot of the gateway, the first the web chat's)."""
    fake = FakeDingTalk(apps=app if isinstance(app, list) else [app], host=host, port=port)
    chat = WebChat(fake)
    fake.add_routes(chat.routes())
    for conversation_id, title in GROUPS:
        fake.add_group(conversation_id, title)
    try:
        await fake.start()
    except OSError as exc:
        hint = "; pass --port N to use port N instead, or --port 0 to pick a free one" if port else ""
        raise StartupError(
            f"the sandbox cannot listen on {host}:{port}: {exc.strerror or exc}{hint}", exit_code=2
        ) from None
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(chat.record)
            yield fake
            tg.cancel_scope.cancel()
    finally:
        with anyio.move_on_after(2, shield=True):
            await fake.stop()


def _say(line: str) -> None:
    print(f"edgecrab sandbox: {line}", flush=True)


def _signals() -> SignalStop:
    # Opened before anything starts, so a signal during start-up also stops cleanly instead of killing us.
    return SignalStop("sandbox")


@contextlib.contextmanager
def _single_errors() -> Iterator[None]:
    # Task groups wrap a failure in an ExceptionGroup; the CLI reports EdgecrabErrors by type, so unwrap one.
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _on_emulator(config: Config, apps: list[FakeApp], api_base: str) -> Config:
    """``config`` with each robot on its emulated app (``apps``, in the robots' order) at ``api_base``."""
    robots = [
        replace(r, app_key=a.client_id, app_secret=a.client_secret, robot_code=a.robot_code,
                api_base=api_base)
        for r, a in zip(config.robots, apps, strict=True)
    ]
    return replace(config, dingtalk=robots[0], other_robots=tuple(robots[1:]))


async def serve_with_sandbox(
    config: Config, port: int | None, *, ready: Callable[[FakeDingTalk, Gateway], object] | None = None
) -> None:
    """Run the emulator on 127.0.0.1:``port`` (default 8765; 0 picks one) and the gateway against it.

    Runs until SIGINT/SIGTERM or cancellation. ``ready(fake, gateway)`` is called once both run and the chat
    URL is printed.
    """
    # The emulator never holds the configured (real) credentials: it records what it receives and serves it
    # to anyone on this machine. The gateway talks to it with the sandbox's own pair instead.
    # Several robots: one emulated app each (never a configured one), so none reaches the real DingTalk.
    apps = [
        FakeApp(SANDBOX_APP_KEY + suffix, SANDBOX_APP_SECRET + suffix)
        for suffix in ["", *(f"-{r.name}" for r in config.other_robots)]
    ]
    dt = config.dingtalk
    with _single_errors(), _signals() as signals:
        async with (
            open_emulator(apps, port=DEFAULT_PORT if port is None else port) as fake,
            anyio.create_task_group() as tg,
        ):
            from edgecrab.gateway import Gateway  # here: `edgecrab sandbox` alone never needs the gateway

            gateway = Gateway(_on_emulator(config, apps, fake.base_url))
            if dt.mode == "http":  # the emulator signs and POSTs each message to the callback path
                host = "127.0.0.1" if config.http.host in ("", "0.0.0.0", "::") else config.http.host
                fake.settings.callback_url = f"http://{host}:{config.http.port}{config.http.callback_path}"

            async def announce() -> None:
                await gateway.started.wait()
                _say(f"open {fake.base_url}/ to chat with the bot")
                _say(f"state kept apart from the gateway's own, in {_state_place(config)}")
                if ready is not None:
                    ready(fake, gateway)

            tg.start_soon(gateway.run)
            tg.start_soon(announce)
            await signals.wait()
            tg.cancel_scope.cancel()


def _state_place(config: Config) -> str:
    path = config.storage.sqlite_path
    return "memory" if path is None or str(path) == ":memory:" else str(path)


async def _serve_alone(host: str, port: int) -> None:
    app = FakeApp(SANDBOX_APP_KEY, SANDBOX_APP_SECRET)
    with _single_errors(), _signals() as signals:
        async with open_emulator(app, host=host, port=port) as fake:
            base = fake.base_url
            _say(f"open {base}/ to chat with the bot")
            _say(f"DingTalk emulator (Stream + REST) at api_base {base}; point a gateway at it with")
            print(
                f"  DINGTALK_API_BASE={base} DINGTALK_APP_KEY={SANDBOX_APP_KEY} "
                f"DINGTALK_APP_SECRET={SANDBOX_APP_SECRET} edgecrab gateway start",
                flush=True,
            )
            if not is_loopback(host):
                _say(f"warning: listening on {host} without authentication; anyone who can reach it can chat")
            await signals.wait()



def run_sandbox(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> int:
    """Entry point of ``edgecrab sandbox``: run the emulator alone until SIGINT/SIGTERM; returns 0."""
    anyio.run(_serve_alone, host, port)
    sys.stdout.flush()
    return leave(0)

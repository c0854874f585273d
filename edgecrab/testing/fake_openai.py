"""A fake OpenAI-compatible chat server for tests, end-to-end runs and benchmarks.

:class:`FakeOpenAI` is an aiohttp server on ``127.0.0.1`` (a free port by default) that answers
``POST /v1/chat/completions`` like OpenAI does: Server-Sent Events when the body says ``"stream": true``
(content deltas, a ``finish_reason`` chunk, a ``usage`` chunk when ``stream_options.include_usage`` is set,
then ``data: [DONE]``), one JSON body otherwise. Its ``mode`` switches to a failure on purpose:

=====================  ====================================================================
``ok``                 answer normally (after ``delay_s``, ``token_delay_s`` between tokens)
``json``               ignore ``stream: true`` and answer with one JSON body (like some proxies)
``hang``               accept the request and never answer (until the client goes away)
``garbage``            answer 200 with a body no OpenAI client can parse
``error500``           answer 500 every time
``error429_then_ok``   answer 429 ``errors_before_ok`` times, then ``ok`` (the count restarts when set)
``error401``           answer 401 every time (also the answer to a wrong key when ``api_key`` is set)
=====================  ====================================================================

Usage is deterministic: ``prompt_tokens`` is the number of whitespace-separated words in all request messages
and ``completion_tokens`` the number of streamed tokens (words), unless fixed values are given.

The server notices a client that disconnects mid-answer (``disconnects``,
:meth:`FakeOpenAI.wait_disconnects`), which is how tests prove that ``/stop`` closes the HTTP stream.

Run it as a process for end-to-end tests::

    python -m edgecrab.testing.fake_openai --port 0 --delay 2 --token-delay 0.05

It prints one JSON line (``{"base_url": ..., "control_url": ..., "port": ...}``) when ready and serves
``/_fake/state``: ``GET`` returns counters, usage totals and the last requests; ``POST`` a JSON object with
any of ``mode``, ``delay_s``, ``token_delay_s``, ``reply``, ``prompt_tokens``, ``completion_tokens``,
``errors_before_ok``, ``api_key``, ``reset`` changes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

MODES = ("ok", "json", "hang", "garbage", "error500", "error429_then_ok", "error401")

ReplyFn = Callable[[list[dict[str, Any]]], str]


def default_reply(messages: list[dict[str, Any]]) -> str:
    """``You said: <last user content>``."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return f"You said: {message.get('content', '')}"
    return "You said nothing."


def split_tokens(text: str) -> list[str]:
    """Words with their leading whitespace (as OpenAI streams them); joined they give back ``text``."""
    tokens = re.findall(r"\s*\S+", text)
    rest = text[len("".join(tokens)) :]
    if rest:
        tokens.append(rest)
    return tokens


class _ClientGone(Exception):
    pass


class FakeOpenAI:
    """An OpenAI-compatible server whose answers, delays and failures tests control."""

    def __init__(
        self,
        *,
        reply: str | ReplyFn = default_reply,
        delay_s: float = 0.0,
        token_delay_s: float = 0.0,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        api_key: str | None = None,
        mode: str = "ok",
        errors_before_ok: int = 1,
        model: str = "fake-model",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.reply = reply
        self.delay_s = delay_s
        self.token_delay_s = token_delay_s
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.api_key = api_key
        self.errors_before_ok = errors_before_ok
        self.model = model
        self.host = host
        self.port = port
        self._mode = "ok"
        self._errors_left = 0
        self.mode = mode
        self.requests: list[dict[str, Any]] = []
        """Bodies received on ``/chat/completions``, in order (also those answered with an error)."""
        self.request_headers: list[dict[str, str]] = []
        self.peers: list[str] = []
        """``host:port`` of the client of each request (equal entries: a reused keep-alive connection)."""
        self.usages: list[dict[str, int]] = []
        """The ``usage`` object of every answer that carried one."""
        self.disconnects = 0
        """Requests whose client went away before the answer was complete."""
        self.completed = 0
        """Answers sent in full."""
        self.tokens_sent = 0
        """Content chunks written, over all streamed answers."""
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._stopping = False

    # -- control -------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown fake mode {value!r}; choose one of {', '.join(MODES)}")
        self._mode = value
        self._errors_left = self.errors_before_ok if value == "error429_then_ok" else 0

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: what goes into ``agent.base_url``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.port}/_fake/state"

    def reset(self) -> None:
        """Forget received requests, usage and counters (settings stay)."""
        self.requests.clear()
        self.request_headers.clear()
        self.peers.clear()
        self.usages.clear()
        self.disconnects = 0
        self.completed = 0
        self.tokens_sent = 0
        self._notify()

    def state(self) -> dict[str, Any]:
        """What ``GET /_fake/state`` returns."""
        return {
            "base_url": self.base_url,
            "mode": self.mode,
            "delay_s": self.delay_s,
            "token_delay_s": self.token_delay_s,
            "requests": len(self.requests),
            "completed": self.completed,
            "disconnects": self.disconnects,
            "tokens_sent": self.tokens_sent,
            "usage": {
                "prompt_tokens": sum(u["prompt_tokens"] for u in self.usages),
                "completion_tokens": sum(u["completion_tokens"] for u in self.usages),
                "total_tokens": sum(u["total_tokens"] for u in self.usages),
            },
            "last_usage": self.usages[-1] if self.usages else None,
            "last_requests": self.requests[-10:],
        }

    def configure(self, changes: dict[str, Any]) -> None:
        """Apply a ``POST /_fake/state`` body; unknown keys raise ``ValueError``."""
        allowed = {
            "mode",
            "delay_s",
            "token_delay_s",
            "reply",
            "prompt_tokens",
            "completion_tokens",
            "errors_before_ok",
            "api_key",
            "reset",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        if changes.get("reset"):
            self.reset()
        for key in ("delay_s", "token_delay_s"):
            if key in changes:
                setattr(self, key, float(changes[key]))
        for key in ("prompt_tokens", "completion_tokens"):
            if key in changes:
                setattr(self, key, None if changes[key] is None else int(changes[key]))
        if "errors_before_ok" in changes:
            self.errors_before_ok = int(changes["errors_before_ok"])
        if "reply" in changes:
            self.reply = default_reply if changes["reply"] is None else str(changes["reply"])
        if "api_key" in changes:
            self.api_key = changes["api_key"] or None
        if "mode" in changes:
            self.mode = str(changes["mode"])

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is checked after every change (wrap it in a timeout)."""
        while not predicate():
            await self._changed.wait()

    async def wait_requests(self, count: int = 1) -> None:
        """Return once ``count`` requests have arrived (wrap it in a timeout)."""
        await self.wait_for(lambda: len(self.requests) >= count)

    async def wait_disconnects(self, count: int = 1) -> None:
        """Return once ``count`` clients have gone away mid-answer (wrap it in a timeout)."""
        await self.wait_for(lambda: self.disconnects >= count)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_get("/_fake/state", self._get_state)
        app.router.add_post("/_fake/state", self._post_state)
        self._stopping = False
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            self._stopping = True
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- handlers ------------------------------------------------------------------------------

    async def _get_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def _post_state(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            self.configure(changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.state())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid JSON body", "invalid_request_error")
        self.requests.append(body)
        self.request_headers.append(dict(request.headers))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(f"{peer[0]}:{peer[1]}" if peer else "?")
        self._notify()
        try:
            return await self._answer(request, body)
        except (_ClientGone, ConnectionResetError, asyncio.CancelledError):
            if not self._stopping:
                self.disconnects += 1
                self._notify()
            raise

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")
        mode = self.mode
        if mode == "error401":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")
        if mode == "error500":
            return _error(500, "The server had an error while processing your request.", "server_error")
        if mode == "error429_then_ok" and self._errors_left > 0:
            self._errors_left -= 1
            return _error(429, "Rate limit reached, please retry.", "rate_limit_error")
        if mode == "hang":
            await self._sleep(request, float("inf"))
        messages = body.get("messages") or []
        stream = bool(body.get("stream")) and mode != "json"
        if mode == "garbage":
            kind = "text/event-stream" if stream else "application/json"
            return web.Response(body=b"data: <html>502 Bad Gateway{{{\n\n", content_type=kind)
        text = self.reply(messages) if callable(self.reply) else self.reply
        tokens = split_tokens(text)
        usage = self._usage(messages, tokens)
        await self._sleep(request, self.delay_s)
        if not stream:
            self.usages.append(usage)
            self.completed += 1
            self._notify()
            return web.json_response(self._completion(text, usage))
        return await self._stream(request, body, tokens, usage)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], tokens: list[str], usage: dict[str, int]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await self._send(response, self._chunk({"role": "assistant", "content": ""}))
        for i, token in enumerate(tokens):
            if i:
                await self._sleep(request, self.token_delay_s)
            await self._send(response, self._chunk({"content": token}))
            self.tokens_sent += 1
            self._notify()
        await self._send(response, self._chunk({}, finish_reason="stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            final = self._chunk({}, finish_reason=None)
            final["choices"] = []
            final["usage"] = usage
            await self._send(response, final)
            self.usages.append(usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.completed += 1
        self._notify()
        return response

    async def _send(self, response: web.StreamResponse, payload: dict[str, Any]) -> None:
        await response.write(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")

    async def _sleep(self, request: web.Request, seconds: float) -> None:
        """Sleep, but notice within ~20 ms when the client has gone away."""
        deadline = time.monotonic() + seconds
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise _ClientGone()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.02))

    def _usage(self, messages: list[dict[str, Any]], tokens: list[str]) -> dict[str, int]:
        prompt = self.prompt_tokens
        if prompt is None:
            prompt = sum(len(str(m.get("content") or "").split()) for m in messages)
        completion = self.completion_tokens if self.completion_tokens is not None else len(tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def _completion(self, text: str, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": usage,
        }


def _error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": code}}, status=status)


# -- running as a process --------------------------------------------------------------------------


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


if __name__ == "__main__":
    sys.exit(main())

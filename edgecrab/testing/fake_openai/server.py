"""The fake OpenAI server: the settings and counters tests control, the aiohttp app, and the chat
handler that answers like OpenAI (or fails on purpose, by ``mode``). The package docstring
(:mod:`edgecrab.testing.fake_openai`) lists the modes; :mod:`edgecrab.testing.fake_openai.wire` shapes
the bodies.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

import edgecrab.testing.fake_openai.wire as wire
from edgecrab.testing.fake_openai.wire import error_response, split_tokens

MODES = ("ok", "json", "hang", "garbage", "error500", "error429_then_ok", "error401")

ReplyFn = Callable[[list[dict[str, Any]]], str]


def default_reply(messages: list[dict[str, Any]]) -> str:
    """``You said: <last user content>``; content parts: their text, and how many pictures it saw."""
    for message in reversed(messages):
        if message.get("role") == "user":
            parts = content_parts(message.get("content", ""))
            text = "\n\n".join(p["text"] for p in parts if p["type"] == "text")
            pictures = sum(1 for p in parts if p["type"] == "image")
            seen = f" (and I see {pictures} picture{'s' if pictures > 1 else ''})" if pictures else ""
            return f"You said: {text}{seen}"
    return "You said nothing."


def content_parts(content: Any) -> list[dict[str, Any]]:
    """A message's content as the model sees it: text parts, and pictures as their MIME type and size
    (``{"type": "image", "mime": "image/png", "bytes": 1234}``, decoded from the data URL)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        if part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            head, _, data = url.partition(",")
            mime = head[5:].split(";")[0] if head.startswith("data:") else "url"
            size = len(base64.b64decode(data, validate=False)) if head.endswith(";base64") else 0
            parts.append({"type": "image", "mime": mime, "bytes": size})
        else:
            parts.append({"type": "text", "text": str(part.get("text", ""))})
    return parts


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
        self.user_parts: list[list[dict[str, Any]]] = []
        """Per request: the last user turn as :func:`content_parts` (what the model saw of it)."""
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
        self.user_parts.clear()
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
            "last_user_parts": self.user_parts[-10:],
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
        app = web.Application(client_max_size=64 * 1024 * 1024)  # vision requests carry pictures
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
            return error_response(400, "invalid JSON body", "invalid_request_error")
        self.requests.append(body)
        users = [m for m in body.get("messages", ()) if isinstance(m, dict) and m.get("role") == "user"]
        self.user_parts.append(content_parts(users[-1].get("content", "")) if users else [])
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
            return error_response(
                401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key"
            )
        mode = self.mode
        if mode == "error401":
            return error_response(
                401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key"
            )
        if mode == "error500":
            return error_response(
                500, "The server had an error while processing your request.", "server_error"
            )
        if mode == "error429_then_ok" and self._errors_left > 0:
            self._errors_left -= 1
            return error_response(429, "Rate limit reached, please retry.", "rate_limit_error")
        if mode == "hang":
            await self._sleep(request, float("inf"))
        messages = body.get("messages") or []
        stream = bool(body.get("stream")) and mode != "json"
        if mode == "garbage":
            kind = "text/event-stream" if stream else "application/json"
            return web.Response(body=b"data: <html>502 Bad Gateway{{{\n\n", content_type=kind)
        text = self.reply(messages) if callable(self.reply) else self.reply
        tokens = split_tokens(text)
        usage = wire.usage(
            messages, tokens, prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens
        )
        await self._sleep(request, self.delay_s)
        if not stream:
            self.usages.append(usage)
            self.completed += 1
            self._notify()
            return web.json_response(wire.completion(len(self.requests), self.model, text, usage))
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

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return wire.chunk(len(self.requests), self.model, delta, finish_reason)

    async def _send(self, response: web.StreamResponse, payload: dict[str, Any]) -> None:
        await response.write(wire.event(payload))

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

"""The OpenAI-compatible agent: ``POST {base_url}/chat/completions`` with streaming.

Works with anything that speaks the OpenAI chat API (OpenAI, DeepSeek, Qwen/DashScope, Ollama, vLLM, ...).
It asks for a Server-Sent Events stream with usage in the last chunk, and also accepts a plain JSON answer
from servers that ignore ``stream: true``.

Failure policy, in the words the user sees (the technical detail goes to ``AgentError.cause`` for the log,
with the api key redacted):

- 429, 5xx, 408 and connection failures are retried with exponential backoff and jitter, but only before the
  first token arrived (after that the user has seen nothing yet, but a retry would bill twice for a long
  answer, and a mid-answer failure is better reported than hidden);
- 401/403 -> check agent.api_key; 404 -> check agent.base_url and agent.model; other 4xx -> the server's
  own reason;
- a body that is neither SSE nor JSON, or does not parse -> "could not read";
- the whole call (retries included) is bounded by ``agent.timeout_s``.

Cancellation (``/stop``) exits the ``client.stream(...)`` context before the body's end, which closes the
HTTP connection at once. The stream is split into lines on SSE's line ends only (``\r\n``, ``\r``, ``\n``):
httpx's ``aiter_lines`` also splits on U+2028 and the other ``str.splitlines`` breaks, which may appear raw
inside a JSON string.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx

from edgecrab.agents.base import Agent, AgentError, Deltas, ignore_deltas
from edgecrab.agents.openai_errors import NOT_READABLE as _NOT_READABLE
from edgecrab.agents.openai_errors import Retry as _Retry
from edgecrab.agents.openai_errors import error_detail as _error_detail
from edgecrab.agents.openai_errors import read_some, status_error, transport_error
from edgecrab.agents.openai_stream import Answer, parse_usage, sse_lines
from edgecrab.config import AgentConfig
from edgecrab.events import AgentRequest, AgentResult, Usage
from edgecrab.logs import redact
from edgecrab.outbound import http_client
from edgecrab.retry import Backoff, RetryNotice, retrying

log = logging.getLogger("edgecrab.agents.openai")

_DRAIN_AFTER_DONE_S = 0.25
_SSE_FIELDS = frozenset({"", "data", "event", "id", "retry"})
_JSON_HEADERS = {"Content-Type": "application/json"}
_MAX_CONNECTIONS = 10_000


class OpenAIAgent(Agent):
    name = "openai"

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_base_s: float = 0.5,
        retry_max_s: float = 8.0,
    ) -> None:
        base_url = config.base_url.rstrip("/")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"agent.base_url must be an http(s) URL, got {redact(config.base_url)!r}")
        # Credentials in the URL (https://user:pass@host/v1) become a Basic Authorization header and leave
        # the URL: it is written into log lines and errors, and aiohttp refuses a URL with userinfo next to
        # an Authorization header. An api_key (Bearer) wins over them.
        auth: httpx.BasicAuth | None = None
        if parts.username is not None or parts.password is not None:
            url = httpx.URL(base_url)
            if not config.api_key:
                auth = httpx.BasicAuth(url.username, url.password)
            base_url = str(url.copy_with(userinfo=b"")).rstrip("/")
        self._url = base_url + "/chat/completions"
        self._host = parts.hostname + (f":{parts.port}" if parts.port else "")
        self._config = config
        self._api_key = config.api_key
        self._timeout_s = config.timeout_s
        self._max_chars = config.max_answer_chars
        self._backoff = Backoff(max(config.max_retries, 0) + 1, retry_base_s, retry_max_s)
        self._stream_options = True
        """Turned off for good if the server rejects ``stream_options`` (some older proxies do)."""
        self._encoding: anyio.CapacityLimiter | None = None
        headers = {"Accept": "text/event-stream, application/json", "User-Agent": "edgecrab"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        # No read timeout of its own: the whole call is bounded by fail_after(timeout_s).
        timeout = httpx.Timeout(None, connect=10.0)
        # No real connection limit here: the runner already lets at most sessions.max_concurrent_runs agent
        # calls run at once, and a second, smaller limit only queued requests behind it. (None would not do:
        # httpx-aiohttp reads it as aiohttp's default of 100.) Idle connections are kept for 5 s.
        self._client = http_client(
            timeout=timeout,
            max_connections=_MAX_CONNECTIONS,
            max_keepalive=None,
            headers=headers,
            transport=transport,
            auth=auth,
        )
        if not config.model:
            log.warning("[agent] agent.model is empty: requests to %s will carry no model", self._url)

    async def aclose(self) -> None:
        await self._client.aclose()

    def build_body(self, request: AgentRequest) -> dict[str, Any]:
        """The JSON body for ``request``: the system prompt first, then the conversation."""
        system_prompt = request.system_prompt or self._config.system_prompt
        messages: list[dict[str, Any]] = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.extend(dict(m) for m in request.messages)
        body: dict[str, Any] = {"messages": messages, "stream": True}
        if self._config.model:
            body["model"] = self._config.model
        if self._stream_options:
            body["stream_options"] = {"include_usage": True}
        if self._config.temperature is not None:
            body["temperature"] = self._config.temperature
        return body

    async def run(self, request: AgentRequest) -> AgentResult:
        return await self.stream(request, ignore_deltas)

    async def stream(self, request: AgentRequest, on_delta: Deltas) -> AgentResult:
        """The answer, each token handed to ``on_delta`` as it arrives."""
        started = time.monotonic()
        try:
            with anyio.fail_after(self._timeout_s):
                answer = await self._call(request, started + self._timeout_s, on_delta)
        except TimeoutError:
            raise AgentError(
                f"the agent timed out after {self._timeout_s:g} s — /retry to try again",
                cause=f"no complete answer from {self._url} within {self._timeout_s:g} s",
            ) from None
        duration = time.monotonic() - started
        usage = answer.usage or Usage()
        log.debug(
            "[agent] %s answered %d chars in %.2fs (tokens %d+%d, message %s)",
            self._host,
            len(answer.text),
            duration,
            usage.prompt_tokens,
            usage.completion_tokens,
            request.message_id,
        )
        return AgentResult(text=answer.text, usage=usage, duration_s=duration)

    async def _call(self, request: AgentRequest, deadline: float, on_delta: Deltas) -> Answer:
        """The call under the retry policy (:mod:`edgecrab.retry`): ``max_retries`` more attempts of a
        failure worth retrying, while the pause still ends before ``deadline``. A request the server
        refused for one of its options is adjusted and repeated at once: part of the attempt."""
        attempts = 0

        async def once() -> Answer:
            nonlocal attempts
            attempts += 1
            try:
                return await self._attempt(self.build_body(request), on_delta)
            except _Retry as retry:
                if not retry.free:
                    raise
            return await self._attempt(self.build_body(request), on_delta)

        def again(exc: BaseException) -> bool:
            if not isinstance(exc, _Retry):
                return False
            shortest = max(self._backoff.step(attempts - 1) / 2, exc.retry_after or 0.0)
            return time.monotonic() + shortest < deadline

        def warn(notice: RetryNotice) -> None:
            cause = notice.error.error.cause if isinstance(notice.error, _Retry) else notice.error
            log.warning(
                "[agent] %s; retry %d/%d in %.2fs (message %s)",
                cause,
                notice.retry,
                notice.of,
                notice.delay_s,
                request.message_id,
            )

        try:
            return await retrying(
                once,
                self._backoff,
                retry_error=again,
                min_wait=lambda _, exc: (exc.retry_after or 0.0) if isinstance(exc, _Retry) else 0.0,
                on_retry=warn,
            )
        except _Retry as retry:
            raise retry.error from None

    async def _attempt(self, body: dict[str, Any], on_delta: Deltas) -> Answer:
        answer = Answer(on_delta)
        try:
            content = await self._encoded(body)
            async with self._client.stream(
                "POST", self._url, content=content, headers=_JSON_HEADERS
            ) as response:
                if response.status_code >= 300:
                    raw = await read_some(response)
                    if response.status_code == 400 and b"stream_options" in raw and self._stream_options:
                        self._stream_options = False
                        log.info("[agent] %s rejects stream_options; asking again without it", self._host)
                        raise _Retry(AgentError("stream_options rejected"), free=True)
                    raise status_error(
                        response.status_code, raw, response.headers, url=self._url, redact=self._redact
                    )
                content_type = response.headers.get("content-type", "").lower()
                if "json" in content_type:
                    raw = await response.aread()
                    if raw.lstrip().startswith(b"data:"):  # SSE mislabelled as JSON by a proxy
                        self._read_sse_text(raw.decode("utf-8", "replace"), answer)
                    else:
                        self._read_json(raw, answer)
                else:
                    # Also for a missing or wrong content type, as long as the body looks like SSE.
                    await self._read_stream(response, answer, checked="text/event-stream" in content_type)
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise transport_error(
                exc, answered=bool(answer.parts), url=self._url, host=self._host, redact=self._redact
            ) from None
        return self._finish(answer)

    async def _encoded(self, body: dict[str, Any]) -> bytes:
        """``body`` as JSON, as httpx's ``json=`` writes it. A request with pictures (megabytes of data URLs,
        about 3 ms each to encode: 0.4 s of the event loop's time for 50 photos) is encoded in a worker
        thread, one at a time: the encoder holds the GIL throughout, and several at once kept the event
        loop from it for tens of milliseconds. A text-only request is encoded on the loop, in microseconds."""
        if not any(isinstance(m.get("content"), list) for m in body["messages"]):
            return _dumps(body)
        if self._encoding is None:
            self._encoding = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(_dumps, body, limiter=self._encoding)

    async def _read_stream(self, response: httpx.Response, answer: Answer, *, checked: bool) -> None:
        pending: list[str] = []
        # aclosing: leaving early (at [DONE], on an error) must close the generator now, not at GC.
        lines_iter = cast(AsyncGenerator[str, None], sse_lines(response))
        async with contextlib.aclosing(lines_iter) as lines:
            async for line in lines:
                if not checked and line.strip():
                    checked = True
                    if line.partition(":")[0] not in _SSE_FIELDS:
                        content_type = response.headers.get("content-type") or "no content-type"
                        raise AgentError(
                            _NOT_READABLE,
                            cause=self._redact(f"{self._url} answered {content_type}: {line[:200]!r}"),
                        )
                self._feed_line(line, pending, answer)
                if answer.done:
                    break
            if answer.done and not answer.truncated:
                # Read the (normally empty) rest so the connection can be reused; a server that keeps the
                # stream open after [DONE] is not waited for.
                with anyio.move_on_after(_DRAIN_AFTER_DONE_S):
                    async for _ in lines:
                        pass
            elif pending:
                self._on_data("\n".join(pending), answer, final=True)

    def _read_sse_text(self, text: str, answer: Answer) -> None:
        pending: list[str] = []
        for line in text.splitlines():
            self._feed_line(line, pending, answer)
            if answer.done:
                return
        if pending:
            self._on_data("\n".join(pending), answer, final=True)

    def _feed_line(self, line: str, pending: list[str], answer: Answer) -> None:
        """One line of SSE: ``data:`` lines accumulate in ``pending`` until they form a whole payload."""
        if not line:
            if pending:  # the end of an event whose data never parsed
                self._on_data("\n".join(pending), answer, final=True)
                pending.clear()
            return
        name, _, value = line.partition(":")
        if name != "data":  # comments (keep-alives), event:, id:, retry: carry nothing we use
            return
        pending.append(value[1:] if value.startswith(" ") else value)
        # Lenient framing: a data line that parses on its own is an event, blank line or not.
        if self._on_data("\n".join(pending), answer, final=False):
            pending.clear()

    def _on_data(self, data: str, answer: Answer, *, final: bool) -> bool:
        """Apply one SSE ``data`` payload; ``False`` if it is incomplete (and not ``final``)."""
        if data.strip() == "[DONE]":
            answer.done = True
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            if not final:
                return False
            raise AgentError(
                _NOT_READABLE, cause=self._redact(f"unparseable stream data from {self._url}: {data[:200]!r}")
            ) from None
        self._apply(chunk, answer, key="delta")
        return True

    def _read_json(self, raw: bytes, answer: Answer) -> None:
        try:
            payload = json.loads(raw)
        except ValueError:
            raise AgentError(
                _NOT_READABLE, cause=self._redact(f"unparseable JSON from {self._url}: {raw[:200]!r}")
            ) from None
        self._apply(payload, answer, key="message")
        answer.done = True

    def _apply(self, chunk: Any, answer: Answer, *, key: str) -> None:
        if not isinstance(chunk, dict):
            raise AgentError(
                _NOT_READABLE, cause=self._redact(f"unexpected payload from {self._url}: {chunk!r:.200}")
            )
        if chunk.get("error"):
            detail = self._redact(_error_detail(json.dumps(chunk).encode()))
            raise AgentError(f"the agent reported an error: {detail}", cause=self._redact(f"{chunk!r:.500}"))
        usage = parse_usage(chunk.get("usage"))
        if usage is not None:
            answer.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        message = choice.get(key) or choice.get("delta") or choice.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and content:
            self._add(answer, content)
        if choice.get("finish_reason"):
            answer.finish_reason = str(choice["finish_reason"])

    def _add(self, answer: Answer, content: str) -> None:
        """Append ``content``, up to ``agent.max_answer_chars`` in all: past that, the answer is marked
        truncated and done, so reading stops and the stream is closed (the rest is never downloaded)."""
        room = self._max_chars - answer.chars
        if len(content) > room:
            content = content[: max(room, 0)]
            answer.truncated = answer.done = True
        answer.parts.append(content)
        answer.chars += len(content)
        if content:
            answer.on_delta(content)

    def _finish(self, answer: Answer) -> Answer:
        if answer.truncated:
            log.warning(
                "[agent] %s: answer cut at %d characters (agent.max_answer_chars)", self._host, answer.chars
            )
            note = f"\n\n…(answer truncated at {self._max_chars:,} characters)"
            answer.parts.append(note)
            answer.on_delta(note)
            return answer
        if answer.text.strip():
            if not answer.done and answer.finish_reason is None:
                log.warning("[agent] %s ended the stream without [DONE] or finish_reason", self._host)
            return answer
        if answer.finish_reason == "content_filter":
            raise AgentError(
                "the agent's content filter withheld the answer", cause="finish_reason=content_filter"
            )
        if answer.done or answer.finish_reason:
            raise AgentError(
                "the agent sent an empty reply — /retry to try again",
                cause=f"no content from {self._url} (finish_reason={answer.finish_reason})",
            )
        raise AgentError(_NOT_READABLE, cause=f"the stream from {self._url} ended without any answer")

    def _redact(self, text: str) -> str:
        """The api key, every registered secret and URL credentials as ``***``."""
        return redact(text, (self._api_key,))


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()

"""How the OpenAI-compatible agent's failures read: each HTTP status or transport error as an
:class:`~edgecrab.agents.base.AgentError` in the words the user sees, wrapped in :class:`Retry` when
another attempt is worth it. The policy is in :mod:`edgecrab.agents.openai`'s docstring; the retries
themselves are its ``_call``.

The technical detail goes to ``AgentError.cause`` for the log, passed through ``redact`` (which hides the
api key) wherever it quotes the server or the URL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import httpx

from edgecrab.agents.base import AgentError
from edgecrab.outbound import failure_kind

__all__ = ["NOT_READABLE", "Retry", "error_detail", "read_some", "status_error", "transport_error"]

NOT_READABLE = "the agent sent a response edgecrab could not read"
_ERROR_BODY_LIMIT = 4096


class Retry(Exception):
    """A failure worth another attempt; ``error`` is raised when the attempts run out."""

    def __init__(self, error: AgentError, retry_after: float | None = None, *, free: bool = False) -> None:
        super().__init__(error.cause)
        self.error = error
        self.retry_after = retry_after
        self.free = free
        """Retry at once without counting it (the request itself was adjusted)."""


def transport_error(
    exc: Exception, *, answered: bool, url: str, host: str, redact: Callable[[str], str]
) -> Exception:
    """``exc`` from httpx on ``POST url``; ``answered``: part of the answer had arrived (never retried)."""
    cause = redact(f"{type(exc).__name__} on POST {url}: {exc}")
    if isinstance(exc, httpx.DecodingError):
        return AgentError(NOT_READABLE, cause=cause)
    if answered:
        return AgentError("the agent's answer was cut off — /retry to try again", cause=cause)
    kind = failure_kind(exc)
    if kind in ("refused", "timeout") or isinstance(exc, httpx.ProxyError):
        error = AgentError(
            f"could not reach the agent at {host} — is it running? /retry to try again", cause=cause
        )
    elif isinstance(exc, httpx.UnsupportedProtocol):
        return AgentError(f"could not reach the agent at {host} — check agent.base_url", cause=cause)
    else:
        error = AgentError("the agent closed the connection unexpectedly — /retry to try again", cause=cause)
    return Retry(error)


def status_error(
    status: int, raw: bytes, headers: Mapping[str, str], *, url: str, redact: Callable[[str], str]
) -> Exception:
    """An answer with HTTP ``status`` (not 2xx) and the start of its body, ``raw``."""
    cause = redact(f"POST {url} -> HTTP {status}: {raw[:500].decode('utf-8', 'replace')}")
    if status in (401, 403):
        return AgentError(f"the agent returned {status}: check agent.api_key", cause=cause)
    if status == 404:
        return AgentError("the agent returned 404: check agent.base_url and agent.model", cause=cause)
    if status == 429:
        error = AgentError("the agent is rate-limited (HTTP 429) — /retry in a moment", cause=cause)
        return Retry(error, _retry_after(headers.get("retry-after")))
    if status >= 500 or status == 408:
        error = AgentError(f"the agent service failed (HTTP {status}) — /retry to try again", cause=cause)
        return Retry(error, _retry_after(headers.get("retry-after")))
    if status < 400:
        return AgentError(
            f"the agent answered with a redirect (HTTP {status}): check agent.base_url", cause=cause
        )
    detail = redact(error_detail(raw))
    reason = f": {detail}" if detail else ""
    return AgentError(f"the agent rejected the request (HTTP {status}){reason}", cause=cause)


async def read_some(response: httpx.Response, limit: int = _ERROR_BODY_LIMIT) -> bytes:
    """At most ``limit`` bytes of the body (error pages can be large; only the start is useful)."""
    data = b""
    async for piece in response.aiter_bytes():
        data += piece
        if len(data) >= limit:
            break
    return data[:limit]


def error_detail(raw: bytes) -> str:
    """The server's own reason: ``{"error": {"message": ...}}``, ``{"message": ...}`` or the text."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text[:200] if text and not text.lstrip().startswith("<") else ""
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            message = error.get("message") or error.get("msg") or error.get("detail")
            if message:
                return str(message)[:200]
        elif isinstance(error, str):
            return error[:200]
    return text[:200]


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is rare on these APIs and ignored)."""
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None

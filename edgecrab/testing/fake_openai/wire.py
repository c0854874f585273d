"""What OpenAI's chat completions API looks like on the wire, as the fake sends it.

The streamed chunks (``chat.completion.chunk``) and the one-body answer (``chat.completion``), the
deterministic ``usage`` object, the token split of a reply, one Server-Sent Event, and the JSON error
body with its HTTP status. No state: :mod:`edgecrab.testing.fake_openai.server` decides what to send.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from aiohttp import web


def split_tokens(text: str) -> list[str]:
    """Words with their leading whitespace (as OpenAI streams them); joined they give back ``text``."""
    tokens = re.findall(r"\s*\S+", text)
    rest = text[len("".join(tokens)) :]
    if rest:
        tokens.append(rest)
    return tokens


def usage(
    messages: list[dict[str, Any]],
    tokens: list[str],
    *,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> dict[str, int]:
    """Words in all messages and tokens in the reply, unless fixed counts are given."""
    prompt = prompt_tokens
    if prompt is None:
        prompt = sum(len(str(m.get("content") or "").split()) for m in messages)
    completion = completion_tokens if completion_tokens is not None else len(tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chunk(number: int, model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """One streamed chunk of the answer to request ``number``."""
    return {
        "id": f"chatcmpl-fake-{number}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def completion(number: int, model: str, text: str, usage: dict[str, int]) -> dict[str, Any]:
    """The whole answer to request ``number`` in one body (``stream`` not asked for)."""
    return {
        "id": f"chatcmpl-fake-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage,
    }


def event(payload: dict[str, Any]) -> bytes:
    """``payload`` as one Server-Sent Event."""
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def error_response(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    """An OpenAI error body (``{"error": {"message", "type", "code"}}``) with its HTTP status."""
    return web.json_response({"error": {"message": message, "type": kind, "code": code}}, status=status)


__all__ = ["chunk", "completion", "error_response", "event", "split_tokens", "usage"]

"""Typed reads of one field of a decoded robot payload.

Each reader takes the parent object, the key and the name to put in an error (``content.richText``), and
raises :class:`~edgecrab.dingtalk.frames.FrameError` with a short reason when the value has the wrong shape,
so the readers of message bodies (:mod:`~edgecrab.dingtalk.payloads`, :mod:`~edgecrab.dingtalk.mentions`)
and :mod:`~edgecrab.dingtalk.convert` never check types themselves. They tolerate what relays produce:
numbers where strings belong, ``0``/``1`` and ``"true"``/``"false"`` for booleans. The modules that read
payloads import them under short private names (``_str``, ``_flag``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edgecrab.dingtalk.frames import FrameError

__all__ = ["epoch_s", "flag", "list_of", "obj", "string", "text_of"]


def obj(parent: Mapping[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FrameError(f"{where} is not an object")
    return value


def text_of(value: Any) -> str | None:
    """Strings as they are, numbers as text; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return str(value)
    except ValueError:  # an int beyond Python's digit limit
        return None


def string(parent: Mapping[str, Any], key: str, where: str = "", *, required: bool = False) -> str:
    value = parent.get(key)
    if type(value) is str and value:  # what nearly every field is: returned before any other check
        return value
    if value is None or value == "":
        if required:
            raise FrameError(f"missing {where or key}")
        return ""
    text = text_of(value)
    if text is None:
        raise FrameError(f"{where or key} is not a string")
    return text


def flag(parent: Mapping[str, Any], key: str, where: str = "") -> bool:
    value = parent.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    # Tolerate 0/1 and "true"/"false", which some relays produce.
    if value in ("true", "false"):
        return value == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise FrameError(f"{where or key} is not a boolean")


def epoch_s(parent: Mapping[str, Any], key: str) -> float:
    """A millisecond timestamp as epoch seconds; 0.0 when absent."""
    value = parent.get(key)
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise FrameError(f"{key} is not a number")
    try:
        seconds = float(value) / 1000.0
    except (TypeError, ValueError, OverflowError):
        raise FrameError(f"{key} is not a number") from None
    if not math.isfinite(seconds):
        raise FrameError(f"{key} is not a number")
    return seconds


def list_of(parent: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise FrameError(f"{where} is not a list")
    return value

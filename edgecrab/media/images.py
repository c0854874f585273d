"""Pictures for a vision model: scaled down above ``media.max_image_pixels`` (a JPEG to between a quarter of
it and all of it, whichever its decoder reaches fastest), in a format it reads, and their base64 data URLs.

Runs in a worker thread (Pillow releases the GIL while it decodes and resizes), at most
:func:`work_limiter` of them at once. A picture that needs no change is used as it is; otherwise the result
is kept next to the original (``<name>.vision.jpg`` or ``.png``, 0600) and deleted with it.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

T = TypeVar("T")
_WORK: RunVar[anyio.CapacityLimiter] = RunVar("edgecrab_media_work")

MAX_IMAGE_BYTES = 4 * 1024 * 1024
"""A picture file larger than this is re-encoded as JPEG even when it has few enough pixels: servers cap
the size of a request, and a photo saved as PNG can be several times its JPEG size."""
VISION_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""What OpenAI-compatible vision models take in a data URL."""


def prepare_image(path: str, mime: str, max_pixels: int) -> tuple[str, str]:
    """``(path, mime)`` of the picture to send: the original, or a smaller or converted copy."""
    # Pillow is imported with the first picture (in a worker thread), not at start: 4.5 MB of a gateway's
    # idle memory (bench 4a) that one whose users send no pictures never needs.
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        small = os.path.getsize(path) <= MAX_IMAGE_BYTES
        if mime in VISION_TYPES and width * height <= max_pixels and small:
            return path, mime
        scale = min(1.0, math.sqrt(max_pixels / max(width * height, 1)))
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        # A JPEG is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling) when that leaves at
        # least half the sides asked for: a 12 MP photo becomes 2016x1512 (3 MP) in 68 ms, with no resize,
        # where decoding it whole and resizing to 4 MP took 290 ms, and the decode held the GIL (stalling
        # the event loop) for up to 20 ms at a time. Vision models scale pictures down further anyway.
        image.draft("RGB", (max(1, size[0] // 2), max(1, size[1] // 2)))
        image.thumbnail(size)
        alpha = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
        out = image.convert("RGBA" if alpha else "RGB")
        target, fmt, kind = (
            (f"{path}.vision.png", "PNG", "image/png")
            if alpha
            else (f"{path}.vision.jpg", "JPEG", "image/jpeg")
        )
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            out.save(f, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return target, kind


def vision_picture(path: str, mime: str, max_pixels: int) -> tuple[str, str, str]:
    """``(path, mime, data URL)`` of the picture to send (:func:`prepare_image`, then :func:`data_url`)."""
    path, mime = prepare_image(path, mime, max_pixels)
    return path, mime, data_url(path, mime)


def data_url(path: str, mime: str) -> str:
    """The file as a base64 data URL; ``""`` when it is gone."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return f"data:{mime if mime in VISION_TYPES else 'image/png'};base64,{base64.b64encode(data).decode()}"


def work_limiter() -> anyio.CapacityLimiter:
    """The worker threads media work (Pillow, base64, PDF text) may use at once, one set per event loop:
    one fewer than the cores this process may run on, at least one. 50 photos scaled down in up to 40
    threads (anyio's default) took the cores from the event loop that reads and acks frames, and acks
    waited seconds (BENCHMARKS.md, media); a core left over keeps the loop's share."""
    try:
        return _WORK.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(max(1, _cores() - 1))
        _WORK.set(limiter)
        return limiter


async def in_worker(func: Callable[..., T], *args: object) -> T:
    """``func(*args)`` in a worker thread, under :func:`work_limiter`."""
    return await anyio.to_thread.run_sync(func, *args, limiter=work_limiter())


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # the cores this process may use (Linux), not the machine's
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1

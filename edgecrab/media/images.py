"""Pictures for a vision model: scaled down above ``media.max_image_pixels``, in a format it reads.

Runs in a worker thread (Pillow releases the GIL while it decodes and resizes). A picture that needs no
change is used as it is; otherwise the result is kept next to the original (``<name>.vision.jpg`` or
``.png``, 0600) and deleted with it.
"""

from __future__ import annotations

import math
import os

from PIL import Image

MAX_IMAGE_BYTES = 4 * 1024 * 1024
"""A picture file larger than this is re-encoded as JPEG even when it has few enough pixels: servers cap
the size of a request, and a photo saved as PNG can be several times its JPEG size."""
VISION_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""What OpenAI-compatible vision models take in a data URL."""


def prepare_image(path: str, mime: str, max_pixels: int) -> tuple[str, str]:
    """``(path, mime)`` of the picture to send: the original, or a smaller or converted copy."""
    with Image.open(path) as image:
        width, height = image.size
        small = os.path.getsize(path) <= MAX_IMAGE_BYTES
        if mime in VISION_TYPES and width * height <= max_pixels and small:
            return path, mime
        scale = min(1.0, math.sqrt(max_pixels / max(width * height, 1)))
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        image.draft("RGB", size)  # JPEG: decode at a smaller size right away
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

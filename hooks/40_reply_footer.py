"""Reply footer: appends a configured line to every reply.

Settings (``hooks.config.40_reply_footer``)::

    footer: "— answered by our assistant; it can be wrong"   # empty: no footer

Empty replies get no footer, and a reply already ending with the footer is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgecrab import hookimpl

DEFAULT_FOOTER = "— sent by edgecrab"

_footer = DEFAULT_FOOTER


@hookimpl
def hook_loaded(config: Mapping[str, Any]) -> None:
    global _footer
    _footer = str(config.get("footer", DEFAULT_FOOTER)).strip()


@hookimpl
def prepare_reply(reply: str) -> str | None:
    if not _footer or not reply.strip() or reply.rstrip().endswith(_footer):
        return None
    return f"{reply}\n\n{_footer}"

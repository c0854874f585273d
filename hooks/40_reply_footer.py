"""Reply footer: appends a configured line to every reply.

Off until switched on: replies are left alone until ``footer`` is set. Settings
(``hooks.config.40_reply_footer``)::

    footer: "— answered by our assistant; it can be wrong"   # empty or absent: no footer

Empty replies get no footer, and a reply already ending with the footer is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from edgecrab import hookimpl

log = logging.getLogger(__name__)

_footer = ""
"""Empty: off."""


@hookimpl
def hook_loaded(name: str, config: Mapping[str, Any]) -> None:
    global _footer
    _footer = str(config.get("footer") or "").strip()
    if not _footer:
        log.info("[hooks] %s is off: set hooks.config.%s.footer to add a line to every reply", name, name)


@hookimpl
def prepare_reply(reply: str) -> str | None:
    if not _footer or not reply.strip() or reply.rstrip().endswith(_footer):
        return None
    return f"{reply}\n\n{_footer}"

"""Bad fixture: validates its settings in hook_loaded and refuses to load without a token."""

from typing import Any

from edgecrab import hookimpl


@hookimpl
def hook_loaded(config: Any) -> None:
    if "token" not in config:
        raise ValueError("hooks.config.bad_config.token is required")  # line 11

"""Bad fixture: fails at import (a module that does not exist)."""

import edgecrab_no_such_module  # noqa: F401  (line 3)

from edgecrab import hookimpl


@hookimpl
def reply_sent(reply: str) -> None:
    pass

"""Bad fixture: Python refuses to compile it (ruff parses it, so the repo stays lint-clean)."""

from edgecrab import hookimpl

return None  # noqa: F706  (line 5: SyntaxError 'return' outside function)


@hookimpl
def reply_sent(reply: str) -> None:
    pass

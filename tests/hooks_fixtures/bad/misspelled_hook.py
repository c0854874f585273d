"""Bad fixture: a misspelt hook name must stop loading, never be silently ignored."""

from edgecrab import hookimpl


@hookimpl
def prepare_replay(reply: str) -> str:  # line 7: should be prepare_reply
    return reply

"""Bad fixture: names an argument the hook does not offer."""

from edgecrab import hookimpl


@hookimpl
def prepare_reply(text: str) -> str:  # line 7: the argument is called `reply`
    return text

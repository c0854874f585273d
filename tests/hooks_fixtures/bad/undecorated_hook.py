"""Bad fixture: a function named like a hook without @hookimpl would never run."""


def allow_message(message: object) -> bool:  # line 4
    return False

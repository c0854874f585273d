"""Loads fine, hangs at run time in plain (blocking) code; the test releases it afterwards."""

import threading

from edgecrab import hookimpl

RELEASE = threading.Event()
FINISHED = threading.Event()


@hookimpl
def prepare_reply(reply: str) -> str:
    RELEASE.wait(30)  # blocks a worker thread, not the event loop
    FINISHED.set()
    return reply + " (too late)"

"""Loads fine, hangs at run time in async code."""

import anyio

from edgecrab import hookimpl


@hookimpl
async def prepare_reply(reply: str) -> str:
    await anyio.sleep_forever()
    return reply

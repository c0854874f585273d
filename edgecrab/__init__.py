"""edgecrab: a DingTalk gateway for AI agents.

Read the modules in message order: ``dingtalk.stream`` receives frames (``dingtalk.frames`` parses them),
``dingtalk.convert`` turns their data into :class:`~edgecrab.events.Message`, ``router`` parses commands
and applies the busy policy, ``runs`` drives the agent, ``delivery`` chunks and sends the reply through
``dingtalk.rest``.
"""

from edgecrab.hooks.specs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]

"""edgecrab: a DingTalk gateway for AI agents.

Read the packages in message order: ``dingtalk.stream`` receives frames and ``dingtalk.intake`` records
them before their ack; ``dingtalk.convert`` turns their data into :class:`~edgecrab.events.Message`;
``gateway`` routes it (access, hooks, commands); ``core.runs`` applies the busy policy and drives the agent
(``agents``); ``replies.delivery`` chunks the answer into the ledger and sends it through ``dingtalk.rest``.
``config``, ``hooks`` and ``store`` are what all of them stand on.
"""

from edgecrab.hooks.specs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]

"""The conversation core, platform-neutral: what happens to a :class:`~edgecrab.events.Message` once recorded.

:mod:`~edgecrab.core.router` parses commands and applies aliases; :mod:`~edgecrab.core.commands` answers the
built-in chat commands; :mod:`~edgecrab.core.sessions` keys conversations and holds their state;
:mod:`~edgecrab.core.runs` applies the busy policy and drives one agent run per session at a time
(:mod:`~edgecrab.core.agentcall` calling the agent under a time limit).
"""

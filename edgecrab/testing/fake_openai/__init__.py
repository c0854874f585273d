"""A fake OpenAI-compatible chat server for tests, end-to-end runs and benchmarks.

:class:`FakeOpenAI` is an aiohttp server on ``127.0.0.1`` (a free port by default) that answers
``POST /v1/chat/completions`` like OpenAI does: Server-Sent Events when the body says ``"stream": true``
(content deltas, a ``finish_reason`` chunk, a ``usage`` chunk when ``stream_options.include_usage`` is set,
then ``data: [DONE]``), one JSON body otherwise. Its ``mode`` switches to a failure on purpose:

=====================  ====================================================================
``ok``                 answer normally (after ``delay_s``, ``token_delay_s`` between tokens)
``json``               ignore ``stream: true`` and answer with one JSON body (like some proxies)
``hang``               accept the request and never answer (until the client goes away)
``garbage``            answer 200 with a body no OpenAI client can parse
``error500``           answer 500 every time
``error429_then_ok``   answer 429 ``errors_before_ok`` times, then ``ok`` (the count restarts when set)
``error401``           answer 401 every time (also the answer to a wrong key when ``api_key`` is set)
=====================  ====================================================================

Usage is deterministic: ``prompt_tokens`` is the number of whitespace-separated words in all request messages
and ``completion_tokens`` the number of streamed tokens (words), unless fixed values are given.

The server notices a client that disconnects mid-answer (``disconnects``,
:meth:`FakeOpenAI.wait_disconnects`), which is how tests prove that ``/stop`` closes the HTTP stream.

Run it as a process for end-to-end tests (:mod:`~edgecrab.testing.fake_openai.cli`)::

    python -m edgecrab.testing.fake_openai --port 0 --delay 2 --token-delay 0.05

It prints one JSON line (``{"base_url": ..., "control_url": ..., "port": ...}``) when ready and serves
``/_fake/state``: ``GET`` returns counters, usage totals and the last requests; ``POST`` a JSON object with
any of ``mode``, ``delay_s``, ``token_delay_s``, ``reply``, ``prompt_tokens``, ``completion_tokens``,
``errors_before_ok``, ``api_key``, ``reset`` changes them.

:mod:`~edgecrab.testing.fake_openai.server` is the server and its controls,
:mod:`~edgecrab.testing.fake_openai.wire` the shape of OpenAI's bodies and errors.
"""

from edgecrab.testing.fake_openai.cli import main
from edgecrab.testing.fake_openai.server import MODES, FakeOpenAI, ReplyFn, default_reply
from edgecrab.testing.fake_openai.wire import error_response, split_tokens

__all__ = ["MODES", "FakeOpenAI", "ReplyFn", "default_reply", "error_response", "main", "split_tokens"]

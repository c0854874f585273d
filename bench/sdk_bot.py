"""A DingTalk bot written the way the ``dingtalk-stream`` 0.24.3 quick start shows: the contender to beat.

``python -m bench.sdk_bot --openapi http://127.0.0.1:PORT --client-id K --client-secret S [--llm URL]``

A ``ChatbotHandler`` whose ``process()`` answers with ``self.reply_text(...)`` and then returns
``AckMessage.STATUS_OK``, run by ``client.start_forever()``. With ``--llm`` it first asks an
OpenAI-compatible server for the answer with ``requests``, inside ``process()``, as a naive bot would.
Nothing here is tuned or "fixed": ``reply_text`` and the LLM call block the event loop, and the ack leaves
only after ``process()`` returns (protocol reference, section 13.3). That is the point of comparison.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sdk_bot")
    parser.add_argument("--openapi", required=True, help="DingTalk OpenAPI base (the fake's base_url)")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--llm", default="", help="OpenAI-compatible base URL (…/v1); echo when empty")
    args = parser.parse_args()

    # The SDK reads its endpoint once, at import time (reference 13.2): set it first.
    os.environ["DINGTALK_OPENAPI_ENDPOINT"] = args.openapi.rstrip("/")
    import dingtalk_stream  # after the environment variable, on purpose
    import requests
    from dingtalk_stream import AckMessage

    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    llm_url = args.llm.rstrip("/") + "/chat/completions" if args.llm else ""

    class EchoTextHandler(dingtalk_stream.ChatbotHandler):
        async def process(self, callback: dingtalk_stream.CallbackMessage) -> tuple[int, str]:
            incoming = dingtalk_stream.ChatbotMessage.from_dict(callback.data)
            text = incoming.text.content.strip()
            if llm_url:
                answer = requests.post(  # noqa: ASYNC210 - blocking on purpose: this is the naive bot
                    llm_url,
                    json={"model": "fake-model", "messages": [{"role": "user", "content": text}]},
                    headers={"Authorization": "Bearer sk-bench"},
                    timeout=60,
                ).json()
                reply = answer["choices"][0]["message"]["content"]
            else:
                reply = f"echo: {text}"
            self.reply_text(reply, incoming)
            return AckMessage.STATUS_OK, "OK"

    credential = dingtalk_stream.Credential(args.client_id, args.client_secret)
    client = dingtalk_stream.DingTalkStreamClient(credential)
    client.register_callback_handler(dingtalk_stream.chatbot.ChatbotMessage.TOPIC, EchoTextHandler())
    client.start_forever()


if __name__ == "__main__":
    main()

"""The official ``dingtalk-stream`` quick-start bot, as its README writes it: the conformance oracle's client.

``python tests/e2e/sdk_quickstart_bot.py --client_id K --client_secret S``

A ``ChatbotHandler`` whose ``process()`` answers every message twice, with ``self.reply_text(...)`` and
``self.reply_markdown(...)``, and returns ``AckMessage.STATUS_OK``; ``DingTalkStreamClient.start_forever()``
runs it. Nothing here knows about the emulator: ``tests/e2e/test_sdk_oracle.py`` points the SDK at it with
the SDK's own ``DINGTALK_OPENAPI_ENDPOINT`` environment variable, so what the SDK sends is what it would
send to DingTalk.
"""

from __future__ import annotations

import argparse
import logging

import dingtalk_stream
from dingtalk_stream import AckMessage


class EchoBotHandler(dingtalk_stream.ChatbotHandler):
    async def process(self, callback: dingtalk_stream.CallbackMessage) -> tuple[int, str]:
        incoming_message = dingtalk_stream.ChatbotMessage.from_dict(callback.data)
        text = incoming_message.text.content.strip()
        self.logger.info("received %r from %s", text, incoming_message.sender_staff_id)
        self.reply_text(f"echo: {text}", incoming_message)
        self.reply_markdown("echo", f"**echo**: {text}", incoming_message)
        return AckMessage.STATUS_OK, "OK"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)-8s %(levelname)-8s %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("--client_id", dest="client_id", required=True)
    parser.add_argument("--client_secret", dest="client_secret", required=True)
    options = parser.parse_args()

    credential = dingtalk_stream.Credential(options.client_id, options.client_secret)
    client = dingtalk_stream.DingTalkStreamClient(credential)
    client.register_callback_handler(dingtalk_stream.chatbot.ChatbotMessage.TOPIC, EchoBotHandler())
    client.start_forever()


if __name__ == "__main__":
    main()

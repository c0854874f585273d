"""Inbound media: the pictures, voice notes, videos and files people send, from download code to agent turn.

How a message with media flows::

    ack (the durable inbox) -> ingest -> MediaStage.submit: merge window for pictures, downloads started
    -> runner: MediaStage.user(message) waits for the files, renders the turn -> agent

- :mod:`~edgecrab.media.guard`: which hosts a download may go to (DingTalk's, the api_base host,
  ``media.allowed_hosts``): the SSRF guard, also applied to every redirect.
- :mod:`~edgecrab.media.files`: the directory the files are kept in (0700, files 0600), their names, the
  MIME type read from the bytes (``filetype``), and deleting them after ``media.keep_hours``.
- :mod:`~edgecrab.media.fetch`: ``messageFiles/download`` (download code -> temporary URL) and the streamed,
  capped GET, without a ``Content-Type`` header (the URL is signed and refuses one), once more with a new
  URL when the first one expired.
- :mod:`~edgecrab.media.render`: what the agent is given: OpenAI content parts (pictures as data URLs when
  ``agent.vision``), or text with notes and the files' paths for ``command`` and ``python`` agents.
- :mod:`~edgecrab.media.stage`: the piece the gateway builds and starts: merge window, downloads in the
  background, the turn renderer the runner asks.

Nothing here runs on the ack path: downloads start when the ingest task hands the message on.
"""

from edgecrab.media.stage import MediaStage

__all__ = ["MediaStage"]

"""One download: the download code exchanged for a temporary URL, then the file streamed to disk.

``POST {api_base}/v1.0/robot/messageFiles/download {"downloadCode", "robotCode"}`` with the robot's
access token answers ``{"downloadUrl"}``, a pre-signed OSS URL. The GET carries no ``Content-Type`` (the
signature covers the headers, and one more gives ``403 SignatureDoesNotMatch``) and no token. Redirects are
followed by hand, each judged by :class:`~edgecrab.media.guard.DownloadGuard`, so a redirect can never
reach a host the guard refuses. The body is streamed into a 0600 file and stopped at ``media.max_bytes``
(the declared ``Content-Length`` is checked first); it is written a megabyte at a time in a worker thread,
never on the event loop. A URL that answers 403/404/410 (expired, or signed for
a moment that has passed) is exchanged once more. Every failure becomes the attachment's ``note``, a
sentence the agent is shown; nothing here raises for a bad download.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx

from edgecrab.config import MediaConfig
from edgecrab.dingtalk.cards import TOKEN_HEADER
from edgecrab.dingtalk.tokens import DingTalkError, TokenCache, error_from_response
from edgecrab.events import Attachment
from edgecrab.media.files import MediaFiles, sniff
from edgecrab.media.guard import DownloadGuard
from edgecrab.outbound import failure_kind

log = logging.getLogger("edgecrab.media")

DOWNLOAD_PATH = "/v1.0/robot/messageFiles/download"
PERMISSION = "qyapi_robot_sendmsg"
"""The app permission ``messageFiles/download`` needs (developer console, Permissions)."""
_MAX_REDIRECTS = 3
_EXPIRED = (403, 404, 410)
WRITE_BYTES = 1024 * 1024
"""Downloaded bytes are written in pieces of about this size, in a worker thread: written on the event loop,
16 KB at a time as they arrive, 50 photos took 2 s of the loop's time (BENCHMARKS.md, media), and acks
waited behind them."""
STEP_BYTES = 16 * 1024
"""A download gives the event loop back after about this many bytes. Bytes already received are read without
waiting, so without this one task read up to a megabyte (64 of httpx-aiohttp's 16 KB chunks) in one step,
32 downloads made a step of the loop 50-200 ms long, and acks waited for it."""


class _Failed(Exception):
    """A download that cannot succeed; ``str()`` is the note the agent is shown."""


class _Expired(Exception):
    """The temporary URL answered as an expired one would."""


@dataclasses.dataclass
class FetchStats:
    started: int = 0
    stored: int = 0
    failed: int = 0
    bytes: int = 0
    reexchanged: int = 0


class MediaFetcher:
    def __init__(
        self,
        config: MediaConfig,
        api_base: str,
        tokens: TokenCache,
        client: httpx.AsyncClient,
        files: MediaFiles,
        extra_hosts: tuple[str, ...] = (),
    ) -> None:
        self.config, self.tokens, self.client, self.files = config, tokens, client, files
        self._exchange_url = api_base.rstrip("/") + DOWNLOAD_PATH
        self.guard = DownloadGuard(api_base, (*config.allowed_hosts, *extra_hosts))
        self.stats = FetchStats()

    async def fetch(self, attachment: Attachment, robot_code: str) -> Attachment:
        """``attachment`` with its file downloaded (``path``, ``mime``, ``size``), or with a ``note``."""
        self.stats.started += 1
        name = attachment.file_name or _default_name(attachment)
        started = time.monotonic()
        try:
            with anyio.fail_after(self.config.timeout_s):
                path, size = await self._download(attachment.download_code, robot_code, name)
        except TimeoutError:
            return self._failed(attachment, f"the download took longer than {self.config.timeout_s:g} s")
        except _Failed as exc:
            return self._failed(attachment, str(exc))
        except OSError as exc:  # the media directory: gone, full, not writable
            reason = exc.strerror or type(exc).__name__
            return self._failed(attachment, f"the file could not be saved on the gateway ({reason})")
        try:
            mime = sniff(self.files.head(path), name)
        except OSError as exc:  # deleted meanwhile (by hand: the cleanup keeps a file for hours)
            return self._failed(attachment, f"the file could not be read back ({exc.strerror})")
        self.stats.stored += 1
        self.stats.bytes += size
        log.info(
            "[media] %s %s: %d bytes, %s, in %.2f s",
            attachment.kind,
            path.name,
            size,
            mime,
            time.monotonic() - started,
        )
        return dataclasses.replace(attachment, path=str(path), mime=mime, size=size, file_name=name)

    def _failed(self, attachment: Attachment, note: str) -> Attachment:
        self.stats.failed += 1
        log.warning("[media] %s not downloaded: %s", attachment.kind, note)
        return dataclasses.replace(attachment, note=note)

    async def _download(self, code: str, robot_code: str, name: str) -> tuple[Path, int]:
        for attempt in (1, 2):
            url = await self._exchange(code, robot_code)
            try:
                return await self._get(url, name)
            except _Expired:
                if attempt == 2:
                    raise _Failed("the download link DingTalk gave was refused twice (expired)") from None
                self.stats.reexchanged += 1
                log.info("[media] download link expired; asking DingTalk for a new one")
        raise AssertionError("unreachable")

    async def _exchange(self, code: str, robot_code: str) -> str:
        body = {"downloadCode": code, "robotCode": robot_code}
        for attempt in (1, 2):
            token = await self._token()
            try:
                headers = {TOKEN_HEADER: token}
                response = await self.client.post(self._exchange_url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                raise _Failed(f"DingTalk could not be reached ({failure_kind(exc)})") from None
            if response.status_code == 200:
                url = _download_url(response)
                if url:
                    return url
                raise _Failed("DingTalk answered without a downloadUrl")
            err = error_from_response(response, "messageFiles/download")
            if err.needs_new_token and attempt == 1:
                self.tokens.invalidate(token)
                continue
            hint = f"; grant the app the {PERMISSION} permission" if response.status_code == 403 else ""
            log.warning("[media] messageFiles/download refused: %s", err)  # with the request id, for support
            why = f"{err.code or f'HTTP {err.status}'}: {err.message}"
            raise _Failed(f"DingTalk refused the download code ({why}){hint}")
        raise AssertionError("unreachable")

    async def _token(self) -> str:
        try:
            return await self.tokens.get()
        except DingTalkError as exc:
            raise _Failed(f"no DingTalk access token: {exc}") from None

    async def _get(self, url: str, name: str) -> tuple[Path, int]:
        for _ in range(_MAX_REDIRECTS + 1):
            refusal = self.guard.refusal(url)
            if refusal:
                raise _Failed(f"the download link was not followed: {refusal}")
            try:
                async with self.client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    if response.status_code in _EXPIRED:
                        raise _Expired()
                    if response.status_code != 200:
                        raise _Failed(f"the download answered HTTP {response.status_code}")
                    return await self._save(response, name)
            except httpx.HTTPError as exc:
                raise _Failed(f"the download failed ({failure_kind(exc)})") from None
        raise _Failed(f"the download was redirected more than {_MAX_REDIRECTS} times")

    async def _save(self, response: httpx.Response, name: str) -> tuple[Path, int]:
        cap = self.config.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise _Failed(f"the file is {_size(int(declared))}, more than media.max_bytes ({_size(cap)})")
        path, fd = self.files.create(name)
        pending: list[bytes] = []
        size = buffered = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise _Failed(f"the file is larger than media.max_bytes ({_size(cap)})")
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= WRITE_BYTES:
                    await anyio.to_thread.run_sync(_write_all, fd, pending)
                    pending, buffered = [], 0
                elif buffered % STEP_BYTES < len(chunk):
                    await anyio.lowlevel.checkpoint()
            if pending:
                await anyio.to_thread.run_sync(_write_all, fd, pending)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return path, size


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """Write ``chunks`` to ``fd`` (in a worker thread), however few bytes each ``os.write`` takes."""
    view = memoryview(b"".join(chunks))
    while view:
        view = view[os.write(fd, view) :]


def _download_url(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return ""
    url = data.get("downloadUrl") if isinstance(data, dict) else None
    return url if isinstance(url, str) else ""


def _default_name(attachment: Attachment) -> str:
    """``picture``, ``voice.amr``, ``video.mp4``: DingTalk sends names only with files."""
    extra = dict(attachment.extra)
    if attachment.kind == "video":
        return f"video.{extra.get('videoType') or 'mp4'}"
    if attachment.kind == "audio":
        return f"voice.{extra.get('fileExtension') or 'amr'}"
    return "picture" if attachment.kind == "picture" else "file"


def _size(n: int) -> str:
    """``1.5 MB``, ``12 KB``, ``300 bytes``."""
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    if n >= 1024:
        return f"{n // 1024} KB"
    return f"{n} bytes"


human_size = _size

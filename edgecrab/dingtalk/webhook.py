"""What is special about the sessionWebhook: where it may point, what it carries, how it is logged.

The webhook URL arrives inside an inbound message, so it is untrusted input: :class:`WebhookGuard` only
lets it point at DingTalk's own hosts, the configured ``api_base`` host (and port) and any configured
extra hosts, over https (plain http only on loopback, for tests). The URL's ``session`` query value is a
credential, so logs use :func:`redact_url`, and :func:`install_httpx_redaction` keeps httpx's own
``HTTP Request: POST <url>`` INFO line from printing it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from typing import Any

import httpx

from edgecrab.outbound import is_loopback

DINGTALK_HOSTS = ("api.dingtalk.com", "oapi.dingtalk.com")


def redact_url(url: str) -> str:
    """``url`` fit for a log line: scheme, host, port and path; every query value replaced by ``***``."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"
    port = f":{parsed.port}" if parsed.port else ""
    query = "&".join(f"{key}=***" for key in parsed.params)
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path}" + (f"?{query}" if query else "")


class _RedactQueryValues(logging.Filter):
    """Rewrites URL arguments of httpx log records so query values (the webhook session) never show."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) and a.query for a in record.args):
            record.args = tuple(
                redact_url(str(a)) if isinstance(a, httpx.URL) and a.query else a for a in record.args
            )
        return True


_HTTPX_FILTER = _RedactQueryValues()


def install_httpx_redaction() -> None:
    """Attach the query-redacting filter to the ``httpx`` logger (idempotent)."""
    logger = logging.getLogger("httpx")
    if _HTTPX_FILTER not in logger.filters:
        logger.addFilter(_HTTPX_FILTER)


def url_host(url: str) -> str:
    """The host of ``url`` (for log lines), ``?`` when it cannot be parsed."""
    try:
        return httpx.URL(url).host or "?"
    except (httpx.InvalidURL, TypeError):
        return "?"


def append_mention(text: str, who: str, fmt: str) -> str:
    """``text`` with ``@who`` on a line of its own at the end."""
    # A single newline does not break a markdown line on DingTalk, so markdown needs a blank line.
    separator = "\n\n" if fmt == "markdown" else "\n"
    return f"{text}{separator}@{who}" if text else f"@{who}"


def webhook_body(text: str, title: str, fmt: str, at_staff_id: str = "") -> dict[str, Any]:
    """The sessionWebhook JSON; with ``at_staff_id`` the mention is real (``at``) and visible (``@id``)."""
    if at_staff_id:
        text = append_mention(text, at_staff_id, fmt)
    body: dict[str, Any]
    if fmt == "markdown":
        body = {"msgtype": "markdown", "markdown": {"title": title, "text": text}}
    else:
        body = {"msgtype": "text", "text": {"content": text}}
    if at_staff_id:
        body["at"] = {"atUserIds": [at_staff_id], "isAtAll": False}
    return body


def expiry_seconds(value: float) -> float:
    """A webhook expiry as epoch seconds; DingTalk's own field is in milliseconds, so accept those too."""
    return value / 1000.0 if value > 1e11 else value



WEBHOOK_PATH = "/robot/sendBySession"
"""The only path a sessionWebhook has: exactly this on DingTalk's hosts, at the end of the path elsewhere
(``api_base`` or an extra host may put a prefix in front, as a proxy does)."""

_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$", re.I
)


def host_entry_problem(entry: str) -> str:
    """Why ``entry`` is not an ``extra_allowed_hosts`` entry (a host name or IP address, optionally with
    ``:port``), or ``""``. A CIDR, ``*``, a URL with a scheme or path would otherwise be read as one host
    that never matches, or as something else than meant."""
    text = entry.strip()
    if not text:
        return "an empty entry"
    if "*" in text:
        return "wildcards are not supported: list each host"
    if "://" in text:
        return "a URL: write the host name only (the scheme is https, or http on loopback)"
    if "/" in text:
        return "a CIDR range or a path: write a host name or one IP address"
    if any(c in text for c in "@?# \t\\"):
        return "not a host name"
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            return "not a host name"
        port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        return f"port `{port}` is not a port number (1-65535)"
    try:
        ipaddress.ip_address(host)
        return ""
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return "not a host name"
    return "" if _HOST_NAME.match(ascii_host) else "not a host name"


def _host_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or a URL -> (host, port); port None means the scheme's default."""
    url = httpx.URL(entry if "://" in entry else f"https://{entry}")
    return url.host.rstrip(".").lower(), url.port


class WebhookGuard:
    """The SSRF allow-list for sessionWebhook URLs.

    Allowed: ``api.dingtalk.com`` and ``oapi.dingtalk.com`` on the default https port, the host and port
    of ``api_base``, and each ``extra_hosts`` entry (``host`` means the default port, ``host:port`` that
    port; entries are checked at config load by :func:`host_entry_problem`). The scheme must be https, or
    http for a loopback host. The path is pinned: exactly ``/robot/sendBySession`` on DingTalk's hosts,
    ending with it elsewhere.

    URLs are read by ``httpx.URL``, the parser of the client that sends to them, so the host judged is the
    host contacted (user info, backslashes, IDN, default ports and the rest read alike). Verdicts are
    remembered per (scheme, host, port): the hosts come from inbound messages, and most repeat.
    """

    VERDICTS_MAX = 1024
    """Remembered verdicts; the hosts come from inbound messages, so the memory is bounded."""

    def __init__(self, api_base: str, extra_hosts: Iterable[str] = ()) -> None:
        allowed: set[tuple[str, int | None]] = {(host, None) for host in DINGTALK_HOSTS}
        allowed.add(_host_port(api_base))
        allowed.update(_host_port(entry) for entry in extra_hosts if entry.strip())
        self.allowed = frozenset(allowed)
        self._verdicts: dict[tuple[str, str, int | None, str], str] = {}
        self._verdicts_for = self.allowed

    def refusal(self, url: str) -> str:
        """Why ``url`` must not be contacted, or ``""`` when it may."""
        return self.check(url)[0]

    def check(self, url: str) -> tuple[str, httpx.URL | None]:
        """:meth:`refusal`, and the URL as parsed, for the client to send to without parsing it again."""
        try:
            parsed = httpx.URL(url)
            parsed.host  # noqa: B018 - an "xn--" label that is not valid punycode raises here (idna)
        except (httpx.InvalidURL, TypeError, UnicodeError):
            return "not a valid URL", None
        return self._verdict(parsed), parsed

    def _verdict(self, parsed: httpx.URL) -> str:
        key = (parsed.scheme, parsed.host.rstrip(".").lower(), parsed.port, parsed.path)
        if self._verdicts_for is not self.allowed:  # the allow-list was replaced: judge again
            self._verdicts, self._verdicts_for = {}, self.allowed
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._judge(*key)
            if len(self._verdicts) >= self.VERDICTS_MAX:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def _judge(self, scheme: str, host: str, port: int | None, path: str) -> str:
        if scheme == "http":
            if not is_loopback(host):
                return "plain http is only allowed for loopback hosts"
        elif scheme != "https":
            return f"scheme {scheme or '(none)'} not allowed"
        if (host, port) not in self.allowed:
            return "not in allow-list"
        if host in DINGTALK_HOSTS and port is None and path != WEBHOOK_PATH:
            return f"path is not {WEBHOOK_PATH}"
        if not path.endswith(WEBHOOK_PATH):
            return f"path does not end with {WEBHOOK_PATH}"
        return ""

"""The download allow-list: where the gateway may fetch a file from (the SSRF guard for media).

DingTalk's temporary download URLs point at its own hosts or Alibaba Cloud OSS buckets; a message can
carry only a download code, and the URL comes from DingTalk's answer, but a proxy or a fake in between may
answer anything. Allowed: ``https`` to ``dingtalk.com`` and ``aliyuncs.com`` and their subdomains (default
port), the host and port of ``api_base``, and each ``media.allowed_hosts`` entry (``host`` or
``host:port``); plain ``http`` only to a loopback host that is allowed. Every redirect is judged again.
URLs are read by ``httpx.URL``, the parser of the client that fetches them.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from edgecrab.outbound import is_loopback

DOWNLOAD_DOMAINS = ("dingtalk.com", "aliyuncs.com")
"""Domains (with their subdomains) DingTalk's download URLs are on."""


def host_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or a URL -> (host, port); port None is the scheme's default."""
    url = httpx.URL(entry if "://" in entry else f"https://{entry}")
    return url.host.rstrip(".").lower(), url.port


class DownloadGuard:
    def __init__(self, api_base: str, extra_hosts: Iterable[str] = ()) -> None:
        allowed: set[tuple[str, int | None]] = set()
        for entry in (api_base, *(e for e in extra_hosts if e.strip())):
            try:
                allowed.add(host_port(entry))
            except httpx.InvalidURL:  # `config validate` names it; here it allows nothing
                continue
        self.allowed = frozenset(allowed)

    def refusal(self, url: str) -> str:
        """Why ``url`` must not be fetched, or ``""`` when it may."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            return "not a valid URL"
        host = parsed.host.rstrip(".").lower()
        if parsed.scheme not in ("http", "https"):
            return f"scheme {parsed.scheme or '(none)'} not allowed"
        if parsed.scheme == "http" and not is_loopback(host):
            return "plain http is only allowed for loopback hosts"
        if (host, parsed.port) in self.allowed:
            return ""
        dingtalk = any(host == d or host.endswith("." + d) for d in DOWNLOAD_DOMAINS)
        if dingtalk and parsed.scheme == "https" and parsed.port is None:
            return ""
        return (
            f"host {host}{f':{parsed.port}' if parsed.port else ''} is not a DingTalk download host "
            "(add it to media.allowed_hosts if it should be)"
        )

"""The SSRF guard's URL reading and its memory of verdicts.

The guard reads webhook URLs with ``httpx.URL`` (the parser of the client that sends to them) and remembers
verdicts per (scheme, host, port, path). These tests hold it to a reference that parses every URL afresh and
judges it without memory, on hand-picked and generated URLs: a URL the guard reads differently from the
client would be an SSRF hole, and so would a remembered verdict given to the wrong URL.
"""

from __future__ import annotations

import ipaddress
import string

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecrab.dingtalk.webhook import WebhookGuard, host_entry_problem

API_BASE = "http://127.0.0.1:8080"
EXTRA = ["hooks.example.org", "localhost:9000", "10.1.2.3:8443"]


def reference_refusal(guard: WebhookGuard, url: str) -> str:
    """The guard as it was: httpx.URL and ipaddress on every call."""
    try:
        parsed = httpx.URL(url)
        host = parsed.host.rstrip(".").lower()
    except (httpx.InvalidURL, TypeError, UnicodeError):  # UnicodeError: an "xn--" label that is not punycode
        return "not a valid URL"
    if parsed.scheme == "http":
        loopback = host == "localhost"
        if not loopback:
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
        if not loopback:
            return "plain http is only allowed for loopback hosts"
    elif parsed.scheme != "https":
        return f"scheme {parsed.scheme or '(none)'} not allowed"
    if (host, parsed.port) not in guard.allowed:
        return "not in allow-list"
    if host in ("oapi.dingtalk.com", "api.dingtalk.com") and parsed.port is None:
        if parsed.path != "/robot/sendBySession":
            return "path is not /robot/sendBySession"
    if not parsed.path.endswith("/robot/sendBySession"):
        return "path does not end with /robot/sendBySession"
    return ""


KNOWN = [
    "https://oapi.dingtalk.com/robot/sendBySession?session=1",
    "https://api.dingtalk.com/robot/sendBySession?session=1",
    "https://oapi.dingtalk.com/robot/send?access_token=1",  # the path is pinned too
    "https://oapi.dingtalk.com/prefix/robot/sendBySession",
    "https://hooks.example.org/proxy/robot/sendBySession",
    "https://localhost:9000/robot/sendBySessionX",
    "https://OAPI.dingtalk.com./robot/sendBySession?session=1",
    "https://oapi.dingtalk.com./robot/sendBySession?session=1",
    "https://oapi.dingtalk.com:443/robot/sendBySession",
    "https://oapi.dingtalk.com:0443/robot/sendBySession",
    "http://127.0.0.1:8080/robot/sendBySession",
    "http://127.0.0.1:08080/robot/sendBySession",
    "http://127.000.0.1:8080/robot/sendBySession",
    "http://localhost:9000/hook",
    "https://hooks.example.org/x",
    "https://10.1.2.3:8443/x",
    "http://10.1.2.3:8443/x",  # allowed host, but plain http to a private, non-loopback address
    "https://10.1.2.3/x",  # allowed host on another port
    "http://192.168.1.1/x",
    "https://192.168.1.1/x",
    "http://[::1]:8080/x",
    "http://2130706433:8080/x",
    "http://0x7f.0.0.1:8080/x",
    "http://127.1:8080/x",
    "http://oapi.dingtalk.com/robot/sendBySession",
    "https://oapi.dingtalk.com:8443/robot/sendBySession",
    "https://oapi.dingtalk.com.evil.example/robot/sendBySession",
    "https://oapi.dingtalk.com@evil.example/robot/sendBySession",
    "https://evil.example\\@oapi.dingtalk.com/robot/sendBySession",
    "https://oapi.dingtalk.com\\@evil.example/robot/sendBySession",
    "https://evil.example#@oapi.dingtalk.com/",
    "https://evil.example?@oapi.dingtalk.com/",
    "https://evil.example/?next=https://oapi.dingtalk.com/",
    "https://oapi.dingtalk.com%2eevil.example/",
    "https://oapi.dingtalk.com\t.evil.example/",
    " https://oapi.dingtalk.com/",
    "HTTPS://oapi.dingtalk.com/x",
    "http://127.0.0.1:8081/robot/sendBySession",
    "http://169.254.169.254/latest/meta-data",
    "http://999.0.0.1:8080/x",
    "https://oapi.dingtalk.com:99999/x",
    "ftp://oapi.dingtalk.com/x",
    "file:///etc/passwd",
    "https:///x",
    "not a url",
    "",
]


@pytest.mark.parametrize("url", KNOWN)
def test_the_guard_reads_known_urls_as_httpx_does(url: str) -> None:
    guard = WebhookGuard(API_BASE, EXTRA)
    expected = reference_refusal(guard, url)
    assert guard.refusal(url) == expected
    assert guard.refusal(url) == expected  # and again, from its memory


def test_private_and_loopback_targets_stay_refused_unless_allowed() -> None:
    guard = WebhookGuard(API_BASE, EXTRA)
    assert guard.refusal("http://127.0.0.1:8080/robot/sendBySession?session=a") == ""
    # An allowed loopback host and port does not allow its neighbours, even once remembered.
    assert guard.refusal("http://127.0.0.1:8081/robot/sendBySession?session=a") == "not in allow-list"
    assert guard.refusal("https://127.0.0.1:8080/robot/sendBySession?session=b") == ""
    assert guard.refusal("http://10.1.2.3:8443/x") == "plain http is only allowed for loopback hosts"
    assert guard.refusal("https://10.1.2.3:8443/robot/sendBySession") == ""
    assert guard.refusal("https://10.1.2.4:8443/x") == "not in allow-list"
    assert guard.refusal("https://192.168.0.1/x") == "not in allow-list"
    assert guard.refusal("http://169.254.169.254/latest/meta-data") == (
        "plain http is only allowed for loopback hosts"
    )
    assert guard.refusal(None) == "not a valid URL"  # type: ignore[arg-type]
    # A replaced allow-list is not shadowed by remembered verdicts.
    guard.allowed = frozenset({("10.1.2.4", 8443)})
    assert guard.refusal("https://10.1.2.4:8443/robot/sendBySession") == ""
    assert guard.refusal("https://10.1.2.3:8443/x") == "not in allow-list"


def test_verdicts_are_remembered_per_host_and_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = WebhookGuard(API_BASE, EXTRA)
    judged: list[tuple[str, str, int | None, str]] = []
    judge = guard._judge

    def counting(scheme: str, host: str, port: int | None, path: str) -> str:
        judged.append((scheme, host, port, path))
        return judge(scheme, host, port, path)

    monkeypatch.setattr(guard, "_judge", counting)
    for session in range(100):
        assert guard.refusal(f"https://oapi.dingtalk.com/robot/sendBySession?session={session:04x}") == ""
        assert guard.refusal(f"https://OAPI.dingtalk.com./robot/sendBySession?session={session:04x}") == ""
    assert judged == [("https", "oapi.dingtalk.com", None, "/robot/sendBySession")]
    for n in range(guard.VERDICTS_MAX * 2):
        assert guard.refusal(f"https://h{n}.evil.example/x") == "not in allow-list"
    assert len(guard._verdicts) <= guard.VERDICTS_MAX
    assert guard.refusal("https://oapi.dingtalk.com/robot/sendBySession?session=1") == ""


# -- generated URLs --------------------------------------------------------------------------------


_ALPHABET = "aZ09.-_~:/?#@[]%\\ \t&=+;!$'()*,üé"
_pieces = st.text(alphabet=_ALPHABET, max_size=12)
# The regular languages below (each regex in a comment) are drawn as text over an alphabet, not with
# st.from_regex: the same strings, and the 3,000 examples take 4.8 s of CPU instead of 7.5 s.
_ALNUM = string.ascii_letters + string.digits


def _joined(part: st.SearchStrategy[str], sep: str, low: int, high: int) -> st.SearchStrategy[str]:
    return st.lists(part, min_size=low, max_size=high).map(sep.join)


def _digits(most: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=string.digits, min_size=1, max_size=most)


# Near misses of plain URLs: plain pieces, now and then one odd character or case.
_plain = st.builds(
    lambda scheme, host, port, path, query: f"{scheme}://{host}{port}{path}{query}",
    st.sampled_from(["http", "https"]),
    st.text(alphabet=_ALNUM + ".-", min_size=1, max_size=16)  # [a-zA-Z0-9.-]{1,16}
    | st.builds(  # [0-9]{1,3}(\.[0-9]{1,3}){3}\.?
        str.__add__, _joined(_digits(3), ".", 4, 4), st.sampled_from(["", "."])
    ),
    st.sampled_from(["", ":443", ":80", ":8080", ":0", ":65535", ":65536", ":08080"]),
    _joined(st.text(alphabet=_ALNUM + "._~%-", max_size=5).map("/".__add__), "", 1, 4),  # (/[...]{0,5}){1,4}
    st.just("") | st.text(alphabet=_ALNUM + "._~=&%+-", max_size=10).map("?".__add__),  # (\?[...]{0,10})?
)
_chaotic = st.builds(
    lambda scheme, sep, userinfo, host, port, path, query: (
        f"{scheme}{sep}{userinfo}{host}{port}{path}{query}"
    ),
    st.sampled_from(["http", "https", "HTTPS", "ftp", ""]),
    st.sampled_from(["://", ":/", ":///", "://"]),
    st.sampled_from(["", "", "", "user@", "oapi.dingtalk.com@"]) | _pieces.map(lambda t: t + "@"),
    st.sampled_from(
        ["oapi.dingtalk.com", "api.dingtalk.com.", "127.0.0.1", "localhost", "10.1.2.3", "hooks.example.org"]
    )
    | st.text(alphabet=string.ascii_lowercase + string.digits + ".-", min_size=1, max_size=20)
    | _joined(_digits(4), ".", 2, 5)  # [0-9]{1,4}(\.[0-9]{1,4}){1,4}
    | _pieces,
    st.sampled_from(["", ":443", ":80", ":8080", ":9000", ":8443", ":0", ":65536", ":08080"]) | _pieces,
    st.sampled_from(["/", "/robot/sendBySession", "/a/./b", "/a/../b", "//x", ""])
    | _pieces.map(lambda t: "/" + t),
    st.sampled_from(["", "?session=ab12", "?", "?a=1&&b=2"]) | _pieces.map(lambda t: "?" + t),
)
_urls = _plain | _chaotic
_SHARED = WebhookGuard(API_BASE, EXTRA)
"""One guard across all generated URLs, so its memory holds verdicts for other URLs of the same host."""


@settings(max_examples=3000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(url=_urls)
def test_generated_urls_are_read_as_httpx_reads_them(url: str) -> None:
    fresh = WebhookGuard(API_BASE, EXTRA)
    expected = reference_refusal(fresh, url)
    assert fresh.refusal(url) == expected
    assert _SHARED.refusal(url) == expected  # with a memory of earlier examples


def test_the_path_is_pinned() -> None:
    guard = WebhookGuard(API_BASE, EXTRA)
    assert guard.refusal("https://oapi.dingtalk.com/robot/sendBySession?session=1") == ""
    assert guard.refusal("https://oapi.dingtalk.com/robot/send?access_token=1") == (
        "path is not /robot/sendBySession"
    )
    assert guard.refusal("https://oapi.dingtalk.com/v1.0/robot/sendBySession") == (
        "path is not /robot/sendBySession"
    )
    assert guard.refusal("https://hooks.example.org/proxy/robot/sendBySession") == ""
    assert guard.refusal("https://hooks.example.org/admin") == "path does not end with /robot/sendBySession"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("hooks.example.org", ""),
        ("10.1.2.3:8443", ""),
        ("[::1]:8080", ""),
        ("::1", ""),
        ("bücher.example", ""),
        ("10.0.0.0/8", "a CIDR range or a path: write a host name or one IP address"),
        ("*", "wildcards are not supported: list each host"),
        ("*.example.org", "wildcards are not supported: list each host"),
        ("https://hooks.example.org", "a URL: write the host name only (the scheme is https, or http on "
                                      "loopback)"),
        ("hooks.example.org/robot", "a CIDR range or a path: write a host name or one IP address"),
        ("hooks.example.org:99999", "port `99999` is not a port number (1-65535)"),
        ("user@hooks.example.org", "not a host name"),
        ("under_score.example", "not a host name"),
    ],
)
def test_extra_host_entries_are_checked(entry: str, problem: str) -> None:
    assert host_entry_problem(entry) == problem


@pytest.mark.parametrize("host", ["xn--0a", "xn--a-\u0300", "xn--aa"])
def test_a_host_whose_xn_label_is_not_valid_punycode_is_refused_not_raised(host: str) -> None:
    guard = WebhookGuard(API_BASE, EXTRA)
    assert guard.refusal(f"https://{host}/robot/sendBySession?session=1") == "not a valid URL"

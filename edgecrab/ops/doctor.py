"""``edgecrab [--config F] doctor [--sandbox]``: the checklist to run before going live.

One line per check, ``ok``, ``warn`` or ``FAILED``; a failed line is followed by the fix. The checks, in
order: the configuration (the CLI loads it first: an invalid one exits 2 before this module runs), hooks
load, the state directory is writable, a token for the robot (DingTalk's token API), the clock (the
``Date`` header of that token answer: more than :data:`CLOCK_WARN_S` off is a warning, more than
:data:`CLOCK_FAIL_S` a failure), an open-connection ticket (what "Stream mode not enabled" or revoked
credentials break; the ticket is single-use and left to expire), the agent reachable (``openai``: the
server's model list, or a one-token completion where it has none; ``command``: the program exists;
``python``: the callable imports), and the ops port free. With ``reply_mode: card``, also the two card
permissions (the 403's ``requiredScopes``).

With ``--sandbox`` the DingTalk checks run against the built-in emulator, started for the occasion, with
the sandbox's credentials, exactly as ``gateway start --sandbox`` would talk to it.

The exit code (:func:`run_doctor`): 0 when nothing failed (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import email.utils
import importlib
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import anyio
import httpx

from edgecrab.config import SANDBOX_APP_KEY, SANDBOX_APP_SECRET, Config
from edgecrab.config.model import AgentConfig
from edgecrab.dingtalk.cards import INSTANCE_SCOPE, INSTANCES_PATH, STREAMING_PATH, STREAMING_SCOPE
from edgecrab.dingtalk.frames import Frame
from edgecrab.dingtalk.stream import AuthFailed, OpenFailed, StreamClient
from edgecrab.dingtalk.streamconn import AckDecision
from edgecrab.dingtalk.tokens import TokenCache
from edgecrab.outbound import failure_kind, http_client

OK, WARN, FAILED = "ok", "warn", "FAILED"
CLOCK_WARN_S = 300.0
CLOCK_FAIL_S = 3600.0
"""DingTalk's HTTP-mode callbacks are refused beyond an hour of skew; tokens and Stream mode do not care."""
TIMEOUT_S = 10.0
CREDENTIALS_FIX = (
    "check DINGTALK_APP_KEY / DINGTALK_APP_SECRET (platforms.dingtalk.app_key / app_secret) against the "
    "app's 'Credentials and basic info' page at open.dingtalk.com"
)


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def lines(self) -> str:
        text = f"{self.status:<6}  {self.name}: {self.detail}"
        return text + (f"\n        fix: {self.fix}" if self.fix and self.status != OK else "")


def run_doctor(config: Config, *, sandbox: bool = False, say: Callable[[str], None] = print) -> int:
    """Run every check, printing each line as it completes; the exit code (0 or 1)."""
    # The checks report what fails on their own lines; the DingTalk client's error log would say it twice.
    quiet = logging.getLogger("edgecrab.dingtalk")
    level = quiet.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        quiet.setLevel(logging.CRITICAL)
    try:
        checks = anyio.run(_doctor, config, sandbox, say)
    finally:
        quiet.setLevel(level)
    failed = [c.name for c in checks if c.status == FAILED]
    say(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed" + (
        f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


async def _doctor(config: Config, sandbox: bool, say: Callable[[str], None]) -> list[Check]:
    checks: list[Check] = []

    def add(check: Check) -> None:
        checks.append(check)
        say(check.lines())

    add(Check("config", OK, f"valid ({config.source or 'built-in defaults and DINGTALK_* variables'})"))
    add(_hooks(config))
    add(_state_dir(config))
    if sandbox:
        from edgecrab.sandbox import open_emulator
        from edgecrab.testing.fakedingtalk import FakeApp

        async with open_emulator(FakeApp(SANDBOX_APP_KEY, SANDBOX_APP_SECRET), port=0) as fake:
            dt = replace(config.dingtalk, app_key=SANDBOX_APP_KEY, app_secret=SANDBOX_APP_SECRET,
                         robot_code=SANDBOX_APP_KEY, api_base=fake.base_url)
            for check in await _dingtalk(replace(config, dingtalk=dt)):
                add(check)
    else:
        for check in await _dingtalk(config):
            add(check)
    add(await _agent(config.agent))
    add(_port(config))
    return checks


def _hooks(config: Config) -> Check:
    from edgecrab.hooks.manager import HookManager

    try:
        manager = HookManager.load(config.hooks)
    except Exception as exc:
        return Check("hooks", FAILED, str(exc), "fix or remove the hook file named above")
    return Check("hooks", OK, f"{len(manager.listing())} hook implementation(s) loaded")


def _state_dir(config: Config) -> Check:
    path = config.storage.sqlite_path
    if path is None or str(path) == ":memory:":
        return Check("state directory", OK, f"nothing on disk ({config.storage.url})")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".edgecrab-doctor-"):
            pass
    except OSError as exc:
        return Check("state directory", FAILED, f"{folder} is not writable ({exc.strerror or exc})",
                     f"create {folder} and give the gateway's user write access (systemd: StateDirectory=)")
    return Check("state directory", OK, f"{folder} is writable")


async def _dingtalk(config: Config) -> list[Check]:
    dates: list[str] = []

    async def remember_date(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/oauth2/accessToken") and "date" in response.headers:
            dates.append(response.headers["date"])

    async with http_client(timeout=TIMEOUT_S, max_connections=4,
                           event_hooks={"response": [remember_date]}) as http:
        token = await _token(http, config)
        clock = _clock(dates)
        ticket = await _ticket(http, config)
        checks = [token, clock, ticket]
        if config.dingtalk.reply_mode == "card" and token.status == OK:
            checks.append(await _card_permissions(http, config))
    return checks


async def _card_permissions(http: httpx.AsyncClient, config: Config) -> Check:
    """With ``reply_mode: card``: the two card permissions, probed with an update and a streaming frame for a
    card that does not exist. DingTalk's gateway refuses a call the app has no permission for with a 403
    naming ``requiredScopes`` before it looks for the card (the order is inferred from its answers; the
    emulator checks in that order); any other answer means the permission is there."""
    dt = config.dingtalk
    token = await TokenCache(http, dt.api_base, dt.app_key, dt.app_secret, timeout_s=TIMEOUT_S).get()
    probe = f"edgecrab-doctor-{uuid.uuid4().hex[:12]}"
    calls = (
        (INSTANCES_PATH, {"outTrackId": probe, "cardData": {"cardParamMap": {}}}),
        (STREAMING_PATH, {"outTrackId": probe, "guid": uuid.uuid4().hex, "key": dt.card.content_key,
                          "content": "", "isFull": True, "isFinalize": False}),
    )
    missing: list[str] = []
    for path, body in calls:
        try:
            response = await http.put(dt.api_base.rstrip("/") + path, json=body,
                                      headers={"x-acs-dingtalk-access-token": token})
        except httpx.HTTPError as exc:
            return Check("card permissions", FAILED, f"{path} could not be reached ({failure_kind(exc)})",
                         f"check that {dt.api_base} can be reached")
        if response.status_code == 403:
            try:
                detail = response.json().get("accessdenieddetail") or {}
            except ValueError:
                detail = {}
            missing += [str(s) for s in detail.get("requiredScopes") or [path]]
    if missing:
        return Check("card permissions", FAILED, f"the app lacks {', '.join(missing)} (reply_mode: card)",
                     "grant Card.Instance.Write and Card.Streaming.Write in the DingTalk developer console "
                     "(the app's Permissions page), or set reply_mode: markdown")
    return Check("card permissions", OK, f"{INSTANCE_SCOPE} and {STREAMING_SCOPE} granted")


async def _token(http: httpx.AsyncClient, config: Config) -> Check:
    dt = config.dingtalk
    cache = TokenCache(http, dt.api_base, dt.app_key, dt.app_secret, timeout_s=TIMEOUT_S)
    try:
        await cache.get()
    except Exception as exc:
        status = getattr(exc, "status", 0)
        fix = CREDENTIALS_FIX if status in (400, 401, 403) else f"check that {dt.api_base} can be reached"
        return Check("token", FAILED, f"no access token for app {dt.app_key}: {exc}", fix)
    return Check("token", OK, f"access token for app {dt.app_key} from {dt.api_base}")


def _clock(dates: list[str]) -> Check:
    if not dates:
        return Check("clock", WARN, "not compared: no answer from DingTalk's token API carried a Date header")
    try:
        theirs = email.utils.parsedate_to_datetime(dates[-1]).timestamp()
    except (TypeError, ValueError):
        return Check("clock", WARN, f"not compared: unreadable Date header {dates[-1]!r}")
    skew = time.time() - theirs
    detail = f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} DingTalk"
    fix = "synchronise the clock (NTP: timedatectl set-ntp true)"
    if abs(skew) > CLOCK_FAIL_S:
        return Check("clock", FAILED, detail, fix)
    if abs(skew) > CLOCK_WARN_S:
        return Check("clock", WARN, detail, fix)
    return Check("clock", OK, detail)


async def _ticket(http: httpx.AsyncClient, config: Config) -> Check:
    async def refuse(frame: Frame) -> AckDecision:
        return AckDecision(503, "doctor")

    client = StreamClient(config.dingtalk, refuse, http=http)
    try:
        await client.open_ticket(http)
    except AuthFailed as exc:
        return Check("stream ticket", FAILED, f"DingTalk refused the credentials: {exc}", CREDENTIALS_FIX)
    except OpenFailed as exc:
        return Check("stream ticket", FAILED, str(exc),
                     "in the app's console, Robot -> message receiving mode must be Stream mode, and the "
                     "robot published")
    return Check("stream ticket", OK, "the open-connection call gave a ticket (Stream mode is on)")


async def _agent(agent: AgentConfig) -> Check:
    if agent.type == "echo":
        return Check("agent", OK, "echo (answers itself, nothing to reach)")
    if agent.type == "command":
        program = agent.command[0] if agent.command else ""
        if program and (shutil.which(program) or os.access(program, os.X_OK)):
            return Check("agent", OK, f"command {program} found")
        return Check("agent", FAILED, f"command {program!r} not found or not executable",
                     "install it, or set agent.command to its full path")
    if agent.type == "python":
        module, _, name = agent.callable.partition(":")
        try:
            getattr(importlib.import_module(module), name)
        except Exception as exc:
            return Check("agent", FAILED, f"{agent.callable} cannot be imported: {type(exc).__name__}: {exc}",
                         "check agent.callable and that the module is installed")
        return Check("agent", OK, f"python {agent.callable} imports")
    return await _openai(agent)


async def _openai(agent: AgentConfig) -> Check:
    base = agent.base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {agent.api_key}"} if agent.api_key else {}
    async with http_client(timeout=TIMEOUT_S, max_connections=2, headers=headers) as http:
        try:
            listed = await _guarded(http.get(f"{base}/models"))
            if listed.status_code == 200 and isinstance(ids := _model_ids(listed), list):
                if agent.model in ids:
                    return Check("agent", OK, f"{base} lists model {agent.model}")
                some = ", ".join(ids[:3])
                return Check("agent", FAILED, f"{base} does not list model {agent.model!r} "
                             f"({len(ids)} models, e.g. {some})", "set agent.model to one of them")
            if listed.status_code in (401, 403):
                return _refused(base, listed.status_code)
            body = {"model": agent.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
            answer = await _guarded(http.post(f"{base}/chat/completions", json=body))
        except httpx.HTTPError as exc:
            return Check("agent", FAILED, f"{base} cannot be reached: {failure_kind(exc)}",
                         "check agent.base_url and that the server runs")
    if answer.status_code in (401, 403):
        return _refused(base, answer.status_code)
    if answer.status_code != 200:
        return Check("agent", FAILED, f"{base}/chat/completions answered HTTP {answer.status_code} for model "
                     f"{agent.model!r}", "check agent.model and agent.base_url")
    return Check("agent", OK, f"{base} answered a one-token completion with model {agent.model}")


async def _guarded(request: Awaitable[httpx.Response]) -> httpx.Response:
    with anyio.fail_after(TIMEOUT_S):
        try:
            return await request
        except TimeoutError:
            raise httpx.ReadTimeout("timed out") from None


def _model_ids(response: httpx.Response) -> list[str] | None:
    try:
        data = response.json().get("data")
    except (ValueError, AttributeError):
        return None
    if not isinstance(data, list):
        return None
    return [str(m.get("id")) for m in data if isinstance(m, dict)]


def _refused(base: str, status: int) -> Check:
    return Check("agent", FAILED, f"{base} refused the API key (HTTP {status})", "check agent.api_key")


def _port(config: Config) -> Check:
    host, port = config.http.host, config.http.port
    if port == 0:
        return Check("ops port", OK, f"http.port 0: a free port on {host} at start")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        return Check("ops port", FAILED, f"{host}:{port} cannot be opened ({exc.strerror or exc})",
                     "stop what holds it (ss -ltnp), or set http.port / DINGTALK_WEBHOOK_PORT")
    return Check("ops port", OK, f"{host}:{port} is free")


__all__ = ["Check", "run_doctor"]

"""``edgecrab send``: a proactive message through the running gateway, or from this process.

How the command finds the gateway: from the same config file, ``http.port`` (when not 0; a gateway on port 0
cannot be found, so ``send`` sends directly) on ``http.host`` (``0.0.0.0``/``::`` are reached on loopback),
with ``http.token`` as the bearer token. A refused connection means no gateway runs there: the message is
sent directly (:func:`~edgecrab.replies.proactive.send_direct`). A gateway that answers but refuses the
request (no token configured, a wrong token, a bad request) is an error, never a reason to go around it:
two senders for one robot would pace and order their messages each on their own.

Through the gateway: ``POST /v1/send``, then ``GET /v1/deliveries/{id}`` every :data:`POLL_S` until no
chunk is pending (the command's answer is DingTalk's, not the ledger's).
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import httpx

from edgecrab.config import Config
from edgecrab.outbound import failure_kind, http_client
from edgecrab.replies.proactive import SendRequest, send_direct

POLL_S = 0.2
EXIT_OK, EXIT_FAILED = 0, 1


class SendFailed(Exception):
    """The gateway or DingTalk refused the message; the text says why."""


def run_send(config: Config, request: SendRequest, *, direct: bool, timeout_s: float) -> int:
    """Send ``request``; print the outcome; the exit code (0: every chunk accepted by DingTalk)."""
    try:
        state = anyio.run(_send, config, request, direct, timeout_s)
    except SendFailed as exc:
        print(f"edgecrab send: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except TimeoutError:
        print(f"edgecrab send: DingTalk did not answer for every chunk within {timeout_s:g} s",
              file=sys.stderr)
        return EXIT_FAILED
    chunks = sum(len(r["chunks"]) for r in state["replies"])
    if state["state"] == "sent":
        print(f"sent: {chunks} message(s), delivery {state['id']}{state.get('via', '')}")
        return EXIT_OK
    errors = "; ".join(dict.fromkeys(state["errors"])) or "no reason given"
    print(f"edgecrab send: DingTalk did not accept the message: {errors}", file=sys.stderr)
    return EXIT_FAILED


def gateway_url(config: Config) -> str:
    """Where the running gateway's ops port would be, or ``""`` when it cannot be found (port 0)."""
    http = config.http
    if not http.port:
        return ""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(http.host, http.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{http.port}"


async def _send(config: Config, request: SendRequest, direct: bool, timeout_s: float) -> dict[str, Any]:
    url = "" if direct else gateway_url(config)
    if url:
        state = await _through_gateway(url, config.http.token, request, timeout_s)
        if state is not None:
            return {**state, "via": " (through the gateway at " + url + ")"}
    with anyio.fail_after(timeout_s):
        return await send_direct(config, request, timeout_s=timeout_s)


async def _through_gateway(
    url: str, token: str, request: SendRequest, timeout_s: float
) -> dict[str, Any] | None:
    """The delivery's final state, sent through the gateway at ``url``; None when none runs there."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http_client(timeout=10.0, max_connections=2, headers=headers) as client:
        try:
            response = await client.post(f"{url}/v1/send", json=request.to_json())
        except httpx.TransportError as exc:
            if failure_kind(exc) == "refused":
                return None  # no gateway there: send directly
            raise SendFailed(f"the gateway at {url} did not answer ({failure_kind(exc)})") from None
        if response.status_code == 403:
            raise SendFailed(
                f"a gateway runs at {url} but refuses to send: set http.token in its config (and restart "
                "it), or send with --direct"
            )
        if response.status_code == 401:
            raise SendFailed(f"the gateway at {url} refused the token: http.token differs from the gateway's")
        if response.status_code != 202:
            raise SendFailed(f"the gateway at {url} refused the message: {_error(response)}")
        delivery_id = str(response.json()["id"])
        with anyio.fail_after(timeout_s):
            while True:
                answer = await client.get(f"{url}/v1/deliveries/{delivery_id}")
                if answer.status_code != 200:
                    raise SendFailed(f"delivery {delivery_id}: {_error(answer)}")
                state: dict[str, Any] = answer.json()
                if state["state"] != "pending":
                    return state
                await anyio.sleep(POLL_S)


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


__all__ = ["gateway_url", "run_send"]

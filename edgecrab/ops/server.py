"""The gateway's own HTTP port: ``/healthz``, ``/readyz``, ``/metrics``, ``/status``.

Always on, and loopback by default: ``http.host`` (default ``127.0.0.1``) and ``http.port`` (default 0, a
free port, or ``DINGTALK_WEBHOOK_PORT``). The port in use is logged at start (``[ops] listening on
http://127.0.0.1:PORT``) and shown by ``/status``. Always on because a gateway nobody can ask whether it
is ready is the problem this port solves, and a free loopback port costs nothing and reaches nobody else.

It is aiohttp's server through its public API (``web.AppRunner`` + ``web.TCPSite``, as the emulator's),
run by the gateway as one task of its task group: cancelling the gateway closes the port (a request in
flight gets half a second).

* ``GET /healthz``: 200 while the event loop answers (liveness; nothing else is checked).
* ``GET /readyz``: 200 when every check of :mod:`edgecrab.ops.ready` passes, else 503; the JSON body names
  each check and what fails.
* ``GET /metrics``: Prometheus text (or OpenMetrics, by ``Accept``) from :mod:`edgecrab.ops.metrics`.
* ``GET /status``: the facts chat ``/status`` gives, as JSON: robot, connection state, uptime, runs,
  queue depth, the port.
* ``POST /reload``: re-read the config and hooks (:meth:`Gateway.reload <edgecrab.gateway.Gateway.reload>`);
  needs the token, and is refused (403) when none is configured. 200, or 422 with the errors (the running
  config kept).
* ``POST /v1/send``: a proactive message (:mod:`edgecrab.replies.proactive`), JSON ``{"text", "user"
  (a staff id or a list) | "group" (an openConversationId), "at", "format", "title", "robot"}``; needs the
  token, and is refused (403) when none is configured. Recorded in the delivery ledger, answered 202 with
  ``{"id"}``; 400 naming what is wrong with the request.
* ``GET /v1/deliveries/{id}``: that delivery's state (``pending``, ``sent``, ``failed``) and each chunk's,
  with DingTalk's error for a failed one; 404 when the ledger does not know it (or pruned it). Token as above.
* ``POST <http.callback_path>`` in http mode: DingTalk's signed robot callbacks
  (:mod:`edgecrab.ops.callback`).

With ``http.token`` set, ``/metrics``, ``/status`` and ``/reload`` need ``Authorization: Bearer <token>``
(compared in constant time); ``/healthz`` and ``/readyz`` stay open for probes. No answer carries a
secret, message text or a user id.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from edgecrab import __version__
from edgecrab.config.model import HttpConfig
from edgecrab.errors import StartupError
from edgecrab.ops.metrics import GatewayMetrics
from edgecrab.ops.parts import GatewayParts
from edgecrab.ops.ready import readiness
from edgecrab.replies.proactive import SendRequest, delivery_state

log = logging.getLogger("edgecrab.ops")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SHUTDOWN_S = 0.5
"""How long a request in flight may finish when the gateway stops."""


class OpsServer:
    """The ops port of one gateway. :meth:`run` serves until cancelled; :attr:`port` is the bound port."""

    def __init__(
        self,
        config: HttpConfig,
        parts: GatewayParts,
        metrics: GatewayMetrics,
        *,
        callback: Handler | None = None,
        reload: Callable[[], Awaitable[list[str]]] | None = None,
        send: Callable[[SendRequest], Awaitable[str]] | None = None,
        robots: list[GatewayParts] | None = None,
    ) -> None:
        self.config = config
        self.parts = parts
        self.robots = robots or [parts]
        """Every robot of the gateway (``parts`` is the first): several get a line each."""
        self.metrics = metrics
        self.callback = callback
        self.reload = reload
        self.send = send
        self.host = config.host
        self.port = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        app.router.add_post("/reload", self._reload)
        app.router.add_post("/v1/send", self._send)
        app.router.add_get("/v1/deliveries/{id}", self._delivery)
        if self.callback is not None:
            app.router.add_post(self.config.callback_path, self.callback)
        return app

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.config.port)
            try:
                await site.start()
            except OSError as exc:
                raise StartupError(
                    f"the ops port {self.host}:{self.config.port} cannot be opened ({exc.strerror or exc}): "
                    "set http.port (or DINGTALK_WEBHOOK_PORT) to a free port, or 0 for any free one",
                    exit_code=2,
                ) from None
            self.port = int(runner.addresses[0][1])
            callback = f" {self.config.callback_path}" if self.callback is not None else ""
            log.info("[ops] listening on %s (/healthz /readyz /metrics /status /reload%s)", self.url,
                     callback)
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.move_on_after(SHUTDOWN_S + 0.5, shield=True):
                await runner.cleanup()

    # -- handlers -----------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        token = self.config.token
        if not token:
            return True
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())

    def _refuse(self) -> web.Response:
        return _json({"error": "unauthorized: send Authorization: Bearer <http.token>"}, 401,
                     headers={"WWW-Authenticate": 'Bearer realm="edgecrab"'})

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await readiness(self.parts)
        failing = sorted(name for name, result in checks.items() if result != "ok")
        body: dict[str, Any] = {"ready": not failing, "robot": self.parts.robot, "failing": failing,
                                "checks": checks}
        if len(self.robots) > 1:  # ready when every robot is; each robot's checks under its name
            robots = {p.name: await readiness(p) for p in self.robots}
            failing = sorted(f"{name}.{check}" for name, found in robots.items()
                             for check, result in found.items() if result != "ok")
            body.update(ready=not failing, failing=failing, checks=robots[self.parts.name], robots=robots)
        return _json(body, 503 if failing else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._refuse()
        await self.metrics.refresh()
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.metrics.registry), headers={"Content-Type": content_type})

    async def _status(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._refuse()
        return _json(self.status())

    async def _reload(self, request: web.Request) -> web.Response:
        if not self.config.token:
            return _json({"error": "forbidden: POST /reload needs http.token to be set"}, 403)
        if not self._authorized(request):
            return self._refuse()
        if self.reload is None:
            return _json({"error": "reload is not available"}, 404)
        errors = await self.reload()
        if errors:
            return _json({"reloaded": False, "errors": errors}, 422)
        return _json({"reloaded": True})

    def _token_refusal(self, request: web.Request, what: str) -> web.Response | None:
        """The answer refusing ``request`` to an endpoint that always needs the token, or None."""
        if not self.config.token:
            return _json({"error": f"forbidden: {what} needs http.token to be set"}, 403)
        if not self._authorized(request):
            return self._refuse()
        return None

    async def _send(self, request: web.Request) -> web.Response:
        refusal = self._token_refusal(request, "POST /v1/send")
        if refusal is not None:
            return refusal
        if self.send is None:
            return _json({"error": "sending is not available"}, 404)
        try:
            body = await request.json()
        except ValueError:
            return _json({"error": "the body must be JSON"}, 400)
        try:
            delivery_id = await self.send(SendRequest.from_json(body))
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"id": delivery_id}, 202)

    async def _delivery(self, request: web.Request) -> web.Response:
        refusal = self._token_refusal(request, "GET /v1/deliveries")
        if refusal is not None:
            return refusal
        state = await delivery_state(self.parts.store, request.match_info["id"])
        if state is None:
            return _json({"error": "no such delivery (unknown id, or pruned from the ledger)"}, 404)
        return _json(state)

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` answers (also what chat ``/status`` draws its port line from): the first
        robot's facts, and with several robots each one's under ``robots``."""
        found = self._robot_status(self.parts)
        if len(self.robots) > 1:
            found["robots"] = {p.name: self._robot_status(p) for p in self.robots}
        return found

    def _robot_status(self, p: GatewayParts) -> dict[str, Any]:
        stream = p.stream
        return {
            "robot": p.robot,
            "name": p.name,
            "replica": p.runner.coord.replica_id,  # which of several replicas (storage on Redis) this is
            "version": __version__,
            "agent": p.agent,
            "mode": p.mode,
            "connection": {
                "state": stream.state,
                "detail": stream.state_detail,
                "for_s": round(time.monotonic() - stream.state_since, 1),
                "connections_opened": stream.connections_opened,
                "last_frame_age_s": round(p.last_frame_age_s(), 1),
            },
            "uptime_s": round(p.uptime_s, 1),
            "runs_active": p.runner.active_runs,
            "queue_depth": p.queue_depth(),
            "messages_received": p.intake.received,
            "ops": {"host": self.host, "port": self.port},
            "schedules": p.schedules.status() if p.schedules is not None else [],
        }


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False), status=status, content_type="application/json",
        headers=headers,
    )


__all__ = ["OpsServer"]

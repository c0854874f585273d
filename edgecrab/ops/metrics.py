"""``GET /metrics``: the gateway's numbers in Prometheus' text format, through ``prometheus-client``.

Each gateway has its own :class:`~prometheus_client.CollectorRegistry` (never the library's global one:
two gateways in one process, as in the tests, must not share or collide). Most numbers are counts the
code keeps anyway (intake's received/duplicates, the Stream client's frames by topic and reconnects by
reason, the sender's sends by route/result/code, delivery's chunks): a custom collector reads them at
scrape time, so the ack path pays a dict increment, not a metrics call. What needs a distribution is a
:class:`~prometheus_client.Histogram` observed at the source: ack latency, send latency, agent latency.

Every series is labelled by ``robot`` (the robot code, which the logs show anyway): one registry for all the
robots of a gateway, one series per robot. Other labels are
bounded sets: topics (unknown ones are ``other``), reconnect reasons, send routes, DingTalk's error codes,
API names (unknown paths are ``other``). Never a user id, a conversation id or message text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edgecrab.agents.base import AgentResult
from edgecrab.dingtalk.robotapi import BATCH_SEND_PATH, GROUP_SEND_PATH
from edgecrab.dingtalk.stream import CONNECTED, OPEN_PATH
from edgecrab.dingtalk.tokens import TOKEN_PATH
from edgecrab.ops.parts import GatewayParts

ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
"""Acks take about a millisecond; DingTalk gives up on one after about 2 s."""
SEND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
AGENT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

API_NAMES = {
    TOKEN_PATH: "accessToken",
    BATCH_SEND_PATH: "batchSend",
    GROUP_SEND_PATH: "groupSend",
    OPEN_PATH: "connections/open",
    "/robot/sendBySession": "sessionWebhook",
}
"""Request paths counted by name in ``edgecrab_dingtalk_api_calls_total``; any other path is ``other``."""


class GatewayMetrics:
    """One gateway's registry: the histograms observed at their source, and the collector that reads the
    rest at scrape time. :meth:`refresh` (awaited before each scrape) reads what needs the store."""

    def __init__(self, robots: list[GatewayParts]) -> None:
        self.robots = robots
        self.parts = robots[0]
        self.registry = CollectorRegistry()
        self._ack = Histogram(
            "edgecrab_ack_seconds", "Robot callback from recv() to its ack leaving.",
            ["robot"], registry=self.registry, buckets=ACK_BUCKETS,
        )
        self._send = Histogram(
            "edgecrab_send_seconds", "One reply message sent to DingTalk, retries included, by route.",
            ["robot", "route"], registry=self.registry, buckets=SEND_BUCKETS,
        )
        self._agent = Histogram(
            "edgecrab_agent_seconds", "Agent calls, by outcome (ok, failed, stopped).",
            ["robot", "outcome"], registry=self.registry, buckets=AGENT_BUCKETS,
        )
        self._tokens = Counter(
            "edgecrab_agent_tokens", "Tokens the agent reported, by kind (prompt, completion).",
            ["robot", "kind"], registry=self.registry,
        )
        self._api = Counter(
            "edgecrab_dingtalk_api_calls", "Requests to DingTalk's REST APIs, by API (the monthly quota "
            "counts calls).", ["robot", "api"], registry=self.registry,
        )
        self.backlogs: dict[str, tuple[int, float | None]] = {}
        self.registry.register(_Collector(self))

    # -- wiring: what the gateway's parts call -------------------------------------------------------
    def attach(self, parts: GatewayParts, *clients: httpx.AsyncClient) -> None:
        """Observe one robot at the sources: acks (on the connection it owns, if any), sends, agent calls,
        and every request on ``clients`` (its HTTP clients to DingTalk), through httpx's ``event_hooks``."""
        robot = parts.robot
        if parts is self._owner(parts):
            parts.stream.stats.on_ack = self._ack.labels(robot).observe
        send, api = _children(self._send, robot), _children(self._api, robot)
        agent, tokens = _children(self._agent, robot), _children(self._tokens, robot)
        parts.sender.stats.on_latency = lambda route, seconds: send(route).observe(seconds)
        parts.runner.on_agent_result = lambda result, seconds: _observe_agent(agent, tokens, result, seconds)

        async def count(request: httpx.Request) -> None:
            api(API_NAMES.get(request.url.path, "other")).inc()

        for http in clients:
            hooks = dict(http.event_hooks)
            hooks["request"] = [*hooks.get("request", []), count]
            http.event_hooks = hooks

    def _owner(self, parts: GatewayParts) -> GatewayParts:
        """The first robot on ``parts``' connection: the one its acks are counted for."""
        return next(p for p in self.robots if p.stream is parts.stream)

    async def refresh(self) -> None:
        """Read what lives in the store (each robot's inbox backlog) before a scrape."""
        for p in self.robots:
            self.backlogs[p.robot] = await p.store.inbox_backlog(p.name)


def _children(family: Any, robot: str) -> Callable[[str], Any]:
    """``family.labels(robot, label)``, each child made once: ``labels()`` takes a lock and builds its key
    on every call, several times a message. The labels are bounded sets (routes, outcomes, API names)."""
    made: dict[str, Any] = {}

    def child(label: str) -> Any:
        found = made.get(label)
        if found is None:
            found = made[label] = family.labels(robot, label)
        return found

    return child


def _observe_agent(
    agent: Callable[[str], Any], tokens: Callable[[str], Any], result: AgentResult, seconds: float
) -> None:
    agent("stopped" if result.stopped else "failed" if result.failed else "ok").observe(seconds)
    if result.usage.prompt_tokens:
        tokens("prompt").inc(result.usage.prompt_tokens)
    if result.usage.completion_tokens:
        tokens("completion").inc(result.usage.completion_tokens)


class _Collector(Collector):
    """The counts the gateway's parts keep, read at scrape time: one series per robot in each family."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        yield from self._stream()
        yield from self._replies()
        yield from self._work()
        yield from self._cards()

    def _cards(self) -> Iterator[Any]:
        robots = [p for p in self.metrics.robots if p.cards is not None]
        if not robots:
            return

        def cards(p: GatewayParts) -> Any:
            return p.cards

        yield self._counter("edgecrab_cards_opened", "AI cards opened (reply_mode: card).",
                            lambda p: cards(p).opened, robots)
        yield self._counter("edgecrab_card_api_calls", "DingTalk card API calls (create, stream, finish).",
                            lambda p: cards(p).client.calls, robots)
        yield self._counter("edgecrab_cards_recovered",
                            "Cards left open by a crash or a dead replica: continued or finished.",
                            lambda p: cards(p).recovered, robots)
        yield self._gauge("edgecrab_cards_markdown_fallback",
                          "1 while cards were found unavailable and replies go out as markdown.",
                          lambda p: 1.0 if cards(p).clock() < cards(p).markdown_until else 0.0, robots)

    def _counter(self, name: str, text: str, value: Value, robots: list[GatewayParts] | None = None) -> Any:
        family = CounterMetricFamily(name, text, labels=["robot"])
        for p in self.metrics.robots if robots is None else robots:
            family.add_metric([p.robot], value(p))
        return family

    def _gauge(self, name: str, text: str, value: Value, robots: list[GatewayParts] | None = None) -> Any:
        family = GaugeMetricFamily(name, text, labels=["robot"])
        for p in self.metrics.robots if robots is None else robots:
            family.add_metric([p.robot], value(p))
        return family

    def _by(self, name: str, text: str, labels: list[str], counts: Counts) -> CounterMetricFamily:
        """A counter family from each robot's dict of counts keyed by one label value, or a tuple of them."""
        family = CounterMetricFamily(name, text, labels=["robot", *labels])
        for p in self.metrics.robots:
            for key, n in sorted(counts(p).items()):
                values = list(key) if isinstance(key, tuple) else [key]
                family.add_metric([p.robot, *values], n)
        return family

    def _stream(self) -> Iterator[Any]:
        # Robots sharing an app's connection each show it: their series carry the same connection's numbers.
        yield self._by("edgecrab_stream_frames", "Stream frames received, by topic.", ["topic"],
                       lambda p: p.stream.stats.frames)
        yield self._by("edgecrab_stream_reconnects", "Stream connections lost or not made, by reason.",
                       ["reason"], lambda p: p.stream.stats.reconnects)
        yield self._counter("edgecrab_stream_connections_opened", "Stream connections opened.",
                            lambda p: p.stream.connections_opened)
        yield self._gauge("edgecrab_stream_connected", "1 while the Stream connection is up.",
                          lambda p: 1.0 if p.stream.state == CONNECTED else 0.0)
        yield self._gauge("edgecrab_stream_last_frame_age_seconds",
                          "Seconds since the last Stream frame (since the start before the first).",
                          lambda p: p.last_frame_age_s())
        yield self._counter("edgecrab_messages_received", "Robot messages recorded in the inbox (new ones).",
                            lambda p: p.intake.received)
        yield self._counter("edgecrab_duplicates", "Redeliveries recognised and not processed again.",
                            lambda p: p.intake.duplicates)

    def _replies(self) -> Iterator[Any]:
        yield self._by("edgecrab_sends",
                       "Reply messages sent to DingTalk, by route, result and DingTalk's code.",
                       ["route", "result", "code"], lambda p: p.sender.stats.sends)
        yield self._by("edgecrab_send_throttled",
                       "Send retries DingTalk's rate limits forced (QpsLimit...), by code.",
                       ["code"], lambda p: p.sender.stats.throttled)
        yield self._counter("edgecrab_reply_chunks_sent", "Reply messages DingTalk accepted.",
                            lambda p: p.delivery.sent_chunks)
        yield self._counter("edgecrab_replies_failed", "Replies given up on (undeliverable).",
                            lambda p: p.delivery.failed_replies)
        yield self._gauge("edgecrab_sends_failed_in_a_row",
                          "Reply messages failed since the last one accepted.",
                          lambda p: p.delivery.failed_in_a_row)
        yield self._counter("edgecrab_token_fetches", "Access tokens fetched.",
                            lambda p: p.sender.tokens.fetches)

    def _work(self) -> Iterator[Any]:
        backlogs = self.metrics.backlogs
        yield self._gauge("edgecrab_inbox_depth", "Messages recorded and not finished yet.",
                          lambda p: backlogs.get(p.robot, (0, None))[0])
        yield self._gauge("edgecrab_inbox_oldest_age_seconds",
                          "Age of the oldest unfinished message (0: none).", lambda p: _age(backlogs, p))
        yield self._gauge("edgecrab_queue_depth", "Messages waiting behind a run, over all sessions.",
                          lambda p: p.queue_depth())
        yield self._gauge("edgecrab_runs_active", "Agent runs in progress.", lambda p: p.runner.active_runs)
        yield self._gauge("edgecrab_start_time_seconds", "When the gateway started (Unix time).",
                          lambda p: p.started_wall)
        replica = GaugeMetricFamily("edgecrab_replica_info", "1, labelled with this replica's id (replicas "
                                    "share a Redis store; one process on SQLite is one replica).",
                                    labels=["robot", "replica"])
        for p in self.metrics.robots:
            replica.add_metric([p.robot, p.runner.coord.replica_id], 1.0)
        yield replica


Value = Callable[[GatewayParts], float]
Counts = Callable[[GatewayParts], Mapping[Any, int]]


def _age(backlogs: Mapping[str, tuple[int, float | None]], p: GatewayParts) -> float:
    oldest = backlogs.get(p.robot, (0, None))[1]
    return max(0.0, time.time() - oldest) if oldest is not None else 0.0


__all__ = ["API_NAMES", "GatewayMetrics"]

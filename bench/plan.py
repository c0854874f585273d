"""Scenario sizes and time budgets: the full run of issue 8, and the seconds-long smoke version."""

from __future__ import annotations

from dataclasses import dataclass

ACK_P99_GOAL_S = 0.020
"""Scenario 2: edgecrab's ack p99 at ``ack_rate`` while the agent takes ``agent_delay_s`` (issue 14; DingTalk
redelivers an unacked callback after about 2 s)."""
ECHO_VS_SDK_GOAL = 1.2
"""Scenario 1a: edgecrab's echo throughput at least this many times the SDK quick-start bot's (issue 14).
The raw limit is still measured and reported beside it, but no longer judged."""
ECHO_SLOW_VS_SDK_GOAL = 10.0
"""Scenario 1b: edgecrab's echo throughput at 50 ms per REST call, against the SDK bot's."""
BURST_SLACK_S = 1.5
"""Scenario 3: every conversation answered within the agent's delay plus this (3.5 s with a 2 s agent)."""
IDLE_RSS_GOAL_MB = 60.0
SESSION_GOAL_KB = 2.0
CHUNKING_GOAL_S = 0.050
CARD_FIRST_TEXT_GOAL_S = 0.300
"""Scenario 6a: first agent token -> first visible card text, p50, with the default interval (issue 17)."""
CARD_QPS_LIMIT = 20
"""Scenario 6b/6c: the fake enforces DingTalk's 20 calls per second per API; edgecrab's ``card.qps`` is 20."""
PICTURE_TO_AGENT_GOAL_S = 1.0
"""Scenario 7a: a 5 MB picture reaches the agent's request within this long of its callback (issue 18)."""
MEDIA_DM_USERS = 100
"""Scenario 7b: the text DMs timed while the pictures download come from this many other users."""


@dataclass(frozen=True)
class Plan:
    smoke: bool
    # 1. echo throughput: conversations x messages each, every user waiting for the answer
    echo_conversations: int
    echo_per_conversation: int
    echo_budget_s: float
    """Time allowed for one contender's throughput run."""
    echo_rounds: int
    """Scenario 1a runs the contenders in turn this many times (rounds); each contender's figures are its
    median round's, the verdict the median of the rounds' ratios (one pair swung 0.7-1.7x on this VM)."""
    sdk_slow_budget_s: float
    """The SDK bot at 50 ms per REST call needs minutes: it gets this long, and its rate is extrapolated."""
    rest_delay_s: float
    # 2. and 3. with a slow agent
    agent_delay_s: float
    ack_messages: int
    ack_rate: float
    ack_budget_s: float
    burst_conversations: int
    burst_budget_s: float
    sdk_agent_budget_s: float
    """The SDK bot answers one message per agent delay; it gets this long in scenarios 2 and 3."""
    # 4. memory
    sessions: int
    session_concurrency: int
    sessions_budget_s: float
    settle_s: float
    """Pause before reading RSS, so the numbers are for an idle process."""
    # 6. cards
    card_first_samples: int
    """Scenario 6a: this many replies, one at a time, for each of a 1 s and an instant first token."""
    card_streams: int
    """Scenarios 6b and 6c: concurrent streaming answers on one robot."""
    card_duration_s: float
    """How long each streamed answer lasts (its first token comes 1 s after the run starts)."""
    card_token_s: float
    """Seconds between the agent's tokens."""
    card_ack_messages: int
    card_ack_rate: float
    # 7. media
    picture_bytes: int
    """The size the JPEG is made to (about; the run reports the real size)."""
    picture_samples: int
    """Scenario 7a: this many pictures, one at a time, for each of two merge windows."""
    picture_burst: int
    """Scenario 7b: this many pictures at once, from as many senders."""
    picture_dm_rate: float
    """Scenario 7b: text DMs per second, timed, while the pictures download."""
    picture_budget_s: float

    @property
    def echo_messages(self) -> int:
        return self.echo_conversations * self.echo_per_conversation

    @property
    def burst_goal_s(self) -> float:
        """Issue 14 asks for 3.5 s with a 2 s agent: the agent's delay plus one and a half seconds."""
        return self.agent_delay_s + BURST_SLACK_S

    @property
    def users_needed(self) -> int:
        return max(
            self.echo_conversations,
            self.ack_messages,
            self.burst_conversations,
            self.sessions,
            self.card_streams,
            self.picture_samples,
            self.picture_burst + MEDIA_DM_USERS,
        )


FULL = Plan(
    smoke=False,
    echo_conversations=500,
    echo_per_conversation=10,
    echo_budget_s=120.0,
    echo_rounds=3,
    sdk_slow_budget_s=20.0,
    rest_delay_s=0.050,
    agent_delay_s=2.0,
    ack_messages=2000,
    ack_rate=500.0,
    ack_budget_s=15.0,
    burst_conversations=1000,
    burst_budget_s=60.0,
    sdk_agent_budget_s=10.0,
    sessions=10_000,
    session_concurrency=500,
    sessions_budget_s=300.0,
    settle_s=2.0,
    card_first_samples=20,
    card_streams=200,
    card_duration_s=20.0,
    card_token_s=0.1,
    card_ack_messages=1000,
    card_ack_rate=100.0,
    picture_bytes=5 * 2**20,
    picture_samples=10,
    picture_burst=50,
    picture_dm_rate=100.0,
    picture_budget_s=120.0,
)

SMOKE = Plan(
    smoke=True,
    echo_conversations=20,
    echo_per_conversation=5,
    echo_budget_s=30.0,
    echo_rounds=1,
    sdk_slow_budget_s=2.0,
    rest_delay_s=0.050,
    agent_delay_s=0.5,
    ack_messages=100,
    ack_rate=500.0,
    ack_budget_s=5.0,
    burst_conversations=50,
    burst_budget_s=20.0,
    sdk_agent_budget_s=1.5,
    sessions=300,
    session_concurrency=100,
    sessions_budget_s=30.0,
    settle_s=0.2,
    card_first_samples=1,
    card_streams=4,
    card_duration_s=1.5,
    card_token_s=0.1,
    card_ack_messages=40,
    card_ack_rate=100.0,
    picture_bytes=2 * 2**20,
    picture_samples=1,
    picture_burst=5,
    picture_dm_rate=50.0,
    picture_budget_s=30.0,
)

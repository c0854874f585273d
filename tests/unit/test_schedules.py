"""Schedules (issue 20): cron slots in a time zone (DST included), the config's rules, and the scheduler on
a fake clock over a real SQLite store: a new schedule is armed, each slot is sent once, a restart in the
same slot sends nothing, a missed slot within the catch-up window is sent at start and an older one is
skipped, two replicas on one store send a slot once, and waiting is cancelled at once."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest

from edgecrab.agents.base import Agent
from edgecrab.config import AgentConfig, Config, DingTalkConfig, load_config
from edgecrab.config.model import ScheduleConfig
from edgecrab.core.cron import CronTimes, cron_problem, when_text, zone_problem
from edgecrab.core.schedulelist import schedules_table
from edgecrab.core.schedules import AgentAsk, Scheduler, SystemClock, session_key
from edgecrab.errors import ConfigError
from edgecrab.events import AgentRequest, AgentResult
from edgecrab.replies.proactive import SendRequest
from edgecrab.store import ARMED, FIRED, SKIPPED, ScheduleRecord, SQLiteStore
from edgecrab.testing.clock import FakeClock

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")


def at(zone: ZoneInfo, *fields: int, fold: int = 0) -> float:
    return datetime(*fields, tzinfo=zone, fold=fold).timestamp()  # type: ignore[misc]


# -- cron slots ------------------------------------------------------------------------------------------


def test_next_and_latest_slots_in_the_schedules_zone() -> None:
    weekdays = CronTimes("0 9 * * 1-5", SHANGHAI)
    thursday_0859 = at(SHANGHAI, 2025, 5, 1, 8, 59)
    assert weekdays.next_after(thursday_0859) == at(SHANGHAI, 2025, 5, 1, 9, 0)
    # Strictly after: from a slot, the next one (Friday), then over the weekend to Monday.
    assert weekdays.next_after(at(SHANGHAI, 2025, 5, 1, 9, 0)) == at(SHANGHAI, 2025, 5, 2, 9, 0)
    assert weekdays.next_after(at(SHANGHAI, 2025, 5, 2, 9, 0)) == at(SHANGHAI, 2025, 5, 5, 9, 0)
    # At or before: a slot itself counts.
    assert weekdays.latest_at_or_before(at(SHANGHAI, 2025, 5, 1, 9, 0)) == at(SHANGHAI, 2025, 5, 1, 9, 0)
    assert weekdays.latest_at_or_before(at(SHANGHAI, 2025, 5, 4, 12, 0)) == at(SHANGHAI, 2025, 5, 2, 9, 0)
    # The same expression in another zone names other instants.
    assert CronTimes("0 9 * * 1-5", BERLIN).next_after(thursday_0859) == at(BERLIN, 2025, 5, 1, 9, 0)


def test_six_fields_have_seconds_last_and_nicknames_work() -> None:
    every_5s = CronTimes("* * * * * */5", SHANGHAI)
    assert every_5s.next_after(1000.0) == 1005.0
    assert every_5s.latest_at_or_before(1004.9) == 1000.0
    daily = CronTimes("@daily", SHANGHAI)
    assert daily.next_after(at(SHANGHAI, 2025, 5, 1, 8, 0)) == at(SHANGHAI, 2025, 5, 2, 0, 0)


def test_dst_spring_forward_fires_a_skipped_time_once_after_the_gap() -> None:
    nightly = CronTimes("30 2 * * *", BERLIN)  # 2025-03-30: 02:00 -> 03:00, no 02:30 that night
    saturday = at(BERLIN, 2025, 3, 29, 12, 0)
    first = nightly.next_after(saturday)
    assert first == at(BERLIN, 2025, 3, 30, 3, 0)
    assert nightly.next_after(first) == at(BERLIN, 2025, 3, 31, 2, 30)


def test_dst_fall_back_fires_a_fixed_time_once_and_a_wildcard_hour_on_real_time() -> None:
    # 2025-10-26: 03:00 CEST -> 02:00 CET, so 02:00-02:59 happens twice.
    nightly = CronTimes("30 2 * * *", BERLIN)
    first = nightly.next_after(at(BERLIN, 2025, 10, 25, 12, 0))
    assert first == at(BERLIN, 2025, 10, 26, 2, 30, fold=0)
    assert nightly.next_after(first) == at(BERLIN, 2025, 10, 27, 2, 30)
    assert nightly.latest_at_or_before(at(BERLIN, 2025, 10, 26, 12, 0)) == first
    half_hourly = CronTimes("*/30 * * * *", BERLIN)
    slot, seen = at(BERLIN, 2025, 10, 26, 1, 50), []
    for _ in range(5):
        slot = half_hourly.next_after(slot)
        seen.append(when_text(slot, BERLIN))
    assert seen == [
        "2025-10-26 02:00 CEST",
        "2025-10-26 02:30 CEST",
        "2025-10-26 02:00 CET",
        "2025-10-26 02:30 CET",
        "2025-10-26 03:00 CET",
    ]


def test_cron_and_zone_problems_say_what_is_wrong() -> None:
    assert cron_problem("0 9 * * 1-5") == cron_problem("@weekly") == ""
    assert "has 3" in cron_problem("* * *")
    assert cron_problem("61 * * * *") == "'61 * * * *' is not a valid cron expression"
    assert zone_problem("Asia/Shanghai") == ""
    assert zone_problem("Mars/Olympus") == "unknown time zone 'Mars/Olympus'"


def test_when_text_says_how_far_off() -> None:
    now = at(SHANGHAI, 2025, 5, 1, 8, 0)
    assert when_text(at(SHANGHAI, 2025, 5, 1, 9, 0), SHANGHAI, now) == "2025-05-01 09:00 CST (in 1 h 0 min)"
    assert when_text(now - 42, SHANGHAI, now) == "2025-05-01 07:59:18 CST (42 s ago)"
    assert when_text(None, SHANGHAI) == "never"


# -- the config's rules ----------------------------------------------------------------------------------

BAD = """\
platforms:
  dingtalk: {app_key: k, app_secret: s, reply_format: text}
schedules:
  - {name: ok, cron: "0 9 * * 1-5", users: [u1], text: hi}
  - {name: cron, cron: "0 25 * * *", users: [u1], text: hi}
  - {name: zone, cron: "@daily", timezone: Mars/Olympus, users: [u1], text: hi}
  - {name: both, cron: "@daily", users: [u1], text: hi, prompt: hi}
  - {name: neither, cron: "@daily", group: cid1}
  - {name: robot, cron: "@daily", robot: sales, users: [u1], text: hi}
  - {name: ok, cron: "@daily", users: [u1], group: cid1, text: hi, format: markdown}
  - {name: at, cron: "@daily", users: [u1], at: [u2], text: hi}
  - {name: "bad name", cron: "@daily", users: [u1], text: hi}
"""


def test_invalid_schedules_are_reported_with_their_fix(tmp_path: Path, snapshot: Any) -> None:
    path = tmp_path / "edgecrab.yaml"
    path.write_text(BAD, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).replace(str(path), "edgecrab.yaml") == snapshot


def test_an_invalid_reply_format_is_blamed_on_itself_not_on_a_schedule(tmp_path: Path) -> None:
    path = tmp_path / "edgecrab.yaml"
    text = BAD.split("  - {name: cron")[0].replace("reply_format: text", 'reply_format: ""')
    text += '  - {name: md, cron: "@daily", users: [u1], text: hi, format: markdown}\n'
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert "reply_format" in str(caught.value) and "schedules" not in str(caught.value)


@pytest.mark.parametrize("value", ['""', "html", '"${EDGECRAB_TEST_UNSET}"'])
def test_an_invalid_schedule_format_is_reported_once_at_its_key(tmp_path: Path, value: str) -> None:
    path = tmp_path / "edgecrab.yaml"
    text = BAD.split("  - {name: cron")[0]
    text += '  - {name: f, cron: "@daily", users: [u1], text: hi, format: ' + value + "}\n"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    problems = [line for line in str(caught.value).splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, problems
    assert "schedules[1].format" in problems[0] and "differs" not in problems[0]


def test_a_valid_schedule_is_loaded_with_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "edgecrab.yaml"
    path.write_text(BAD.split("  - {name: cron")[0] + "schedules_catch_up_s: 60\n", encoding="utf-8")
    config = load_config(path, env={})
    assert config.schedules == (ScheduleConfig(name="ok", cron="0 9 * * 1-5", users=("u1",), text="hi"),)
    assert config.schedules_catch_up_s == 60.0
    assert config.sources["schedules"] == "file line 3"


# -- the scheduler ---------------------------------------------------------------------------------------

STANDUP = ScheduleConfig(
    name="standup", cron="0 9 * * 1-5", timezone="Asia/Shanghai", group="cid1", at=("u1",), text="Stand-up!"
)
THU_0900 = at(SHANGHAI, 2025, 5, 1, 9, 0)
FRI_0900 = at(SHANGHAI, 2025, 5, 2, 9, 0)
MON_0900 = at(SHANGHAI, 2025, 5, 5, 9, 0)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[SendRequest] = []

    async def __call__(self, request: SendRequest) -> str:
        self.sent.append(request)
        return f"delivery-{len(self.sent)}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "state.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


Run = Callable[[Scheduler], Awaitable[None]]


async def running(scheduler: Scheduler, then: Callable[[], Awaitable[None]]) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        await then()
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_new_schedule_is_armed_and_sends_each_slot_once(store: SQLiteStore) -> None:
    clock, send = FakeClock(THU_0900 - 30), Recorder()

    async def steps() -> None:
        await clock.sleepers(1)
        assert clock.wakeups == [THU_0900]
        assert (await store.schedule_records())["standup"].outcome == ARMED
        clock.set(THU_0900 + 0.2)
        await clock.sleepers(1)
        assert clock.wakeups[-1] == FRI_0900
        clock.set(FRI_0900 + 1)
        await clock.sleepers(1)
        assert clock.wakeups[-1] == MON_0900  # over the weekend

    await running(Scheduler([STANDUP], store, send, clock=clock), steps)
    assert [(r.group, r.at, r.text) for r in send.sent] == [("cid1", ("u1",), "Stand-up!")] * 2
    record = (await store.schedule_records())["standup"]
    assert (record.slot, record.outcome, record.fired_slot) == (FRI_0900, FIRED, FRI_0900)


@pytest.mark.anyio
async def test_a_new_schedule_does_not_send_a_slot_from_before_it_existed(store: SQLiteStore) -> None:
    clock, send = FakeClock(THU_0900 + 60), Recorder()

    async def steps() -> None:
        await clock.sleepers(1)

    await running(Scheduler([STANDUP], store, send, clock=clock), steps)
    assert send.sent == [] and clock.wakeups == [FRI_0900]


@pytest.mark.anyio
async def test_a_restart_in_the_same_slot_sends_nothing(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgecrab.core.schedules")
    await store.schedule_claim("standup", THU_0900, FIRED, THU_0900)
    clock, send = FakeClock(THU_0900 + 40), Recorder()
    await running(Scheduler([STANDUP], store, send, clock=clock), lambda: clock.sleepers(1))
    assert send.sent == [] and clock.wakeups == [FRI_0900]
    assert "standup: the slot of 2025-05-01 09:00 CST already fired; next 2025-05-02 09:00 CST" in caplog.text


@pytest.mark.anyio
async def test_a_slot_missed_within_the_catch_up_window_is_sent_once_at_start(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgecrab.core.schedules")
    await store.schedule_claim("standup", THU_0900, FIRED, THU_0900)
    clock, send = FakeClock(FRI_0900 + 290), Recorder()
    await running(Scheduler([STANDUP], store, send, clock=clock, catch_up_s=300), lambda: clock.sleepers(1))
    assert len(send.sent) == 1 and clock.wakeups == [MON_0900]
    assert "firing the slot of 2025-05-02 09:00 CST (missed while the gateway was down" in caplog.text
    # And a second restart does not send it again.
    again = Recorder()
    await running(Scheduler([STANDUP], store, again, clock=clock, catch_up_s=300), lambda: clock.sleepers(1))
    assert again.sent == []


@pytest.mark.anyio
async def test_a_slot_missed_longer_ago_is_skipped_and_logged(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    await store.schedule_claim("standup", THU_0900, FIRED, THU_0900)
    clock, send = FakeClock(FRI_0900 + 301), Recorder()
    await running(Scheduler([STANDUP], store, send, clock=clock, catch_up_s=300), lambda: clock.sleepers(1))
    assert send.sent == [] and clock.wakeups == [MON_0900]
    record = (await store.schedule_records())["standup"]
    assert (record.slot, record.outcome, record.fired_slot) == (FRI_0900, SKIPPED, THU_0900)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == (
        "[schedules] standup: the slot of 2025-05-02 09:00 CST was missed while the gateway was down "
        "(5 min ago, more than 300 s): skipped"
    )


@pytest.mark.anyio
async def test_two_replicas_on_one_store_send_a_slot_once(store: SQLiteStore) -> None:
    clock, first, second = FakeClock(THU_0900 - 30), Recorder(), Recorder()
    replicas = [Scheduler([STANDUP], store, send, clock=clock) for send in (first, second)]
    async with anyio.create_task_group() as tg:
        for replica in replicas:
            await tg.start(replica.run)
        await clock.sleepers(2)
        clock.set(THU_0900)
        await clock.sleepers(2)
        tg.cancel_scope.cancel()
    assert len(first.sent) + len(second.sent) == 1


@pytest.mark.anyio
async def test_waiting_for_a_far_slot_is_cancelled_at_once(store: SQLiteStore) -> None:
    yearly = ScheduleConfig(name="new-year", cron="@yearly", users=("u1",), text="Happy new year")
    scheduler = Scheduler([yearly], store, Recorder(), clock=SystemClock())
    started = time.monotonic()
    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert time.monotonic() - started < 1


class Countdown(Agent):
    name = "countdown"

    def __init__(self, fail: bool = False) -> None:
        self.requests: list[AgentRequest] = []
        self.fail = fail

    async def run(self, request: AgentRequest) -> AgentResult:
        self.requests.append(request)
        if self.fail:
            return AgentResult("", failed=True, error="the agent returned 401: check agent.api_key")
        return AgentResult(f"answer {len(self.requests)}")


@pytest.mark.anyio
async def test_a_prompt_runs_the_agent_in_the_schedules_own_session(store: SQLiteStore) -> None:
    digest = ScheduleConfig(
        name="digest", cron="0 9 * * *", timezone="Asia/Shanghai", users=("u1",), prompt="Summarise yesterday"
    )
    agent, clock, send = Countdown(), FakeClock(THU_0900 - 1), Recorder()
    brief = AgentConfig(system_prompt="Be brief.", timeout_s=5)
    ask = AgentAsk(lambda robot: (agent, brief), store, history_limit=10)

    async def steps() -> None:
        await clock.sleepers(1)
        for day in (THU_0900, FRI_0900):
            clock.set(day)
            await clock.sleepers(1)

    await running(Scheduler([digest], store, send, ask=ask, clock=clock), steps)
    assert [r.text for r in send.sent] == ["answer 1", "answer 2"]
    second = agent.requests[1]
    assert second.session_key == session_key(digest) == "schedule:default:digest"
    assert second.system_prompt == "Be brief."
    assert second.messages == [
        {"role": "user", "content": "Summarise yesterday"},
        {"role": "assistant", "content": "answer 1"},
        {"role": "user", "content": "Summarise yesterday"},
    ]
    stats = await store.session_stats("schedule:default:digest")
    assert stats is not None and stats.turns == 2


@pytest.mark.anyio
async def test_a_failed_prompt_sends_nothing_and_says_why(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    digest = ScheduleConfig(
        name="digest", cron="0 9 * * *", timezone="Asia/Shanghai", users=("u1",), prompt="Summarise yesterday"
    )
    clock, send = FakeClock(THU_0900 - 1), Recorder()
    ask = AgentAsk(lambda robot: (Countdown(fail=True), AgentConfig(timeout_s=5)), store, history_limit=10)

    async def steps() -> None:
        await clock.sleepers(1)
        clock.set(THU_0900)
        await clock.sleepers(1)

    await running(Scheduler([digest], store, send, ask=ask, clock=clock), steps)
    assert send.sent == []
    assert "digest: the agent gave no answer (the agent returned 401: check agent.api_key)" in caplog.text


@pytest.mark.anyio
async def test_status_lines_show_the_next_run(store: SQLiteStore) -> None:
    clock = FakeClock(THU_0900 - 3600)
    scheduler = Scheduler([STANDUP], store, Recorder(), clock=clock)
    assert scheduler.status_lines() == [
        "- Schedule **standup** (`0 9 * * 1-5`, Asia/Shanghai): next 2025-05-01 09:00 CST (in 1 h 0 min)"
    ]
    [status] = scheduler.status()
    assert status["next_run"] == "2025-05-01T09:00:00+08:00" and status["last_fired"] is None


def test_schedules_list_table(snapshot: Any) -> None:
    digest = ScheduleConfig(
        name="weekly-summary",
        cron="0 17 * * 5",
        timezone="Europe/Berlin",
        users=("manager807", "01234"),
        prompt="Write the weekly reminder.",
    )
    config = Config(dingtalk=DingTalkConfig(app_key="k", app_secret="s"), schedules=(STANDUP, digest))
    records = {"standup": ScheduleRecord("standup", THU_0900, FIRED, THU_0900 + 1, THU_0900, THU_0900 + 1)}
    now = THU_0900 + 3600
    table = schedules_table(config, records, now)
    assert table == snapshot
    assert "?" in schedules_table(config, None, now).splitlines()[1]


@pytest.mark.anyio
async def test_a_reload_names_changed_schedules_as_needing_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgecrab.reload import prepare_reload

    path = tmp_path / "edgecrab.yaml"
    first = BAD.split("  - {name: cron")[0] + "hooks: {entry_points: false}\n"
    path.write_text(first, encoding="utf-8")
    running_config = load_config(path, env={})
    path.write_text(first.replace("0 9 * * 1-5", "0 10 * * 1-5"), encoding="utf-8")
    reloaded = await prepare_reload(running_config, sandbox=False)
    assert not isinstance(reloaded, list)
    assert reloaded.config.schedules == running_config.schedules  # the running schedules are kept
    assert "reload: schedules changed but need(s) a restart" in caplog.text

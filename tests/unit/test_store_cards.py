"""The storage contract of open AI cards (:mod:`edgecrab.store.cardrecords`), on SQLite and on a real
``redis-server`` (the ``store`` fixture of ``test_store_contract``: every test runs once per backend).

No replica heartbeat exists in these tests, so every owner other than the caller is gone on both
backends; ``test_replica_cards`` covers owners that are alive (Redis heartbeats)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgecrab.store import CARD_DONE, DONE, PROCESSING, CardRecord, Store
from tests.unit.test_store_contract import store

__all__ = ["store"]  # the fixture

pytestmark = pytest.mark.anyio

ROBOT = "robot-1"


def card(card_id: str, msg_id: str, owner: str, opened_at: float = 100.0) -> CardRecord:
    route = {"robot_code": "code-1", "conversation_id": "cid-1", "is_group": False, "sender_staff_id": "u1"}
    return CardRecord(ROBOT, card_id, msg_id, f"session-{msg_id}", owner, route, "msgContent", opened_at)


async def message(store: Store, msg_id: str, state: str = PROCESSING) -> None:
    assert await store.inbox_claim(ROBOT, msg_id, f"s-{msg_id}", "{}", 100.0)
    await store.inbox_set_state(ROBOT, msg_id, state)


async def test_a_card_is_recorded_updated_read_and_forgotten(store: Store) -> None:
    c = card("c1", "m1", "r1")
    assert await store.card_open(c) is None
    assert await store.card_get(ROBOT, "c1") == c
    await store.card_update(ROBOT, "c1", shown="Hello")
    await store.card_update(ROBOT, "c1", state="stopped", text="Hello ⏹")
    assert await store.card_get(ROBOT, "c1") == replace(c, shown="Hello", state="stopped", text="Hello ⏹")
    await store.card_close(ROBOT, "c1", owner="r2")  # not r2's: kept
    assert await store.card_get(ROBOT, "c1") is not None
    await store.card_close(ROBOT, "c1", owner="r1")
    assert await store.card_get(ROBOT, "c1") is None
    await store.card_update(ROBOT, "c1", shown="not recorded again")  # nothing: it is forgotten
    await store.card_close(ROBOT, "c1")
    assert await store.card_get(ROBOT, "c1") is None
    assert await store.card_get("robot-2", "c1") is None


async def test_a_run_of_the_message_again_takes_its_card_instead_of_recording_a_new_one(store: Store) -> None:
    await message(store, "m1")
    left = card("c1", "m1", "dead-replica")
    await store.card_open(left)
    await store.card_update(ROBOT, "c1", shown="Hel")
    taken = await store.card_open(card("c2", "m1", "r2"))
    assert taken == replace(left, shown="Hel")  # as it was: whose it was, what it showed
    assert await store.card_get(ROBOT, "c2") is None  # nothing new recorded
    assert (await store.card_get(ROBOT, "c1")) == replace(left, owner="r2", shown="Hel")
    assert await store.card_open(card("c2", "m1", "r2")) is not None  # the caller's own card: taken again
    await store.card_update(ROBOT, "c1", state=CARD_DONE)
    taken = await store.card_take(ROBOT, "m1", "r3")  # done or not, the message's card is taken
    assert taken is not None and taken.card_id == "c1" and taken.state == CARD_DONE
    assert (await store.card_get(ROBOT, "c1")) == replace(left, owner="r3", shown="Hel")
    assert await store.card_take(ROBOT, "m2", "r3") is None
    assert await store.card_take(ROBOT, "", "r3") is None
    await store.card_close(ROBOT, "c1")
    assert await store.card_take(ROBOT, "m1", "r3") is None
    assert await store.card_open(replace(card("c3", "m1", "r3"))) is None  # recorded anew


async def test_adopt_takes_gone_owners_cards_of_finished_messages_only(store: Store) -> None:
    await message(store, "running")
    for answered in ("answered", "answered-2", "answered-3"):
        await message(store, answered, DONE)
    await store.card_open(card("c-run", "running", "dead", 101.0))  # its message runs again: left alone
    await store.card_open(card("c-ans", "answered", "dead", 102.0))
    await store.card_open(card("c-none", "", "dead", 103.0))  # no message known
    await store.card_open(card("c-live", "answered-2", "me", 104.0))  # mine, in this life: not looked at
    await store.card_open(card("c-done", "answered-3", "other", 105.0))
    await store.card_update(ROBOT, "c-done", state=CARD_DONE)  # finished, its run recorded: forgotten
    adoption = await store.card_adopt(ROBOT, "me")
    assert [r.card_id for r in adoption.finish] == ["c-ans", "c-none"]
    assert adoption.finish[0] == replace(card("c-ans", "answered", "me", 102.0))
    assert adoption.waiting == []
    assert await store.card_get(ROBOT, "c-done") is None
    assert (await store.card_get(ROBOT, "c-run")) == card("c-run", "running", "dead", 101.0)
    assert (await store.card_adopt(ROBOT, "me")).finish == []  # they are "me"'s now
    starting = await store.card_adopt(ROBOT, "me", starting=True)  # "me" restarted with the same id
    assert [r.card_id for r in starting.finish] == ["c-ans", "c-none", "c-live"]


async def test_adopt_says_which_own_cards_wait_for_their_message(store: Store) -> None:
    await message(store, "m1")
    await store.card_open(card("c1", "m1", "me"))
    adoption = await store.card_adopt(ROBOT, "me", starting=True)
    assert (adoption.finish, adoption.waiting) == ([], ["c1"])
    assert (await store.card_adopt(ROBOT, "me", mine=["c1"])).waiting == ["c1"]
    await store.inbox_set_state(ROBOT, "m1", DONE)  # dropped before it ran again
    adoption = await store.card_adopt(ROBOT, "me", mine=["c1"])
    assert [r.card_id for r in adoption.finish] == ["c1"] and adoption.waiting == []

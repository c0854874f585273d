"""``gateway.send`` from a hook (issue 20): a DM and a group message recorded in the gateway's ledger,
sent through batchSend and groupMessages/send, their delivery state read back by id; a request that cannot
be sent is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecrab import hookimpl
from edgecrab.config import HooksConfig
from edgecrab.gateway import Gateway
from edgecrab.hooks.manager import HookManager
from edgecrab.replies.proactive import delivery_state
from edgecrab.testing.fakedingtalk import DEFAULT_GROUP_ID, FakeDingTalk
from tests.component.gwkit import ScriptedAgent, make_config, quiescent, running_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def test_a_hook_sends_a_dm_and_a_group_message(tmp_path: Path) -> None:
    ids: list[str] = []
    async with FakeDingTalk() as fake:
        staff_id = next(u.staff_id for u in fake.users if u.staff_id)
        fake.add_group(DEFAULT_GROUP_ID)

        class Morning:
            @hookimpl
            async def gateway_started(self, gateway: Gateway) -> None:
                ids.append(await gateway.send(user=staff_id, text="Good morning"))
                ids.append(await gateway.send(group=DEFAULT_GROUP_ID, text="Stand-up at 10", at=[staff_id]))

        hooks = HookManager.load(HooksConfig(entry_points=False), builtins=[("morning", Morning())])
        async with running_gateway(make_config(fake, tmp_path), ScriptedAgent(), hooks=hooks) as gw:
            dm, group = await fake.wait_for_outbound(2)
            await quiescent(fake, gw)
            assert (dm.via, dm.user_ids, dm.text) == ("batchSend", [staff_id], "Good morning")
            assert (group.via, group.conversation_id) == ("groupSend", DEFAULT_GROUP_ID)
            assert group.text == f"Stand-up at 10\n\n@{staff_id}"
            for delivery_id in ids:
                state = await delivery_state(gw.store, delivery_id)
                assert state is not None and state["state"] == "sent"

            with pytest.raises(ValueError, match="either user"):
                await gw.send(text="to nobody")
            with pytest.raises(ValueError, match="the message text is empty"):
                await gw.send(user=staff_id, text="  ")
            # Another message type than the robot's reply_format (markdown) goes through its ledger too.
            plain = await gw.send(user=staff_id, text="**plain** text", format="text", title="Note")
            await fake.wait_for_outbound(3)
            await quiescent(fake, gw)
            assert (fake.outbound[2].msgtype, fake.outbound[2].text) == ("sampleText", "plain text")
            assert (await delivery_state(gw.store, plain) or {}).get("state") == "sent"
            assert await delivery_state(gw.store, "not-a-delivery") is None

"""Access rules (edgecrab.dingtalk.access): mention gate, allow lists, own-organisation default,
rate-limited denial notices, backlog policy and the startup posture line."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from edgecrab.config import DingTalkConfig
from edgecrab.dingtalk.access import (
    ALLOWED,
    GROUP_NOT_ALLOWED,
    NOT_MENTIONED,
    OTHER_ORGANISATION,
    TOO_OLD,
    UNKNOWN_ORGANISATION,
    USER_NOT_ALLOWED,
    AccessPolicy,
    Decision,
)
from edgecrab.dingtalk.convert import to_message
from edgecrab.dingtalk.frames import decode_data, parse_frame
from edgecrab.events import Conversation, Message, Sender

CORP = "dingc5344d64bd47d252"
OTHER_CORP = "ding8a7b6c5d4e3f2a1b"
NOW = 1_769_851_700.0
FRAMES = Path(__file__).parents[1] / "data" / "frames"


def config(**changes: Any) -> DingTalkConfig:
    return DingTalkConfig(
        app_key="dingappkey", app_secret="not-a-real-secret", robot_code="dingappkey", **changes
    )


def message(
    *,
    group: bool = False,
    mentioned: bool = True,
    staff_id: str = "manager807",
    dingtalk_id: str = "$:LWCP_v1:$KC4x+zZN==",
    corp: str = CORP,
    bot_corp: str = CORP,
    conversation: str = "cidDM==",
    created_at: float = NOW - 1,
) -> Message:
    return Message(
        id="msg1==",
        robot="dingappkey",
        conversation=Conversation(id=conversation, is_group=group),
        sender=Sender(id=staff_id, name="张三", dingtalk_id=dingtalk_id, corp_id=corp),
        text="hi",
        bot_mentioned=mentioned and group,
        created_at=created_at,
        bot_corp_id=bot_corp,
    )


def sample(name: str) -> Message:
    frame = parse_frame((FRAMES / f"{name}.json").read_bytes())
    return to_message(decode_data(frame))


# --------------------------------------------------------------------------- mention and groups


def test_group_without_mention_is_dropped_silently() -> None:
    policy = AccessPolicy(config())
    assert policy.decide(message(group=True, mentioned=False), NOW) == Decision(False, NOT_MENTIONED, None)
    assert policy.decide(message(group=True, mentioned=True), NOW) == Decision(True, ALLOWED, None)


def test_mention_not_required_when_configured_off() -> None:
    assert (
        AccessPolicy(config(require_mention=False)).decide(message(group=True, mentioned=False), NOW).allowed
    )


def test_dms_never_need_a_mention() -> None:
    assert AccessPolicy(config()).decide(message(group=False, mentioned=False), NOW).allowed


def test_allowed_groups() -> None:
    policy = AccessPolicy(config(allowed_groups=("cidOK==",)))
    assert policy.decide(message(group=True, conversation="cidOK=="), NOW).allowed
    assert policy.decide(message(group=True, conversation="cidOther=="), NOW) == Decision(
        False, GROUP_NOT_ALLOWED, None
    )
    # DMs are not groups: the group list does not apply to them.
    assert policy.decide(message(group=False, conversation="cidDM=="), NOW).allowed


def test_real_samples_pass_the_default_policy() -> None:
    policy = AccessPolicy(config(max_message_age_s=float("inf")))
    for name in ("dm_text", "group_text_at", "rich_text_harmony"):
        assert policy.decide(sample(name), NOW).allowed, name


# --------------------------------------------------------------------------- users


def test_star_lets_everyone_in_including_outsiders() -> None:
    policy = AccessPolicy(config(allowed_users=("*",), max_message_age_s=float("inf")))
    assert policy.decide(sample("outsider_dm"), NOW).allowed
    assert policy.decide(message(staff_id="", corp=OTHER_CORP), NOW).allowed


def test_listed_staff_id_is_an_exact_case_sensitive_match() -> None:
    policy = AccessPolicy(config(allowed_users=("manager807", "042212297")))
    assert policy.decide(message(staff_id="manager807"), NOW).allowed
    denied = policy.decide(message(staff_id="Manager807"), NOW)
    assert (denied.allowed, denied.reason) == (False, USER_NOT_ALLOWED)
    assert denied.notice is not None and "`Manager807`" in denied.notice
    assert "DINGTALK_ALLOWED_USERS" in denied.notice


def test_listed_encrypted_dingtalk_id_is_accepted() -> None:
    policy = AccessPolicy(
        config(allowed_users=("$:LWCP_v1:$Outsider9Jt3kQ==",), max_message_age_s=float("inf"))
    )
    assert policy.decide(sample("outsider_dm"), NOW).allowed


def test_a_list_ignores_the_organisation() -> None:
    policy = AccessPolicy(config(allowed_users=("someone_else",)))
    assert policy.decide(message(corp=CORP), NOW).reason == USER_NOT_ALLOWED


def test_listed_mode_outsider_is_told_they_are_from_another_organisation() -> None:
    policy = AccessPolicy(config(allowed_users=("manager807",), max_message_age_s=float("inf")))
    denied = policy.decide(sample("outsider_dm"), NOW)
    assert (denied.allowed, denied.reason) == (False, USER_NOT_ALLOWED)
    assert denied.notice is not None
    assert "another" in denied.notice and "`$:LWCP_v1:$Outsider9Jt3kQ==`" in denied.notice


def test_no_list_means_own_organisation_only() -> None:
    policy = AccessPolicy(config())
    assert policy.decide(message(corp=CORP), NOW).allowed
    denied = policy.decide(message(staff_id="ext01", corp=OTHER_CORP), NOW)
    assert (denied.allowed, denied.reason) == (False, OTHER_ORGANISATION)
    assert denied.notice is not None and "`ext01`" in denied.notice


def test_outsider_sample_is_denied_by_default_with_a_notice() -> None:
    denied = AccessPolicy(config(max_message_age_s=float("inf"))).decide(sample("outsider_dm"), NOW)
    assert (denied.allowed, denied.reason) == (False, OTHER_ORGANISATION)
    assert denied.notice is not None and "another" in denied.notice


def test_unknown_corp_ids_fail_closed_and_the_notice_says_the_organisation_is_unknown() -> None:
    policy = AccessPolicy(config())
    for bot_corp in ("", CORP):
        denied = policy.decide(message(bot_corp=bot_corp, corp="", staff_id=f"s{bot_corp}"), NOW)
        assert denied.reason == UNKNOWN_ORGANISATION
        assert denied.notice is not None and "didn't say which organisation" in denied.notice
        assert "another organisation" not in denied.notice and f"`s{bot_corp}`" in denied.notice


def test_allow_own_org_admits_the_organisation_besides_the_listed_guests() -> None:
    guest = "$:LWCP_v1:$Guest01=="
    both = AccessPolicy(config(allowed_users=(guest,), allow_own_org=True))
    assert both.decide(message(corp=CORP, staff_id="member1"), NOW).allowed
    assert both.decide(message(staff_id="", dingtalk_id=guest, corp=OTHER_CORP), NOW).allowed
    other = both.decide(message(staff_id="", dingtalk_id="$:other", corp=OTHER_CORP), NOW)
    assert (other.allowed, other.reason) == (False, OTHER_ORGANISATION)
    # The default with a list keeps its meaning: only those listed.
    listed = AccessPolicy(config(allowed_users=(guest,)))
    assert listed.decide(message(corp=CORP, staff_id="member1"), NOW).reason == USER_NOT_ALLOWED
    # And allow_own_org: false without a list lets nobody in.
    assert not AccessPolicy(config(allow_own_org=False)).decide(message(corp=CORP), NOW).allowed
    assert "members of the robot's own organisation and 1 listed" in both.posture()


def test_notice_texts(snapshot: Any) -> None:
    listed = AccessPolicy(config(allowed_users=("boss",)))
    default = AccessPolicy(config())
    texts = {
        "listed_member": listed.decide(message(staff_id="manager807"), NOW).notice,
        "listed_outsider": listed.decide(
            message(staff_id="", dingtalk_id="$:x1", corp=OTHER_CORP), NOW
        ).notice,
        "default_other_corp_member": default.decide(message(staff_id="ext01", corp=OTHER_CORP), NOW).notice,
        "default_outsider": default.decide(
            message(staff_id="", dingtalk_id="$:x2", corp=OTHER_CORP), NOW
        ).notice,
    }
    assert texts["listed_member"] == (
        "Sorry, you're not on this bot's allowed list. Your DingTalk user id is `manager807` — "
        "ask your admin to add it to DINGTALK_ALLOWED_USERS."
    )
    assert texts == snapshot


# --------------------------------------------------------------------------- notice rate limit


def test_one_notice_per_user_per_interval() -> None:
    policy = AccessPolicy(config(allowed_users=("boss",), denied_notice_interval_s=3600))
    alice = message(staff_id="alice")
    bob = message(staff_id="bob")
    clock = NOW
    first = policy.decide(alice, clock)
    assert first.notice is not None
    again = policy.decide(alice, clock + 3599)
    assert (again.allowed, again.reason, again.notice) == (False, USER_NOT_ALLOWED, None)
    assert policy.decide(bob, clock + 10).notice is not None  # per user
    assert policy.decide(alice, clock + 3600).notice is not None  # interval over
    assert policy.decide(alice, clock + 3601).notice is None  # and the window restarts


def test_notice_times_can_live_in_a_caller_supplied_mapping() -> None:
    shared: dict[str, float] = {}
    AccessPolicy(config(allowed_users=("boss",)), notice_times=shared).decide(message(staff_id="alice"), NOW)
    assert shared == {"alice": NOW}
    # A second policy on the same record (e.g. after a restart) stays quiet.
    again = AccessPolicy(config(allowed_users=("boss",)), notice_times=shared).decide(
        message(staff_id="alice"), NOW
    )
    assert again.notice is None


def test_notice_record_is_pruned() -> None:
    times: dict[str, float] = {}
    policy = AccessPolicy(
        config(allowed_users=("boss",), denied_notice_interval_s=60), notice_times=times, max_tracked=3
    )
    for i in range(3):
        policy.decide(message(staff_id=f"old{i}"), NOW)
    for i in range(3):
        policy.decide(message(staff_id=f"new{i}"), NOW + 100 + i)
    assert len(times) <= 3
    assert set(times) == {"new0", "new1", "new2"}  # expired entries went first
    for i in range(3, 6):
        policy.decide(message(staff_id=f"new{i}"), NOW + 110 + i)
    assert set(times) == {"new3", "new4", "new5"}  # then the oldest live ones


# --------------------------------------------------------------------------- backlog


@pytest.mark.parametrize("policy_name", ["process", "drop", "notify"])
def test_fresh_messages_are_processed_under_every_backlog_policy(policy_name: str) -> None:
    policy = AccessPolicy(config(backlog_policy=policy_name, max_message_age_s=300))
    assert policy.decide(message(created_at=NOW - 300), NOW).allowed  # exactly at the limit is not too old


def test_backlog_process() -> None:
    policy = AccessPolicy(config(backlog_policy="process", max_message_age_s=300))
    assert policy.decide(message(created_at=NOW - 3600), NOW) == Decision(True, ALLOWED, None)


def test_backlog_drop() -> None:
    policy = AccessPolicy(config(backlog_policy="drop", max_message_age_s=300))
    assert policy.decide(message(created_at=NOW - 301), NOW) == Decision(False, TOO_OLD, None)


@pytest.mark.parametrize(("age", "shown"), [(301, "5 min"), (17 * 60 + 10, "17 min"), (5 * 3600, "5 h")])
def test_backlog_notify(age: float, shown: str) -> None:
    policy = AccessPolicy(config(backlog_policy="notify", max_message_age_s=300))
    decision = policy.decide(message(created_at=NOW - age), NOW)
    assert (decision.allowed, decision.reason) == (False, TOO_OLD)
    assert decision.notice == (
        f"I was offline when you sent this ({shown} ago) — please send it again if it still matters."
    )


def test_unknown_creation_time_is_never_too_old() -> None:
    policy = AccessPolicy(config(backlog_policy="drop"))
    assert policy.decide(message(created_at=0.0), NOW).allowed


def test_access_is_checked_before_age() -> None:
    policy = AccessPolicy(config(backlog_policy="notify"))
    decision = policy.decide(message(corp=OTHER_CORP, created_at=NOW - 9999), NOW)
    assert decision.reason == OTHER_ORGANISATION


def test_bad_backlog_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="backlog_policy"):
        AccessPolicy(config(backlog_policy="ignore"))


# --------------------------------------------------------------------------- posture


def test_posture_default() -> None:
    assert AccessPolicy(config()).posture() == (
        "[dingtalk] access: groups need @mention; users: members of the robot's own organisation only; "
        "groups: all; backlog older than 300 s: process; denied notice at most every 3600 s"
    )


def test_posture_lists_and_options() -> None:
    line = AccessPolicy(
        config(
            allowed_users=("u4", "u1", "u3", "u2"),
            allowed_groups=("cidA==", "cidB=="),
            require_mention=False,
            max_message_age_s=90.5,
            backlog_policy="notify",
        )
    ).posture()
    assert line == (
        "[dingtalk] access: groups need no @mention; users: 4 listed (u1, u2, u3, +1 more); "
        "groups: 2 listed; backlog older than 90.5 s: notify; denied notice at most every 3600 s"
    )
    assert "everyone" in AccessPolicy(config(allowed_users=("*",))).posture()


def test_posture_never_shows_the_secret() -> None:
    cfg = config()
    assert cfg.app_secret not in AccessPolicy(cfg).posture()
    assert dataclasses.asdict(cfg)["app_secret"] == "not-a-real-secret"  # the check above is meaningful

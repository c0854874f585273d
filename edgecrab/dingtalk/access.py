"""Who may talk to the bot, decided before anything reaches the agent.

:class:`AccessPolicy` applies the ``dingtalk`` access settings to one :class:`~edgecrab.events.Message`
and returns a :class:`Decision`: allowed or not, a short reason for the log, and an optional notice to
send back. Checks run in this order, the first that fails wins:

1. groups must @mention the bot when ``require_mention`` is on (silent; DingTalk only pushes group
   messages that @ the bot anyway, so this mostly guards against relays and future changes);
2. ``allowed_groups``, when set, lists the only groups served (silent);
3. ``allowed_users``: ``*`` lets everyone in; a list admits exact staff ids or encrypted DingTalk ids
   (``senderId``: people outside the organisation have no staff id); ``allow_own_org`` admits members of
   the robot's own organisation (``senderCorpId == chatbotCorpId``), by default only when there is no list.
   A sender whose organisation the payload does not give (no corp ids) is not a member. A denied person is
   told once per ``denied_notice_interval_s`` what their id is and whom to ask;
4. messages older than ``max_message_age_s`` on arrival follow ``backlog_policy``
   (``process`` | ``drop`` | ``notify``).

The policy is pure apart from the in-memory record of when each person was last told they are denied;
pass ``notice_times`` (any mutable mapping) to keep that record elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass

from edgecrab.config import DingTalkConfig
from edgecrab.events import Message

log = logging.getLogger(__name__)

ALLOWED = "allowed"
NOT_MENTIONED = "not mentioned"
USER_NOT_ALLOWED = "user not allowed"
GROUP_NOT_ALLOWED = "group not allowed"
OTHER_ORGANISATION = "other organisation"
UNKNOWN_ORGANISATION = "organisation unknown"
TOO_OLD = "too old"

BACKLOG_POLICIES = ("process", "drop", "notify")
ALLOWED_USERS_ENV = "DINGTALK_ALLOWED_USERS"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ALLOWED
    notice: str | None = None
    """Text to send back to the sender, or None to stay silent."""


def _ago(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    if minutes < 120:
        return f"{minutes} min"
    return f"{round(minutes / 60)} h"


def _seconds(value: float) -> str:
    return f"{value:g} s"


class AccessPolicy:
    """Access rules for one robot; see the module docstring for the order of checks."""

    def __init__(
        self,
        config: DingTalkConfig,
        *,
        notice_times: MutableMapping[str, float] | None = None,
        max_tracked: int = 10_000,
    ) -> None:
        if config.backlog_policy not in BACKLOG_POLICIES:
            raise ValueError(f"backlog_policy must be one of {', '.join(BACKLOG_POLICIES)}")
        self.require_mention = config.require_mention
        self.everyone = "*" in config.allowed_users
        self.allowed_users = frozenset(u for u in config.allowed_users if u and u != "*")
        own_org = config.allow_own_org
        self.own_org = not self.allowed_users if own_org is None else own_org
        self.allowed_groups = frozenset(g for g in config.allowed_groups if g)
        self.max_message_age_s = config.max_message_age_s
        self.backlog_policy = config.backlog_policy
        self.notice_interval_s = config.denied_notice_interval_s
        self.notice_times: MutableMapping[str, float] = {} if notice_times is None else notice_times
        self.max_tracked = max_tracked

    # ------------------------------------------------------------------ decisions

    def decide(self, message: Message, now: float) -> Decision:
        """Apply every rule to ``message`` at wall-clock time ``now`` (epoch seconds)."""
        conv = message.conversation
        if conv.is_group and self.require_mention and not message.bot_mentioned:
            log.debug("[dingtalk] access: %s dropped: group message without @mention", message.id)
            return Decision(False, NOT_MENTIONED)
        if conv.is_group and self.allowed_groups and conv.id not in self.allowed_groups:
            log.info("[dingtalk] access: %s dropped: group %s is not in allowed_groups", message.id, conv.id)
            return Decision(False, GROUP_NOT_ALLOWED)

        denied = self._check_user(message)
        if denied is not None:
            notice = self._rate_limited(message.sender.key, denied.notice, now)
            log.info(
                "[dingtalk] access: %s denied (%s) for sender %s%s",
                message.id,
                denied.reason,
                message.sender.key,
                "; notice sent" if notice else "",
            )
            return Decision(False, denied.reason, notice)

        return self._check_age(message, now)

    def _check_user(self, message: Message) -> Decision | None:
        sender = message.sender
        if self.everyone:
            return None
        if sender.id in self.allowed_users or sender.dingtalk_id in self.allowed_users:
            return None
        # Unknown corp ids (an older or relayed payload) fail closed: not known to be a member.
        bot_corp, corp = message.bot_corp_id, sender.corp_id
        member = bool(bot_corp) and corp == bot_corp
        if self.own_org and member:
            return None
        if not (bot_corp and corp):
            notice = self._unknown_org_notice(sender.id or sender.dingtalk_id)
            return Decision(False, UNKNOWN_ORGANISATION, notice)
        if self.own_org or not sender.id:
            # Outside the organisation: without a staff id (DingTalk gives none to outsiders) the id to list
            # is the encrypted senderId.
            reason = OTHER_ORGANISATION if self.own_org else USER_NOT_ALLOWED
            if sender.id:
                listed = " and the people on its list" if self.allowed_users else ""
                text = (
                    f"Sorry, this bot only answers members of its own organisation{listed}. Your DingTalk "
                    f"user id is `{sender.id}` — ask your admin to add it to {ALLOWED_USERS_ENV}."
                )
            else:
                text = self._outsider_notice(sender.dingtalk_id)
            return Decision(False, reason, text)
        text = (
            "Sorry, you're not on this bot's allowed list. Your DingTalk user id is "
            f"`{sender.id}` — ask your admin to add it to {ALLOWED_USERS_ENV}."
        )
        return Decision(False, USER_NOT_ALLOWED, text)

    @staticmethod
    def _outsider_notice(dingtalk_id: str) -> str:
        return (
            "Sorry, you're from another organisation, so this bot doesn't answer you by default. "
            f"Your DingTalk id is `{dingtalk_id}` — ask the bot's admin to add it to {ALLOWED_USERS_ENV}."
        )

    @staticmethod
    def _unknown_org_notice(user_id: str) -> str:
        return (
            "Sorry, DingTalk didn't say which organisation you belong to, so this bot doesn't answer you "
            f"by default. Your DingTalk id is `{user_id}` — ask the bot's admin to add it to "
            f"{ALLOWED_USERS_ENV}."
        )

    def _check_age(self, message: Message, now: float) -> Decision:
        age = now - message.created_at
        if message.created_at <= 0 or age <= self.max_message_age_s:
            return Decision(True)
        if self.backlog_policy == "process":
            log.info(
                "[dingtalk] access: %s is %.0f s old; processing it (backlog_policy=process)", message.id, age
            )
            return Decision(True)
        log.info(
            "[dingtalk] access: %s is %.0f s old; not processed (backlog_policy=%s)",
            message.id,
            age,
            self.backlog_policy,
        )
        if self.backlog_policy == "drop":
            return Decision(False, TOO_OLD)
        return Decision(
            False,
            TOO_OLD,
            f"I was offline when you sent this ({_ago(age)} ago) — please send it again if it still matters.",
        )

    # ------------------------------------------------------------------ notice rate limit

    def _rate_limited(self, key: str, notice: str | None, now: float) -> str | None:
        """``notice`` if this person was not told within the interval (and record it), else None."""
        if notice is None:
            return None
        last = self.notice_times.get(key)
        if last is not None and now - last < self.notice_interval_s:
            return None
        self.notice_times[key] = now
        if len(self.notice_times) > self.max_tracked:
            self._prune(now)
        return notice

    def _prune(self, now: float) -> None:
        for key, when in list(self.notice_times.items()):
            if now - when >= self.notice_interval_s:
                del self.notice_times[key]
        # Still too many (a flood of distinct senders): forget the oldest; they may get a second notice.
        overflow = len(self.notice_times) - self.max_tracked
        if overflow > 0:
            for key, _ in sorted(self.notice_times.items(), key=lambda kv: kv[1])[:overflow]:
                del self.notice_times[key]

    # ------------------------------------------------------------------ startup log

    def posture(self) -> str:
        """One line describing the access rules, for the startup log."""
        mention = "groups need @mention" if self.require_mention else "groups need no @mention"
        if self.everyone:
            users = "everyone"
        elif self.allowed_users and self.own_org:
            users = (
                f"members of the robot's own organisation and {len(self.allowed_users)} listed "
                f"({_preview(self.allowed_users)})"
            )
        elif self.allowed_users:
            users = f"{len(self.allowed_users)} listed ({_preview(self.allowed_users)})"
        elif self.own_org:
            users = "members of the robot's own organisation only"
        else:
            users = "nobody (allowed_users is empty and allow_own_org is false)"
        groups = f"{len(self.allowed_groups)} listed" if self.allowed_groups else "all"
        return (
            f"[dingtalk] access: {mention}; users: {users}; groups: {groups}; "
            f"backlog older than {_seconds(self.max_message_age_s)}: {self.backlog_policy}; "
            f"denied notice at most every {_seconds(self.notice_interval_s)}"
        )


def _preview(names: frozenset[str], limit: int = 3) -> str:
    shown = sorted(names)[:limit]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f", +{more} more" if more else "")

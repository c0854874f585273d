"""What a failed card call means for the caller: the :class:`CardError` family and :func:`classify`, which
reads DingTalk's answer into one of them with an operator-readable message (the fix included).

See :mod:`edgecrab.dingtalk.cards` for the calls themselves."""

from __future__ import annotations

from edgecrab.dingtalk.tokens import PERMISSION_CODE, DingTalkError

PUBLIC_AI_TEMPLATE = "02fcf2f4-5e02-4a85-b672-46d1f715543e.schema"
INSTANCE_SCOPE = "Card.Instance.Write"
STREAMING_SCOPE = "Card.Streaming.Write"
UNKNOWN_ERROR = "unknownError"
"""500 on streaming when the template does not stream the key sent (a template/key mismatch)."""
NO_SUCH_CARD = "param.cardNotExist"
"""DingTalk does not know the ``outTrackId`` (inferred: the fake's code; a real answer may differ)."""
CARD_EXISTS = "param.outTrackIdExist"
"""createAndDeliver with an ``outTrackId`` DingTalk already has (inferred, as the fake)."""


class CardError(DingTalkError):
    """A card call failed. ``out_track_id`` names the card ("" before it existed)."""

    out_track_id: str = ""
    may_exist: bool = False
    """From an open: an attempt's answer was lost (the network, a timeout, 5xx), so DingTalk may have
    created the card all the same."""

    @property
    def unknown_card(self) -> bool:
        """DingTalk does not know the card: never created, or not yet (its create is still on its way)."""
        return self.code == NO_SUCH_CARD

    @classmethod
    def wrap(cls, err: DingTalkError, message: str, out_track_id: str = "") -> CardError:
        wrapped = cls(
            message,
            status=err.status,
            code=err.code,
            request_id=err.request_id,
            required_scopes=err.required_scopes,
            retry_after=err.retry_after,
        )
        wrapped.out_track_id = out_track_id
        return wrapped


class CardsUnavailable(CardError):
    """Cards cannot work for this robot until an operator changes something (or the outage passes)."""


class CardThrottled(CardError):
    """A transient failure: the same card may be updated later."""


class CardRejected(CardError):
    """This one card failed; others may work."""


def classify(err: DingTalkError, what: str, out_track_id: str = "", *, exhausted: bool = False) -> CardError:
    """The :class:`CardError` a failed card call is, with an operator-readable message (the fix included)."""
    if isinstance(err, CardError):
        return err
    if err.code == PERMISSION_CODE:
        scopes = ", ".join(err.required_scopes) or f"{INSTANCE_SCOPE} and {STREAMING_SCOPE}"
        message = (
            f"{what}: the app lacks the permission {scopes}; grant it in the DingTalk developer console "
            f"(app > Permissions) ({err})"
        )
        return CardsUnavailable.wrap(err, message, out_track_id)
    if err.code.startswith("param.template"):
        message = (
            f"{what}: the card template is unknown or not published ({err}); publish it, or set "
            f"platforms.dingtalk.card.template_id to {PUBLIC_AI_TEMPLATE}"
        )
        return CardsUnavailable.wrap(err, message, out_track_id)
    if err.code == UNKNOWN_ERROR:
        message = (
            f"{what}: DingTalk answered unknownError, which means the template does not stream the "
            f"variable in platforms.dingtalk.card.content_key ({err})"
        )
        return CardsUnavailable.wrap(err, message, out_track_id)
    if err.quota_exhausted:
        return CardsUnavailable.wrap(err, f"{what}: the monthly API quota is used up ({err})", out_track_id)
    if err.retryable:
        if exhausted and err.status >= 500:
            message = f"{what}: DingTalk keeps failing ({err})"
            return CardsUnavailable.wrap(err, message, out_track_id)
        return CardThrottled.wrap(err, f"{what}: {err}", out_track_id)
    return CardRejected.wrap(err, f"{what}: {err}", out_track_id)

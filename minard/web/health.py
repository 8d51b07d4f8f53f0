"""The Channel health page's data and its one write, masking a known-bad channel.

`GET get_health` answers the health service's state (minard/health/, written by the
log server): its open findings (newest first), the recent closed ones, the masked
channels, and how current it is.

`POST mask_channel` masks or unmasks one channel, for an authenticated user: HTTP Basic
credentials checked against the web role's `--auth-file` (the log server's users,
minard-passwd), a slow salted hash in the thread pool, failed logins limited per client
address as the log server limits them (AUTH_FAILURE_RATE, 429 beyond). No
`WWW-Authenticate` challenge is sent: the page asks for the user and password itself and
sends them with this request only, so a browser never keeps credentials that another
site could make it send. Cross-site requests are refused as for `ack_alarm`
(web/acks.py): JSON only, same origin. Body:

    {"action": "mask" | "unmask", "crate": C, "card": K, "channel": CH, "reason": "..."}

Who (the user) and when are stored with the mask (store/health.py); a masked channel is
not judged (no finding, no alarm) until it is unmasked.
"""
import json
import time

from twisted.internet import defer

from minard import constants as C
from minard.store import health as store
from minard.web import acks as same_origin
from minard.web.logsite import BadCredentials, TokenBuckets, basic_credentials, client_address
from minard.web.timeparse import BadRequest

#: A mask request's body at most (bytes), and its reason (characters).
MASK_BODY_MAX = 4096
REASON_MAX = 200
#: Closed findings the page asks for, and at most.
CLOSED_DEFAULT = 50
CLOSED_MAX = 500


class Refused(Exception):
    """A mask request refused: `code` (401, 403, 413, 429) and why."""

    def __init__(self, code, reason, headers=None):
        Exception.__init__(self, reason)
        self.code = code
        self.headers = headers or {}


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


@defer.inlineCallbacks
def health_answer(redis, now, closed_limit=CLOSED_DEFAULT, masking=False):
    """The get_health answer (see the module docstring)."""
    state, closed, masks = yield store.read_page(redis, closed_limit)
    position = _int(state.get("position"))
    interval = _int(state.get("interval"))
    updated = _float(state.get("updated"))
    try:
        findings = json.loads(state.get("findings") or "[]")
        config = json.loads(state.get("config") or "{}")
    except ValueError:
        findings, config = [], {}
    return {
        "running": position is not None,
        "interval": interval,
        "position": position,
        "bucket_start": None if position is None or interval is None else position * interval,
        "updated": updated,
        "age": None if updated is None else round(now - updated, 3),
        "applied": _int(state.get("applied")),
        "config": config,
        "open": findings,
        "closed": closed,
        "masked": sorted(masks.values(), key=lambda m: (-(m.get("at") or 0), m["index"])),
        "masking": masking,
        "now": now,
    }


def _field_int(data, name, low, high):
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("%s must be a whole number (%d-%d)" % (name, low, high))
    if not low <= value <= high:
        raise BadRequest("%s must be between %d and %d" % (name, low, high))
    return value


def parse_mask(request):
    """(action, channel index, reason) of a mask request; BadRequest or Refused(413)."""
    content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise BadRequest("send JSON (Content-Type: application/json): {\"action\": \"mask\", "
                         "\"crate\": ..., \"card\": ..., \"channel\": ..., \"reason\": ...}")
    body = request.content.read(MASK_BODY_MAX + 1) if request.content is not None else b""
    if len(body) > MASK_BODY_MAX:
        raise Refused(413, "request body larger than %d bytes" % MASK_BODY_MAX)
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the body is not JSON")
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    known = {"action", "crate", "card", "channel", "reason"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadRequest("unknown field %s (known: %s)" % (json.dumps(unknown[0][:40]),
                                                           ", ".join(sorted(known))))
    action = data.get("action")
    if action not in ("mask", "unmask"):
        raise BadRequest("action must be \"mask\" or \"unmask\"")
    crate = _field_int(data, "crate", 0, C.N_CRATES - 1)
    card = _field_int(data, "card", 0, C.N_CARDS - 1)
    channel = _field_int(data, "channel", 0, C.N_CHANNELS_PER_CARD - 1)
    if crate not in C.INSTALLED_CRATES:
        raise BadRequest("crate %d is not installed" % crate)
    if (crate, card) == tuple(C.TRIGGER_SUM_CARD):
        raise BadRequest("crate %d card %d is the trigger-sum card, not PMT channels"
                         % (crate, card))
    reason = data.get("reason")
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        raise BadRequest("reason must be text")
    reason = " ".join(reason.split())
    if len(reason) > REASON_MAX:
        raise BadRequest("reason is longer than %d characters" % REASON_MAX)
    if not reason.isprintable():
        raise BadRequest("reason has characters that cannot be shown")
    if action == "mask" and not reason:
        raise BadRequest("a reason is required to mask a channel (what is wrong with it?)")
    return action, C.channel_index(crate, card, channel), reason


class Masking:
    """Masking for authenticated users. auth: a minard.auth.Authenticator, or None (then
    every mask request is refused, saying so)."""

    def __init__(self, auth, clock=time.monotonic):
        self.auth = auth
        self.failures = TokenBuckets(C.AUTH_FAILURE_RATE, C.AUTH_FAILURE_BURST, clock)

    @property
    def enabled(self):
        return self.auth is not None

    @defer.inlineCallbacks
    def user(self, request):
        """The authenticated user of a request, or Refused (401, 403, 429)."""
        if self.auth is None:
            raise Refused(403, "masking is off: the web role runs without --auth-file")
        client = client_address(request)
        try:
            credentials = basic_credentials(request)
        except BadCredentials as e:
            if not self.failures.take(client):
                raise Refused(429, "too many failed logins", {b"retry-after": b"10"})
            raise Refused(401, str(e))
        if credentials is None:
            raise Refused(401, "user and password required (a user of the log server)")
        if self.auth.cached(*credentials):
            return credentials[0]
        # the token is taken before the slow hash and given back when the password is
        # right, as the log server does: concurrent guesses are all charged
        if not self.failures.take(client):
            raise Refused(429, "too many failed logins", {b"retry-after": b"10"})
        ok = yield self.auth.check_deferred(*credentials)
        if not ok:
            raise Refused(401, "wrong user or password")
        self.failures.refund(client)
        return credentials[0]

    @defer.inlineCallbacks
    def post(self, redis, request, now):
        """Mask or unmask (module docstring): the masked channels after it."""
        try:
            same_origin.check_same_origin(request)
        except same_origin.Refused as e:
            raise Refused(e.code, str(e))
        user = yield self.user(request)
        action, index, reason = parse_mask(request)
        if action == "mask":
            yield store.mask(redis, index, user, now, reason)
        else:
            was = yield store.unmask(redis, index)
            if not was:
                raise BadRequest("crate %d card %d channel %d is not masked"
                                 % (index >> 9, index >> 5 & 15, index & 31))
        masks = yield store.read_masks(redis)
        return {"action": action, "index": index, "by": user,
                "masked": sorted(masks.values(), key=lambda m: (-(m.get("at") or 0),
                                                                m["index"]))}

"""Acknowledged alarms, one record for every screen (the main site's `ack_alarm` and
`alarm_acks`): keys.ALARM_ACKS, a hash alarm id -> JSON {"by", "time"} (who typed their
name, and when, ISO-8601 UTC), and keys.ALARM_ACKS_VERSION, bumped by every change, so
that a screen polling for acknowledgements reads the hash only when it changed.

The hash lives as long as the alarms (ALARM_TTL after the last acknowledgement), and the
acknowledgements of expired alarms are dropped whenever a new one is stored: it never
holds more than the alarms of the last day. The alarms themselves (`alarms:<id>`, SPEC
§4, read by other programs) are not touched.
"""
import json

from minard.constants import ALARM_TTL
from minard.store import keys
from minard.store.logserver import iso_utc
from minard.store.scripts import Script

#: KEYS acks, version; ARGV by, time, alarm prefix, ttl, ids... (see the file).
ACK_SCRIPT = Script("alarm_ack.lua")


class MissingAlarms(Exception):
    """Some of the ids are not alarms (never were, or expired): nothing was stored.
    `ids` lists them."""

    def __init__(self, ids):
        Exception.__init__(self, "no alarm %s" % ", ".join(str(i) for i in ids))
        self.ids = ids


def acknowledge(redis, ids, by, now, ttl=ALARM_TTL):
    """Acknowledge the alarms `ids` (ints) as `by` at unix time `now`; all or nothing.

    Fires {"acknowledged": [ids new], "already": [ids acknowledged before, whose first
    acknowledgement stays], "by", "time" (ISO), "version"}; fails with MissingAlarms when
    an id is not a stored alarm."""
    when = iso_utc(now)
    d = ACK_SCRIPT(redis, [keys.ALARM_ACKS, keys.ALARM_ACKS_VERSION],
                   [by, when, keys.ALARM_PREFIX, int(ttl)] + [str(int(i)) for i in ids])

    def answer(reply):
        new, version, listed = int(reply[0]), int(reply[1]), [int(i) for i in reply[2] or []]
        if version < 0:
            raise MissingAlarms(listed)
        already = set(listed)
        return {"acknowledged": [i for i in ids if i not in already], "already": listed,
                "by": by, "time": when, "version": version}

    return d.addCallback(answer)


def read_acks(redis, known_version=None):
    """{"version": v, "acks": {id: {"by", "time"}}}; just {"version": v} when v equals
    known_version (nothing changed since the caller last read). The version is read
    first: an acknowledgement landing in between is read again next time, never lost."""
    d = redis.execute_command("GET", keys.ALARM_ACKS_VERSION)

    def got_version(raw):
        version = int(raw or 0)
        if known_version is not None and version == known_version:
            return {"version": version}
        d2 = redis.execute_command("HGETALL", keys.ALARM_ACKS)
        return d2.addCallback(lambda flat: {"version": version, "acks": _parse(flat)})

    return d.addCallback(got_version)


def _parse(flat):
    if isinstance(flat, dict):
        items = flat.items()
    else:
        flat = flat or []
        items = zip(flat[::2], flat[1::2])
    out = {}
    for field, value in items:
        try:
            record = json.loads(value)
            out[str(int(field))] = {"by": str(record["by"]), "time": str(record["time"])}
        except (ValueError, TypeError, KeyError):
            continue  # not ours: skip, never fail the screen's poll
    return out

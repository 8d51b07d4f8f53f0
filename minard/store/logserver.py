"""Redis writes of the logging server: heartbeats, uptimes and alarms (SPEC §4, §5.2).

Each write is one Lua script, so it is atomic and costs one round trip.
"""
import datetime
import json

from minard.constants import ALARM_TTL
from minard.store import keys
from minard.store.scripts import Script

#: KEYS heartbeat, uptime; ARGV status, expire, now.
#: uptime keeps the time the heartbeat (re)appeared: set only when missing, TTL refreshed.
HEARTBEAT_SCRIPT = Script("heartbeat.lua")

#: KEYS alarms:count; ARGV level, message, time, ttl, key prefix. id = INCR count - 1.
ALARM_SCRIPT = Script("alarm.lua")


def iso_utc(t):
    """Unix time -> ISO-8601 UTC with milliseconds, e.g. 2016-04-18T12:00:00.123Z."""
    dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def post_heartbeat(redis, name, status, expire, now):
    """Set heartbeat:<name> = status and keep uptime:<name>, both with TTL expire."""
    return HEARTBEAT_SCRIPT(redis, [keys.heartbeat(name), keys.uptime(name)],
                            [status, int(expire), int(now)])


def raise_alarm(redis, level, message, now, ttl=ALARM_TTL):
    """Store alarms:<id> as JSON {id, level, message, time}; the Deferred fires with id."""
    d = ALARM_SCRIPT(redis, [keys.ALARMS_COUNT],
                     [int(level), message, iso_utc(now), int(ttl), keys.ALARM_PREFIX])
    return d.addCallback(int)


def alarm_json(alarm_id, level, message, now):
    """The same JSON as ALARM_SCRIPT writes (for readers and tests)."""
    return json.dumps({"id": alarm_id, "level": level, "message": message,
                       "time": iso_utc(now)})

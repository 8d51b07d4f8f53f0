"""Redis writes of the logging server: heartbeats, uptimes and alarms (SPEC §4, §5.2),
and the state of its watchdog's alarms (keys.WATCHDOG_ALARMED).

Each write is one Lua script, so it is atomic and costs one round trip.

A post may carry an id (form field `id`, sent by minard.monitor and minard-log): a retry
of the same post carries the same id, and is stored once. The id is claimed in Redis with
SET NX and a TTL (a log line's after it is written: the log server also remembers
the ids of the lines it wrote, so that a retry is not written twice while Redis refuses
writes), under

  minard:post:<program>:<id>:<what>   string, what = line | alarm | heartbeat; for an
                                      alarm its alarm id. TTL POST_ID_TTL (a heartbeat's
                                      HEARTBEAT_POST_ID_TTL).

(minard's own namespace; the key belongs in store/keys.py with the others.)
"""
import datetime
import json

from minard.constants import ALARM_TTL, HEARTBEAT_POST_ID_TTL, POST_ID_TTL
from minard.store import keys
from minard.store.scripts import Script

#: KEYS heartbeat, uptime[, post id]; ARGV status, expire, now[, post id ttl].
#: uptime keeps the time the heartbeat (re)appeared: set only when missing, TTL refreshed.
HEARTBEAT_SCRIPT = Script("heartbeat.lua")

#: KEYS alarms:count[, post id]; ARGV level, message, time, ttl, key prefix[, post id ttl].
#: id = INCR count - 1; a repeated post id raises nothing and answers the first id.
ALARM_SCRIPT = Script("alarm.lua")

POST_PREFIX = "minard:post:"


def post_key(name, post_id, what):
    """`minard:post:<name>:<id>:<what>` - the claim of one post's line, alarm or heartbeat."""
    return "%s%s:%s:%s" % (POST_PREFIX, name, post_id, what)


def is_full(error):
    """True when Redis refused a write because it is full (maxmemory under noeviction)."""
    return str(error).lstrip("-").startswith("OOM")


def iso_utc(t):
    """Unix time -> ISO-8601 UTC with milliseconds, e.g. 2016-04-18T12:00:00.123Z."""
    dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def post_heartbeat(redis, name, status, expire, now, post_id=None,
                   post_ttl=HEARTBEAT_POST_ID_TTL):
    """Set heartbeat:<name> = status and keep uptime:<name>, both with TTL expire.
    Fires True, or False when post_id was seen before (nothing written)."""
    script_keys = [keys.heartbeat(name), keys.uptime(name)]
    args = [status, int(expire), int(now)]
    if post_id is not None:
        script_keys.append(post_key(name, post_id, "heartbeat"))
        args.append(int(post_ttl))
    return HEARTBEAT_SCRIPT(redis, script_keys, args).addCallback(lambda r: int(r) == 1)


def raise_alarm(redis, level, message, now, ttl=ALARM_TTL, name=None, post_id=None,
                post_ttl=POST_ID_TTL):
    """Store alarms:<id> as JSON {id, level, message, time}; the Deferred fires with id.
    With name and post_id, a repeated post raises nothing and fires with the first id."""
    script_keys = [keys.ALARMS_COUNT]
    args = [int(level), message, iso_utc(now), int(ttl), keys.ALARM_PREFIX]
    if post_id is not None:
        script_keys.append(post_key(name, post_id, "alarm"))
        args.append(int(post_ttl))
    d = ALARM_SCRIPT(redis, script_keys, args)
    return d.addCallback(lambda reply: int(reply[0]))


#: KEYS watchdog alarmed hash, alarms:count; ARGV field, raise|clear, level, message, time,
#: ttl, key prefix. Raises or clears the alarm of one watched thing once (see the file).
WATCHDOG_ALARM_SCRIPT = Script("watchdog_alarm.lua")


def program_field(name):
    """The field of a program in keys.WATCHDOG_ALARMED: `program:<name>`."""
    return "program:" + name


def condition_field(name):
    """The field of a watchdog condition (pull, dispatcher ...): `condition:<name>`."""
    return "condition:" + name


def watchdog_alarm(redis, field, up, level, message, now, ttl=ALARM_TTL):
    """Raise (up True) or clear (up False) the alarm of `field` in keys.WATCHDOG_ALARMED,
    storing alarms:<id> as raise_alarm does, but only if that changes the hash: fires
    (alarm id, True), or (id of the alarm still up or -1, False) when nothing changed."""
    d = WATCHDOG_ALARM_SCRIPT(
        redis, [keys.WATCHDOG_ALARMED, keys.ALARMS_COUNT],
        [field, "raise" if up else "clear", int(level), message, iso_utc(now), int(ttl),
         keys.ALARM_PREFIX])
    return d.addCallback(lambda reply: (int(reply[0]), int(reply[1]) == 1))


def watchdog_alarmed(redis):
    """{field: alarm id} of every alarm the watchdog has up (keys.WATCHDOG_ALARMED)."""
    d = redis.execute_command("HGETALL", keys.WATCHDOG_ALARMED)

    def parse(flat):
        flat = flat or []
        if isinstance(flat, dict):
            return {k: int(v) for k, v in flat.items()}
        return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}

    return d.addCallback(parse)


def forget_watchdog_alarms(redis, fields):
    """Drop fields from keys.WATCHDOG_ALARMED without an alarm (a program no longer in
    programs.ini)."""
    if not fields:
        return redis.execute_command("PING")
    return redis.execute_command("HDEL", keys.WATCHDOG_ALARMED, *fields)


def line_written(redis, name, post_id):
    """Fires True when an earlier try of this post wrote its log line."""
    d = redis.execute_command("GET", post_key(name, post_id, "line"))
    return d.addCallback(lambda reply: reply is not None)


def mark_line_written(redis, name, post_id, ttl=POST_ID_TTL):
    """Record that this post's log line is in the file (SET NX: the first write wins)."""
    return redis.execute_command("SET", post_key(name, post_id, "line"), "1", "EX", int(ttl),
                                 "NX")


def alarm_json(alarm_id, level, message, now):
    """The same JSON as ALARM_SCRIPT writes (for readers and tests)."""
    return json.dumps({"id": alarm_id, "level": level, "message": message,
                       "time": iso_utc(now)})

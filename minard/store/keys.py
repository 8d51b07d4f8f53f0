"""Every Redis key name minard reads or writes (SPEC §4). Nothing else spells a key."""
from minard.constants import EXPIRE, HASH_EXPIRE


def bucket(t, interval):
    """The bucket number of unix time t for an interval: b = t // I."""
    return int(t) // interval


def ts(interval, b, name):
    """`ts:<I>:<b>:<name>` — a time-series key."""
    return "ts:%d:%d:%s" % (interval, b, name)


def ts_at(t, interval, name):
    return ts(interval, bucket(t, interval), name)


def ts_ttl(interval):
    """How long a scalar/hash time-series bucket of interval I is kept (I × 2400 s)."""
    return interval * EXPIRE


def hash_ttl(interval):
    """How long a finalised per-channel hash of interval H is kept (H × 1200 s)."""
    return interval * HASH_EXPIRE


def nhit_samples(second):
    return ts(1, int(second), "nhit")


def finalise_lock(interval, b, name):
    return ts(interval, b, name) + ":lock"


DISPATCHER = "dispatcher"
ALARMS_COUNT = "alarms:count"
NEARLINE_CURRENT_RUN = "nearline:current_run"
L2_HEARTBEAT = "l2-heartbeat"


def heartbeat(name):
    return "heartbeat:%s" % (name,)


def uptime(name):
    return "uptime:%s" % (name,)


def alarm(alarm_id):
    return "alarms:%d" % (alarm_id,)


def stats(process):
    return "minard:stats:%s" % (process,)


STATS_PATTERN = "minard:stats:*"


def l2_state(state):
    return "l2:%s" % (state,)


def nearline(run):
    return "nearline:%s" % (run,)


def flush_marker(flush_id):
    """Set once per applied flush so a retried flush is never counted twice."""
    return "minard:flush:%s" % (flush_id,)


#: Prefix of `alarms:<id>` (the alarm script builds the key from it).
ALARM_PREFIX = "alarms:"


def trig(interval, b):
    """`ts:<I>:<b>:trig` — per-trigger event counts and TOTAL of one bucket."""
    return ts(interval, b, "trig")


def pull_heartbeat(interval, b):
    """`ts:<I>:<b>:heartbeat` — set by every live pull worker."""
    return ts(interval, b, "heartbeat")


def nhit_hist(interval, b):
    """`ts:<H>:<b>:nhit:hist` — exact nhit histogram (field nhit -> events)."""
    return ts(interval, b, "nhit:hist")


def rollup(interval, b, name, level, method):
    """`ts:<H>:<b>:<name>:<level>:<method>` — card/crate avg/max of a finalised hash."""
    return ts(interval, b, name) + ":%s:%s" % (level, method)


def ts_scalar(interval, b, name):
    """`ts:<I>:<b>:<name>` for keys written by other programs (L1, L2, L2:gtid ...)."""
    return ts(interval, b, name)


def cmos_state(crate):
    """Hash slot -> packed previous (count, receipt time) of the slot's 32 CMOS channels."""
    return "cmos:state:%d" % (crate,)

"""Every Redis key name minard reads or writes (SPEC §4). Nothing else spells a key.

Compat keys (SPEC §4: other SNO+ programs read or write them) keep their names and types:
`ts:<I>:<b>:trig`, `…:trig:nhit`, `…:trig:charge`, `…:heartbeat`, `ts:1:<sec>:nhit`,
`ts:<H>:<b>:nhit:hist`, `dispatcher`, `heartbeat:<name>`, `uptime:<name>`, `alarms:*`, and
the keys of other programs (L1, L2, l2:<state>, nearline:*).

Per-channel data (occupancy, cmos, base) is minard's own and lives outside the `ts:`
namespace that other programs scan. Its layout (store/channels.py has the byte formats):

  minard:part:<name>:<H>:<b>   hash, while bucket b of interval H is open: one field per
                               writer (a worker's running partial, a packed blob that the
                               worker overwrites: idempotent), and `~v`, a version bumped
                               by every write. TTL H + RAW_HASH_TTL_EXTRA after the last.
  minard:open:<name>           sorted set of buckets '<H>:<b>' with parts not yet
                               finalised, scored by the bucket's last second.
  minard:writers:<name>        hash writer -> '<progress second> <Redis time>': every
                               second up to progress is in the writer's parts.
  minard:claim:<name>:<H>:<b>  string, a finaliser's short claim on a bucket (PX 10 s).
  minard:chan:<name>:<H>:<b>   string, the finalised bucket: a header, float32 values of
                               the 10240 channels (NaN = no data), and the card and crate
                               averages and maxima. TTL H × HASH_EXPIRE.

The layout before it (one hash field per channel: `ts:<H>:<b>:<name>`, `…:card:avg` …,
`…:lock`, raw `…:occupancy:hits/count`, `…:<name>:sum/len`) is only read by the one-shot
migration (minard/store/migrate.py, `minard-migrate-store`).
"""
from minard.constants import EXPIRE, HASH_EXPIRE, HASH_INTERVALS, INTERVALS


def bucket(t, interval):
    """The bucket number of unix time t for an interval: b = t // I."""
    return int(t) // interval


def interval_for(step):
    """The largest bucket interval I <= step (at least 1)."""
    best = INTERVALS[0]
    for interval in INTERVALS:
        if interval <= step:
            best = interval
    return best


def hash_interval_for(step):
    """The largest per-channel hash interval H <= step, or the smallest if step < it."""
    best = HASH_INTERVALS[0]
    for interval in HASH_INTERVALS:
        if interval <= step:
            best = interval
    return best


def kept_hash_buckets(start, stop, step, now):
    """Per point of range(start, stop, step): (H, bucket) of the per-channel bucket to
    read. H is hash_interval_for(step), or the next larger interval where a point is older
    than H's retention (H × HASH_EXPIRE s): a 3-hour window at step 12 reads 5-s buckets
    for its last 100 minutes and 60-s buckets before, instead of nothing."""
    finest = hash_interval_for(step)
    choices = [h for h in HASH_INTERVALS if h >= finest]
    out = []
    for t in range(start, stop, step):
        interval = next((h for h in choices if t >= now - h * HASH_EXPIRE), choices[-1])
        out.append((interval, t // interval))
    return out


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
    """`ts:<H>:<b>:<name>:lock` of the layout before the packed store (migration only)."""
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


# -- per-channel data (minard's own layout: see the module docstring) -------------------

def channel_part(name, interval, b):
    return "minard:part:%s:%d:%d" % (name, interval, b)


def channel_part_prefix(name):
    """`minard:part:<name>:` — the finaliser's script appends the member '<H>:<b>'."""
    return "minard:part:%s:" % (name,)


def channel_open(name):
    return "minard:open:%s" % (name,)


def channel_writers(name):
    return "minard:writers:%s" % (name,)


def channel_claim_prefix(name):
    return "minard:claim:%s:" % (name,)


def channel_claim(name, member):
    return channel_claim_prefix(name) + member


def channel_final(name, interval, b):
    return "minard:chan:%s:%d:%d" % (name, interval, b)


def bucket_member(interval, b):
    """A bucket as a member of minard:open:<name>: '<H>:<b>'."""
    return "%d:%d" % (interval, b)


def parse_member(member):
    interval, b = member.split(":")
    return int(interval), int(b)

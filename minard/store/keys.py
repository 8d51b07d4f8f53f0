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

What later SNO+ monitoring derived from the event stream (issue 13; store/analyses.py,
store/runs.py). Series the later SNO+ minard wrote under the same names:

  ts:<I>:<b>:trig:fecd         hash N16, 20LB, 20, 100L, 100M, 100H -> hits of those
                               FEC/D channels (crate 17, card 15). TTL I × EXPIRE.
  ts:<I>:<b>:DISPATCH_ORPHANS  int, hits of orphans (trigger word 0 and gtid 0; not the
                               FEC/D's). TTL I × EXPIRE.
  (and the fields `polling`, `NONE` of ts:<I>:<b>:trig, trig:nhit, trig:charge, SPEC §3)

minard's own:

  ts:<I>:<b>:CLOCK_JUMPS       int, clock jumps in the bucket (counted at the later event's
                               receipt second). TTL I × EXPIRE. (clock_sweep.lua builds it
                               from this shape too.)
  minard:nhit:<H>:<b>:<field>  hash nhit -> events of one event type (field: a trigger
                               bit "0".."26", "polling", "NONE"), as ts:<H>:<b>:nhit:hist
                               for all events. TTL H × NHIT_TYPE_EXPIRE[H].
  minard:clockjumps            list, newest first: JSON {time, gtid, previous_gtid, d10,
                               d50 (signed ticks), kind, run[, across]}, CLOCK_JUMPS_KEPT.
  minard:clockjumps:burst      string while a burst of jumps lasts (EX CLOCK_JUMP_BURST,
                               refreshed by each jump): one alarm per burst.
  minard:clock:ends            sorted set of the batches' loose ends (first and last
                               event) for clock_sweep.lua, scored by receipt time (µs):
                               member 'stamp|H or T|gtid|c10|c50|run|writer'.
  minard:clock:writers         hash writer -> '<progress second> <Redis time>': every end
                               of the writer's up to that second is in minard:clock:ends.
  minard:runs                  sorted set run -> start (unix s, the earliest receipt time).
  minard:run:<run>             hash, the run's record: start, stop (µs, receipt times),
                               events:<field>, nhit:<field> (field: trigger bit, polling,
                               NONE, TOTAL), and from its RHDR date, time, subfile,
                               calibration_trial, source_mask, run_mask, crate_mask,
                               first_gtid, valid_gtid, header_time (µs). TTL RUN_KEEP.
  minard:run:<run>:s:<hour>    string, a bitmap of the seconds of that hour (unix s //
                               3600) in which the run had events. TTL RUN_KEEP.
  minard:runocc:<run>:<field>  hash writer -> packed partial (store/runs.py): the hits per
                               channel of one event type in the run and its events, per
                               pull worker. TTL RUN_OCCUPANCY_KEEP, refreshed.

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


def replica_probe(ident):
    """`minard:probe:<ident>` — a web process's wall time, written to the Redis primary
    each second and read back from its replica to measure the lag (store/replica.py)."""
    return "minard:probe:%s" % (ident,)


def l2_state(state):
    return "l2:%s" % (state,)


def nearline(run):
    return "nearline:%s" % (run,)


def flush_marker(flush_id):
    """Set once per applied flush so a retried flush is never counted twice."""
    return "minard:flush:%s" % (flush_id,)


#: Prefix of `alarms:<id>` (the alarm script builds the key from it).
ALARM_PREFIX = "alarms:"
#: hash, what the log server's watchdog has an alarm up for -> the id of that alarm:
#: `program:<name>` (a program of programs.ini not responding) or `condition:<name>`
#: (pull, dispatcher, events, memory). Kept in Redis so that a restarted log server
#: neither repeats an alarm nor forgets to clear it (store/logserver.py).
WATCHDOG_ALARMED = "minard:watchdog:alarmed"
#: hash, alarm id -> JSON {"by", "time"}: who acknowledged the alarm and when (ISO-8601
#: UTC), for every screen (store/acks.py). TTL ALARM_TTL, refreshed by each ack.
ALARM_ACKS = "minard:alarm:acks"
#: int, bumped by every acknowledgement: a screen asks for the acks only when it changed.
ALARM_ACKS_VERSION = "minard:alarm:acks:version"


def trig(interval, b):
    """`ts:<I>:<b>:trig` — per-trigger event counts and TOTAL of one bucket."""
    return ts(interval, b, "trig")


def pull_heartbeat(interval, b):
    """`ts:<I>:<b>:heartbeat` — set by every live pull worker."""
    return ts(interval, b, "heartbeat")


def link_up(interval, b):
    """`minard:link:<I>:<b>` — set by dispatch-push for every bucket in which its
    dispatcher link was up (string "1", TTL I × EXPIRE, as `heartbeat`). Outside the `ts:`
    namespace that other programs scan: minard's own."""
    return "minard:link:%d:%d" % (interval, b)


#: The first second from which dispatch-push marks its link (`link_up`): a bucket that
#: ends before it (data written before dispatch-push marked anything) is read by the
#: pull-worker heartbeat alone. Set once (SET NX), no TTL.
LINK_SINCE = "minard:link:since"


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


# -- channel health (minard/health/, store/health.py: the byte format and JSON) ----------
#: hash: position (last bucket applied), interval, updated, applied, next_id, config
#: (JSON of the thresholds). No TTL.
HEALTH_STATE = "minard:health:state"
#: string: JSON list of the open findings, newest first. No TTL.
HEALTH_FINDINGS = "minard:health:findings"
#: list, newest first: JSON of the closed findings (LTRIM to HEALTH_CLOSED_KEPT).
HEALTH_CLOSED = "minard:health:closed"
#: hash channel index -> JSON {index, crate, card, channel, by, at, reason}: masked
#: (known-bad) channels, never judged. No TTL.
HEALTH_MASKS = "minard:health:masks"


def health_baseline(name):
    """`minard:health:baseline:<name>` — string, the rolling baseline of one quantity
    (occupancy, cmos, base): a header, then per channel float32 mean, variance, noise
    and last two values, uint16 buckets seen, uint8 dead streak (minard.health.model).
    Written with HEALTH_STATE, atomically."""
    return "minard:health:baseline:%s" % (name,)


def health_staged(token, what):
    """`minard:health:staged:<token>:<what>` — a baseline or the findings written by one
    service instance (token) before the apply script renames it into place (a big value
    passed through a script costs Redis ~100 times more than a plain SET). TTL
    store.health.STAGED_TTL."""
    return "minard:health:staged:%s:%s" % (token, what)


# -- what later SNO+ monitoring derived from the event stream (issue 13) ---------------
def fecd(interval, b):
    """`ts:<I>:<b>:trig:fecd` — hits of the FEC/D's trigger-sum channels."""
    return ts(interval, b, "trig:fecd")


def dispatch_orphans(interval, b):
    """`ts:<I>:<b>:DISPATCH_ORPHANS` — hits of orphans."""
    return ts(interval, b, "DISPATCH_ORPHANS")


def clock_jumps(interval, b):
    """`ts:<I>:<b>:CLOCK_JUMPS` — clock jumps in the bucket."""
    return ts(interval, b, "CLOCK_JUMPS")


def nhit_type(interval, b, field):
    """`minard:nhit:<H>:<b>:<field>` — exact nhit histogram of one event type."""
    return "minard:nhit:%d:%d:%s" % (interval, b, field)


CLOCK_JUMP_LIST = "minard:clockjumps"
CLOCK_JUMP_BURST_KEY = "minard:clockjumps:burst"
CLOCK_ENDS = "minard:clock:ends"
CLOCK_WRITERS = "minard:clock:writers"
RUNS = "minard:runs"


def run(number):
    """`minard:run:<run>` — a run's record."""
    return "minard:run:%d" % (number,)


def run_seconds(number, hour):
    """`minard:run:<run>:s:<hour>` — bitmap of the seconds of an hour with the run's events."""
    return run_seconds_prefix(number) + str(int(hour))


def run_seconds_prefix(number):
    """`minard:run:<run>:s:` — runs_read.lua appends the hour."""
    return "minard:run:%d:s:" % (number,)


def run_occupancy(number, field):
    """`minard:runocc:<run>:<field>` — the workers' partials of a run's occupancy by type."""
    return "minard:runocc:%d:%s" % (number, field)
